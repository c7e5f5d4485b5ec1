"""List rows (one prompt, N scored answers) -> ScoredList: every accepted shape, every bad-row error."""
import math

import pytest

from preftune.data import registry
from preftune.data.formats import to_preference_pair
from preftune.data.lists import ScoredList, is_list_columns, list_shape, pair_as_list, to_scored_list
from preftune.errors import ConfigError, DataError


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def _answer(model, response, fine, overall, rating):
    aspect = {"Rating": rating, "Rationale": "..."}
    return {"model": model, "principle": "helpfulness", "custom_system_prompt": "Be helpful.", "response": response,
            "annotations": {"helpfulness": {**aspect, "Type": ["1"], "Rationale For Rating": "...", "Rating": rating},
                            "honesty": aspect, "instruction_following": aspect, "truthfulness": {**aspect, "Type": ["0"]}},
            "critique": "Fine.", "fine-grained_score": fine, "overall_score": overall}


# openbmb/UltraFeedback's raw row format, as its card documents it (written by hand, never downloaded).
UF_RAW = {
    "source": "evol_instruct",
    "instruction": "Name a primary color.",
    "models": ["gpt-4", "alpaca-7b", "llama-2-7b-chat", "falcon-40b-instruct"],
    "completions": [
        _answer("gpt-4", "Red is a primary color.", 4.75, 8.5, "5"),
        _answer("alpaca-7b", "Green.", 2.5, 6.0, "2"),
        _answer("llama-2-7b-chat", "Blue, red and yellow are the primary colors.", None, 7.0, "N/A"),  # overall_score used
        _answer("falcon-40b-instruct", "Purple.", 1.25, 3.0, "1"),
    ],
    "correct_answers": ["None"],
    "incorrect_answers": ["None"],
}


def test_scored_list_plain_and_ranking():
    item = to_scored_list({"prompt": "Q: 2+2?", "completions": ["4", "five", "22"], "scores": [9, 2.5, 2.5]}, 0)
    assert item == ScoredList("Q: 2+2?", ("4", "five", "22"), (9.0, 2.5, 2.5))  # a tie is fine
    assert not item.is_conversational
    item = to_scored_list({"prompt": "Q: 2+2?", "ranking": ["4", "22", "five"]}, 1)
    assert item.completions == ("4", "22", "five") and item.scores == (2.0, 1.0, 0.0)


def test_conversions_follow_the_pair_rules():
    # a message-list prompt with string answers: each answer one assistant message
    item = to_scored_list({"prompt": [u("hi")], "completions": ["hello", [a("yo")]], "scores": [1, 0]}, 0)
    assert item.prompt == [u("hi")] and item.completions == ([a("hello")], [a("yo")]) and item.is_conversational
    # answers that repeat the prompt's messages have them stripped
    item = to_scored_list({"prompt": [u("hi")], "completions": [[u("hi"), a("hello")], [u("hi"), a("yo")]], "scores": [1, 0]}, 0)
    assert item.completions == ([a("hello")], [a("yo")])
    # a system column makes the row conversational; tools and chat_template_kwargs are read as for pairs
    row = {"prompt": "hi", "completions": ["hello", "yo"], "scores": [0, 1], "system": "Be brief.",
           "tools": '[{"type": "function", "function": {"name": "f"}}]', "chat_template_kwargs": {"enable_thinking": False}}
    item = to_scored_list(row, 0)
    assert item.prompt == [{"role": "system", "content": "Be brief."}, u("hi")]
    assert item.completions == ([a("hello")], [a("yo")])
    assert item.chat_template_kwargs() == {"tools": [{"type": "function", "function": {"name": "f"}}], "enable_thinking": False}
    # ShareGPT messages and a renamed column
    item = to_scored_list({"q": [{"from": "human", "value": "hi"}], "completions": ["x", "y"], "scores": [1, 2]}, 0,
                          columns={"q": "prompt"})
    assert item.prompt == [u("hi")]


def test_pair_rows_are_lists_of_two():
    row = {"prompt": "hi", "chosen": "hello", "rejected": "go away"}
    expected = ScoredList("hi", ("hello", "go away"), (1.0, 0.0))
    assert to_scored_list(row, 0) == expected == pair_as_list(to_preference_pair(row))
    # in a mixed file datasets fills the list columns of a pair row with None, and the pair columns of a list row
    assert to_scored_list({**row, "completions": None, "scores": None, "ranking": None}, 0) == expected
    assert to_scored_list({"prompt": "hi", "chosen": None, "rejected": None, "completions": ["a", "b"], "scores": [0, 1],
                           "ranking": None}, 0).completions == ("a", "b")
    # every pair shape: implicit prompt conversations
    item = to_scored_list({"chosen": [u("hi"), a("hello")], "rejected": [u("hi"), a("no")], "scores": None}, 3)
    assert item == ScoredList([u("hi")], ([a("hello")], [a("no")]), (1.0, 0.0))
    # a bad pair row keeps the pair's message
    with pytest.raises(DataError, match=r"^row 4: field 'rejected' is identical to chosen"):
        to_scored_list({"prompt": "hi", "chosen": "x", "rejected": "x", "completions": None}, 4)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "q", "completions": ["a"], "scores": [1]},
         "row 7: field 'completions' has 1 answer; a list row needs at least two answers; add answers or drop the row."),
        ({"prompt": "q", "completions": "a", "scores": [1]},
         "row 7: field 'completions' is str 'a'; expected a list of answers (strings or message lists)."),
        ({"prompt": "q", "completions": ["a", "b"], "scores": [3, 3]},
         "row 7: field 'scores' has one distinct score (3) for all 2 answers; ties are allowed but a row needs at least "
         "two different scores; fix or drop this row."),
        ({"prompt": "q", "completions": ["a", "b", "c"], "scores": [1, 2]},
         "row 7: field 'scores' has 2 scores for 3 answers; give one score per answer."),
        ({"prompt": "q", "completions": ["a", "  ", "c"], "scores": [1, 2, 3]},
         "row 7: field 'completions' has an empty answer at position 1; fix or drop this row."),
        ({"prompt": "q", "completions": ["a", [a("")]], "scores": [1, 2]},
         "row 7: field 'completions' has an empty answer at position 1; fix or drop this row."),
        ({"prompt": "q", "completions": ["a", None], "scores": [1, 2]},
         "row 7: field 'completions' has answer 1 that is None; fill it in or drop the row."),
        ({"prompt": "q", "completions": ["a", "b"], "scores": [1, "2"]},
         "row 7: field 'scores' holds str '2' at position 1, not a finite number; give every answer a number (higher "
         "is better), or drop the row."),
        ({"prompt": "q", "completions": ["a", "b"], "scores": [True, False]},
         "row 7: field 'scores' holds bool True at position 0, not a finite number; give every answer a number (higher "
         "is better), or drop the row."),
        ({"prompt": "q", "completions": ["a", "b"], "scores": [1, math.inf]},
         "row 7: field 'scores' holds float inf at position 1, not a finite number; give every answer a number (higher "
         "is better), or drop the row."),
        ({"prompt": "q", "completions": ["a", "b"], "scores": None},
         "row 7: field 'scores' is NoneType None; expected a list of numbers, one per answer."),
        ({"prompt": "q", "completions": ["a", "b", "a"], "scores": [1, 2, 3]},
         "row 7: field 'completions' has answers 0 and 2 identical but scored differently (1, 3); an answer cannot be "
         "better than itself; drop one of them or the row."),
        ({"prompt": "q", "ranking": ["a", "b", "a"]},
         "row 7: field 'ranking' holds the same answer at positions 0 and 2; an answer cannot be better than itself; "
         "drop one of them or the row."),
        ({"prompt": "q", "ranking": ["a"]},
         "row 7: field 'ranking' has 1 answer; a list row needs at least two answers; add answers or drop the row."),
        ({"prompt": "", "completions": ["a", "b"], "scores": [1, 2]},
         "row 7: field 'prompt' is empty; every list row needs a prompt; fill it in or drop the row."),
        ({"completions": ["a", "b"], "scores": [1, 2]},
         "row 7 has completions but no 'prompt' column; add the prompt (or map a column to it with --columns)."),
        ({"prompt": "q", "completions": ["a", "b"], "scores": [1, 2], "chosen": "a", "rejected": "b"},
         "row 7 has both list columns (completions/scores or ranking) and pair columns (chosen/rejected); give each "
         "row one kind: a list or a pair."),
        ({"prompt": "q", "ranking": ["a", "b"], "completions": ["a", "b"], "scores": [1, 2]},
         "row 7: field 'ranking' is given together with completions/scores; give either a ranking or scored completions."),
        ({"prompt": "q", "completions": ["a", "b"], "scores": [1, 2], "system": 3},
         "row 7: field 'system' is int 3; expected a string."),
    ],
)
def test_bad_rows_name_the_row_and_the_field(row, message):
    with pytest.raises(DataError) as err:
        to_scored_list(row, 7)
    assert str(err.value) == message


def test_renamed_field_is_named_as_the_user_wrote_it():
    with pytest.raises(DataError, match=r"^row 2: field 'points' \(used as 'scores'\) has 1 score for 2 answers"):
        to_scored_list({"prompt": "q", "completions": ["a", "b"], "points": [1]}, 2, columns={"points": "scores"})


def test_images_are_refused():
    with pytest.raises(ConfigError, match=r"^row 1 has images, but list rows .* do not support images"):
        to_scored_list({"prompt": "q", "completions": ["a", "b"], "scores": [0, 1], "images": ["x.png"]}, 1)
    with pytest.raises(ConfigError, match="do not support images"):
        pair_as_list(to_preference_pair({"prompt": "q", "chosen": "a", "rejected": "b", "images": ["x.png"]}))


def test_list_columns():
    assert is_list_columns(["prompt", "completions", "scores"])
    assert is_list_columns(["prompt", "ranking"])
    assert is_list_columns(["source", "instruction", "models", "completions"])
    assert not is_list_columns(["prompt", "chosen", "rejected"])
    assert not is_list_columns(["prompt", "completion", "label"])  # unpaired (KTO) rows
    assert list_shape(["prompt", "chosen", "rejected", "completions", "scores"]) == (
        "scored list {prompt, completions, scores}; mixed with pairs {prompt, chosen, rejected} (a list of two)")
    assert list_shape(["prompt", "chosen", "rejected"]) is None


# ------------------------------------------------------------------ UltraFeedback


def test_ultrafeedback_registry_entry_makes_a_list_row():
    entry = registry.lookup("openbmb/UltraFeedback")
    assert entry is registry.lookup("ultrafeedback") and set(entry.raw_columns) <= set(UF_RAW)
    row = entry.preprocess(UF_RAW)
    assert row == {"prompt": "Name a primary color.",
                   "completions": ["Red is a primary color.", "Green.", "Blue, red and yellow are the primary colors.", "Purple."],
                   "scores": [4.75, 2.5, 7.0, 1.25]}
    item = to_scored_list(row, 0)
    assert item.scores == (4.75, 2.5, 7.0, 1.25) and len(item.completions) == 4
    # the raw row also reads without the registry (a local copy of the set's files)
    assert to_scored_list(UF_RAW, 0) == item


def test_ultrafeedback_missing_scores_are_a_clear_error():
    raw = {**UF_RAW, "completions": [UF_RAW["completions"][0], {**UF_RAW["completions"][1], "fine-grained_score": None,
                                                                   "overall_score": None}]}
    with pytest.raises(DataError, match=r"^row 5: field 'scores' holds NoneType None at position 1, not a finite number"):
        to_scored_list(registry.lookup("ultrafeedback").preprocess(raw), 5)
    with pytest.raises(DataError) as err:
        to_scored_list(raw, 5)
    assert str(err.value) == ("row 5: field 'scores' holds NoneType None at position 1, not a finite number; that "
                              "UltraFeedback completion has neither a fine-grained_score nor an overall_score; fix or drop the row.")
    assert registry.ultrafeedback_score({"fine-grained_score": "N/A", "overall_score": "7"}) == 7.0
    assert registry.ultrafeedback_score({"fine-grained_score": float("nan")}) is None
