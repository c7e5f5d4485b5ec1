"""prepare_lists: exact ids of list rows, a pair row prepared as a list = the pair's ids, truncation, counts."""
import json

import datasets
import pytest

from preftune.data.list_prepare import ListReport, prepare_lists, tokenize_list, truncate_list
from preftune.data.lists import ScoredList, to_scored_list
from preftune.data.prepare import prepare_dataset
from preftune.data.sources import load_sources
from preftune.data.tokenize import LengthLimits
from preftune.errors import ConfigError, DataError

from .tiny_tokenizers import V

EOS, IMS, IME, NL = V["</s>"], V["<|im_start|>"], V["<|im_end|>"], V["\n"]
BOT, SH, EH, EOT = V["<|begin_of_text|>"], V["<|start_header_id|>"], V["<|end_header_id|>"], V["<|eot_id|>"]
NO_LIMITS = LengthLimits(None, None, None)


def u(text):
    return {"role": "user", "content": text}


def ids(text):
    return [V[w] for w in text.split()]


def test_exact_ids_plain_chatml_llama3(plain, chatml, llama3):
    out, report = prepare_lists([{"prompt": "hello world", "ranking": ["fine thanks", "bad"]}], plain, NO_LIMITS)
    assert out.column_names == ["prompt_ids", "completion_ids", "scores"]
    assert out[:] == {"prompt_ids": [ids("hello world")], "completion_ids": [[ids("fine thanks") + [EOS], ids("bad") + [EOS]]],
                      "scores": [[1.0, 0.0]]}
    assert report == ListReport(n_rows=1, n_kept=1, n_dropped_empty_after_truncation=0, n_truncated=0, n_bad_rows=0,
                                n_answers=2)
    assert report.summary() == "prepared 1 lists (2 answers): 0 truncated"

    row = {"prompt": [u("hello")], "completions": ["fine", "bad", "good"], "scores": [2, 0, 1.5]}
    out, _ = prepare_lists([row], chatml, NO_LIMITS)
    # ChatML: each answer ends at its <|im_end|> (the newline after it is not trained), as a pair's chosen
    assert out[0] == {"prompt_ids": [IMS, V["user"], NL, V["hello"], IME, NL, IMS, V["assistant"], NL],
                      "completion_ids": [[V["fine"], IME], [V["bad"], IME], [V["good"], IME]], "scores": [2.0, 0.0, 1.5]}
    out, _ = prepare_lists([row], llama3, NO_LIMITS)
    # the template writes the BOS, the tokenizer would add it too: once
    assert out[0]["prompt_ids"] == [BOT, SH, V["user"], EH, V["hello"], EOT, SH, V["assistant"], EH]
    assert out[0]["completion_ids"] == [[V["fine"], EOT], [V["bad"], EOT], [V["good"], EOT]]
    # one list at a time gives the same ids; cut to max_length 10, each answer keeps 10 - 9 = 1 id
    prompt, answers = tokenize_list(to_scored_list(row), llama3)
    assert (prompt, answers) == (out[0]["prompt_ids"], out[0]["completion_ids"])
    assert truncate_list(prompt, answers, LengthLimits(max_length=10), llama3) == (prompt, [[V["fine"]], [V["bad"]], [V["good"]]])


PLAIN_PAIRS = [
    {"prompt": "hello", "chosen": "fine thanks", "rejected": "bad"},
    {"prompt": "a b c d", "chosen": "fine", "rejected": "bad a b c"},
    {"prompt": "the cat sat on the mat", "chosen": "yes", "rejected": "no"},
    {"prompt": "how are you", "chosen": "fine thanks good", "rejected": "fine"},
    {"prompt": "yes", "chosen": "a b c d e f", "rejected": "no"},
]
CHAT_PAIRS = [
    {"prompt": [u("hello")], "chosen": "fine thanks", "rejected": "bad"},
    {"chosen": [u("a b c d"), {"role": "assistant", "content": "fine"}],  # implicit prompt
     "rejected": [u("a b c d"), {"role": "assistant", "content": "bad a b c"}]},
    {"prompt": "how are you", "system": "yes", "chosen": "fine thanks good", "rejected": "fine"},
]
LIMITS = [
    NO_LIMITS,
    LengthLimits(max_length=6),  # keep_start (TRL 1.16): answers cut, long prompts dropped
    LengthLimits(max_length=12),
    LengthLimits(max_length=14),
    LengthLimits(max_length=6, truncation_mode="keep_end"),
    LengthLimits(max_length=13, truncation_mode="keep_end"),
    LengthLimits(max_length=6, max_prompt_length=3),
    LengthLimits(max_length=13, max_prompt_length=9, truncation_mode="keep_end"),
    LengthLimits(max_length=None, max_completion_length=2),
]


@pytest.mark.parametrize("kind", ["plain", "chatml", "llama3"])
@pytest.mark.parametrize("limits", LIMITS, ids=repr)
def test_a_pair_prepared_as_a_list_has_the_pairs_ids(tokenizers, kind, limits):
    tok = tokenizers[kind]
    rows = PLAIN_PAIRS if kind == "plain" else CHAT_PAIRS
    try:
        pairs, pair_report = prepare_dataset(rows, tok, limits)
    except DataError as err:  # no pair left: no list either, for the same reason
        with pytest.raises(DataError, match="No list is left"):
            prepare_lists(rows, tok, limits)
        assert "No pair is left" in str(err)
        return
    lists, report = prepare_lists(rows, tok, limits)
    assert lists["prompt_ids"] == pairs["prompt_ids"]
    assert lists["completion_ids"] == [[c, r] for c, r in zip(pairs["chosen_ids"], pairs["rejected_ids"])]
    assert lists["scores"] == [[1.0, 0.0]] * len(pairs)
    for name in ("n_rows", "n_kept", "n_truncated", "n_dropped_empty_after_truncation", "n_dropped_long_prompt",
                 "n_dropped_long_completion", "n_bad_rows"):
        assert getattr(report, name) == getattr(pair_report, name), name
    assert report.n_answers == 2 * pair_report.n_kept


def test_the_parity_cases_do_truncate(plain, chatml):
    """The limits above cut and drop pairs (so the parity test checks truncation, not only untouched rows)."""
    _, report = prepare_dataset(CHAT_PAIRS, chatml, LengthLimits(max_length=14))
    assert report.n_truncated and report.n_kept == 2
    _, report = prepare_dataset(PLAIN_PAIRS, plain, LengthLimits(max_length=6))
    assert report.n_truncated and report.n_dropped_long_prompt
    _, report = prepare_dataset(PLAIN_PAIRS, plain, LengthLimits(max_length=6, truncation_mode="keep_end"))
    assert report.n_truncated and report.n_dropped_long_completion


# prompt: 4 ids; answers: 4, 2 and 3 ids with their EOS
LONG = {"prompt": "a b c d", "completions": ["fine thanks good", "bad", "yes no"], "scores": [3, 1, 2]}


@pytest.mark.parametrize(
    "limits, prompt, answers",
    [
        # keep_start: 4 + 4 > 6, each answer keeps its first 6 - 4 = 2 ids, the prompt is whole
        (LengthLimits(max_length=6), "a b c d", [ids("fine thanks"), ids("bad") + [EOS], ids("yes no")]),
        # keep_end: the prompt keeps its last 6 - 4 (the longest answer) = 2 ids, for every answer
        (LengthLimits(max_length=6, truncation_mode="keep_end"), "c d",
         [ids("fine thanks good") + [EOS], ids("bad") + [EOS], ids("yes no") + [EOS]]),
        # max_prompt_length: 4 + 4 > 6, the prompt is cut to 3 ids, each answer keeps its first 6 - 3 = 3
        (LengthLimits(max_length=6, max_prompt_length=3), "a b c",
         [ids("fine thanks good"), ids("bad") + [EOS], ids("yes no") + [EOS]]),
        (LengthLimits(max_length=6, max_prompt_length=3, truncation_mode="keep_end"), "b c d",
         [ids("fine thanks good"), ids("bad") + [EOS], ids("yes no") + [EOS]]),
        (LengthLimits(max_length=None, max_completion_length=1), "a b c d", [ids("fine"), ids("bad"), ids("yes")]),
    ],
    ids=["keep_start", "keep_end", "max_prompt_length", "max_prompt_length-keep_end", "max_completion_length"],
)
def test_truncation_keeps_one_prompt_for_all_answers(plain, limits, prompt, answers):
    out, report = prepare_lists([LONG], plain, limits)
    assert out[0] == {"prompt_ids": ids(prompt), "completion_ids": answers, "scores": [3.0, 1.0, 2.0]}
    assert (report.n_kept, report.n_truncated) == (1, 1)


def test_rows_truncation_cannot_keep_are_dropped_and_counted(plain):
    rows = [LONG, {"prompt": "hello", "completions": ["fine", "bad"], "scores": [1, 0]}]
    out, report = prepare_lists(rows, plain, LengthLimits(max_length=4))  # LONG's prompt fills max_length
    assert out["prompt_ids"] == [ids("hello")]
    assert (report.n_kept, report.n_dropped_long_prompt, report.n_dropped_empty_after_truncation, report.n_answers) == (1, 1, 1, 2)
    assert report.summary() == ("prepared 1 of 2 lists (2 answers): 0 truncated, 1 dropped because the prompt alone fills "
                                "--max_length, leaving no room for an answer (as TRL does for pairs; raise --max_length)")
    _, report = prepare_lists(rows, plain, LengthLimits(max_length=4, truncation_mode="keep_end"))  # answer 0 fills it
    assert (report.n_kept, report.n_dropped_long_completion) == (1, 1)
    with pytest.raises(DataError, match="^No list is left to train on: prepared 0 of 1 lists"):
        prepare_lists(rows[:1], plain, LengthLimits(max_length=4))


def test_answers_identical_after_truncation_keep_their_scores(plain):
    row = {"prompt": "hello", "completions": ["fine thanks", "fine good"], "scores": [1, 0]}
    out, report = prepare_lists([row], plain, LengthLimits(max_length=2))
    assert out[0]["completion_ids"] == [ids("fine"), ids("fine")] and out[0]["scores"] == [1.0, 0.0]
    assert report.n_truncated == 1


def test_bad_rows_raise_with_the_count_or_are_skipped(plain):
    rows = [
        {"prompt": "hello", "completions": ["fine", "bad"], "scores": [1, 0]},
        {"prompt": "hello", "completions": ["fine", "bad"], "scores": [1, 1]},
        {"prompt": "hello", "completions": ["fine"], "scores": [1]},
    ]
    with pytest.raises(DataError) as err:
        prepare_lists(rows, plain, NO_LIMITS)
    assert str(err.value).startswith("row 1: field 'scores' has one distinct score (1) for all 2 answers")
    assert str(err.value).endswith("(2 of 3 rows are bad; fix them, or set skip_bad_rows=True / --skip_bad_rows to drop them).")
    out, report = prepare_lists(datasets.Dataset.from_list(rows), plain, NO_LIMITS, skip_bad_rows=True)
    assert len(out) == 1 and report.n_bad_rows == 2
    assert report.first_errors[1].startswith("row 2: field 'completions' has 1 answer")
    assert report.summary().startswith("prepared 1 of 3 lists (2 answers): 0 truncated, 2 bad rows skipped\nfirst bad row: row 1:")


def test_images_are_a_config_error(plain):
    ds = datasets.Dataset.from_list([{"prompt": "hello", "completions": ["a", "b"], "scores": [0, 1], "images": ["x.png"]}])
    with pytest.raises(ConfigError, match=r"^The data has images \(column 'images'\), but list rows .* do not support images"):
        prepare_lists(ds, plain, NO_LIMITS)


def test_a_mixed_file_loads_and_prepares_as_lists(tmp_path, plain):
    rows = [
        {"prompt": "hello", "completions": ["fine", "bad", "good"], "scores": [2, 0, 1.5]},
        {"prompt": "how are you", "chosen": "fine", "rejected": "bad"},
        {"prompt": "the cat", "ranking": ["sat", "is", "dog"]},
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_sources(str(path))
    assert loaded.is_lists and all(isinstance(p, ScoredList) for p in loaded.pairs)
    expected = {
        "prompt_ids": [ids("hello"), ids("how are you"), ids("the cat")],
        "completion_ids": [[ids("fine") + [EOS], ids("bad") + [EOS], ids("good") + [EOS]],
                           [ids("fine") + [EOS], ids("bad") + [EOS]],
                           [ids("sat") + [EOS], ids("is") + [EOS], ids("dog") + [EOS]]],
        "scores": [[2.0, 0.0, 1.5], [1.0, 0.0], [2.0, 1.0, 0.0]],
    }
    out, report = prepare_lists(loaded.dataset, plain, NO_LIMITS, lists=loaded.pairs)
    assert out[:] == expected and report.n_answers == 8
    out, _ = prepare_lists(loaded.dataset, plain, NO_LIMITS)  # the rows normalised here give the same
    assert out[:] == expected


def test_lists_given_are_tokenized_as_they_are(plain):
    rows = [{"prompt": "hello", "completions": ["fine", "bad"], "scores": [1, 0]}]
    out, _ = prepare_lists(rows, plain, NO_LIMITS, lists=[ScoredList("yes", ("no", "a"), (0.0, 1.0))])
    assert out[0] == {"prompt_ids": ids("yes"), "completion_ids": [ids("no") + [EOS], ids("a") + [EOS]], "scores": [0.0, 1.0]}
