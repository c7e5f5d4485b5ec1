"""Row shapes -> PreferencePair, prompt extraction, and the DataError messages."""
import pytest

from preftune.data.formats import (
    SHAPES,
    PreferencePair,
    describe_shape,
    extract_prompt,
    match_shape,
    to_preference_pair,
)
from preftune.errors import ConfigError, DataError


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def s(text):
    return {"role": "system", "content": text}


# ------------------------------------------------------------------ explicit prompt


def test_explicit_strings():
    pair = to_preference_pair({"prompt": "hello", "chosen": "fine", "rejected": "bad"})
    assert pair == PreferencePair("hello", "fine", "bad", None)
    assert not pair.is_conversational


def test_explicit_messages():
    pair = to_preference_pair({"prompt": [u("hello")], "chosen": [a("fine")], "rejected": [a("bad")]})
    assert pair == PreferencePair([u("hello")], [a("fine")], [a("bad")])
    assert pair.is_conversational


def test_explicit_messages_strip_repeated_prompt():
    row = {"prompt": [s("be nice"), u("hello")], "chosen": [s("be nice"), u("hello"), a("fine")], "rejected": [s("be nice"), u("hello"), a("bad")]}
    assert to_preference_pair(row) == PreferencePair([s("be nice"), u("hello")], [a("fine")], [a("bad")])


def test_explicit_message_prompt_with_string_completions_become_assistant_messages():
    pair = to_preference_pair({"prompt": [u("hello")], "chosen": "fine", "rejected": {"role": "assistant", "content": "bad"}})
    assert pair == PreferencePair([u("hello")], [a("fine")], [a("bad")])


def test_explicit_string_completions_that_start_with_the_prompt_are_stripped():
    pair = to_preference_pair({"prompt": "Q: hello\nA:", "chosen": "Q: hello\nA: fine", "rejected": "Q: hello\nA: bad"})
    assert pair == PreferencePair("Q: hello\nA:", " fine", " bad")


def test_explicit_string_prompt_with_message_completions_extracts_from_completions():
    # TRL does the same: the prompt column is a plain copy of the question.
    row = {"prompt": "hello", "chosen": [u("hello"), a("fine")], "rejected": [u("hello"), a("bad")]}
    assert to_preference_pair(row) == PreferencePair([u("hello")], [a("fine")], [a("bad")])


def test_explicit_string_prompt_with_chat_templated_completions():
    # The ORPO tutorial renders chosen/rejected with apply_chat_template but keeps
    # the raw "prompt" column: the prompt is taken from the completions.
    head = "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n"
    row = {"prompt": "hello world", "chosen": head + "fine<|im_end|>\n", "rejected": head + "bad<|im_end|>\n"}
    assert to_preference_pair(row) == PreferencePair(head, "fine<|im_end|>\n", "bad<|im_end|>\n")


def test_explicit_string_prompt_not_in_completions_is_kept():
    row = {"prompt": "Question: 2+2?", "chosen": "It is 4", "rejected": "It is 5"}
    assert to_preference_pair(row) == PreferencePair("Question: 2+2?", "It is 4", "It is 5")


# ------------------------------------------------------------------ implicit prompt


def test_implicit_strings_common_prefix():
    pair = to_preference_pair({"chosen": "Q: hi\nA: yes", "rejected": "Q: hi\nA: no"})
    assert pair == PreferencePair("Q: hi\nA: ", "yes", "no")


def test_implicit_strings_back_up_mid_word():
    # Common prefix "the cat sat on the m" ends inside a word: back up to "the cat sat on the ".
    pair = to_preference_pair({"chosen": "the cat sat on the mat", "rejected": "the cat sat on the mud"})
    assert pair == PreferencePair("the cat sat on the ", "mat", "mud")


def test_implicit_strings_back_up_when_one_completion_continues_the_word():
    assert extract_prompt("The answer is 4", "The answer is 42") == ("The answer is ", "4", "42")


def test_implicit_strings_no_common_word_is_an_error():
    with pytest.raises(DataError) as e:
        to_preference_pair({"chosen": "yesterday", "rejected": "yes"}, 4)
    assert str(e.value) == "row 4: field 'chosen' shares no beginning with rejected, so no prompt can be extracted; add a 'prompt' column."


def test_implicit_messages_single_turn():
    row = {"chosen": [u("hello"), a("fine")], "rejected": [u("hello"), a("bad")]}
    assert to_preference_pair(row) == PreferencePair([u("hello")], [a("fine")], [a("bad")])


def test_implicit_messages_multi_turn_prompt_is_everything_before_final_reply():
    head = [s("be nice"), u("hello"), a("hi"), u("how are you")]
    row = {"chosen": head + [a("fine")], "rejected": head + [a("bad")]}
    assert to_preference_pair(row) == PreferencePair(head, [a("fine")], [a("bad")])


def test_implicit_messages_differ_earlier():
    row = {"chosen": [u("hello"), a("hi"), u("how are you"), a("fine")], "rejected": [u("hello"), a("go away"), u("how are you"), a("bad")]}
    pair = to_preference_pair(row)
    assert pair == PreferencePair([u("hello")], [a("hi"), u("how are you"), a("fine")], [a("go away"), u("how are you"), a("bad")])


def test_implicit_messages_prompt_backs_up_to_before_an_assistant_reply():
    # They differ at a user turn: the prompt ends before the last shared assistant reply.
    row = {"chosen": [u("hello"), a("hi"), u("yes"), a("fine")], "rejected": [u("hello"), a("hi"), u("no"), a("bad")]}
    assert to_preference_pair(row) == PreferencePair([u("hello")], [a("hi"), u("yes"), a("fine")], [a("hi"), u("no"), a("bad")])


def test_implicit_messages_without_shared_prompt_is_an_error():
    with pytest.raises(DataError) as e:
        to_preference_pair({"chosen": [a("fine")], "rejected": [a("bad")]}, 0)
    assert str(e.value).startswith("row 0: field 'chosen' shares no messages with rejected before an assistant reply")


def test_extract_prompt_errors_have_no_row():
    with pytest.raises(DataError, match=r"^this row: field 'rejected' is identical to chosen"):
        extract_prompt("same", "same")


# -------------------------------------------------------------------- other shapes


def test_alpaca_with_and_without_input():
    row = {"instruction": "say hi", "input": "to bob", "chosen": "hi bob", "rejected": "no"}
    assert to_preference_pair(row) == PreferencePair("say hi\n\nto bob", "hi bob", "no")
    row["input"] = ""
    assert to_preference_pair(row) == PreferencePair("say hi", "hi bob", "no")


def test_sharegpt_roles_and_system():
    row = {
        "conversations": [{"from": "system", "value": "be nice"}, {"from": "human", "value": "hello"}],
        "chosen": {"from": "gpt", "value": "fine"},
        "rejected": "bad",
    }
    assert to_preference_pair(row) == PreferencePair([s("be nice"), u("hello")], [a("fine")], [a("bad")])


def test_sharegpt_unknown_role():
    row = {"conversations": [{"from": "robot", "value": "hello"}], "chosen": "x", "rejected": "y"}
    with pytest.raises(DataError, match=r"^row 2: field 'conversations' has message 0 from 'robot', which is not one of"):
        to_preference_pair(row, 2)


def test_shareai_emoji():
    pair = to_preference_pair({"question": "how are you", "answer_zh": "fine", "answer_en": "bad"})
    assert pair == PreferencePair([u("how are you")], [a("fine")], [a("bad")])


def test_emoji_columns_with_chosen_rejected_use_those():
    row = {"question": "q", "answer_zh": "z", "answer_en": "e", "chosen": "Q: yes", "rejected": "Q: no"}
    assert match_shape(row).name == "implicit prompt"


def test_query_response_with_history_and_system():
    row = {"system": "be nice", "history": [["hello", "hi"]], "query": "how are you", "response": "fine", "rejected_response": "bad"}
    pair = to_preference_pair(row)
    assert pair == PreferencePair([s("be nice"), u("hello"), a("hi"), u("how are you")], [a("fine")], [a("bad")])


def test_query_response_bad_history():
    row = {"history": [["only one"]], "query": "q", "response": "r", "rejected_response": "x"}
    with pytest.raises(DataError, match=r"^row 9: field 'history' holds list"):
        to_preference_pair(row, 9)


def test_messages_with_rejected_response():
    row = {"messages": [u("hello"), a("fine")], "rejected_response": "bad"}
    assert to_preference_pair(row) == PreferencePair([u("hello")], [a("fine")], [a("bad")])


def test_messages_must_end_with_assistant():
    with pytest.raises(DataError, match=r"^row 1: field 'messages' does not end with an assistant message"):
        to_preference_pair({"messages": [u("hello")], "rejected_response": "bad"}, 1)


# -------------------------------------------------------------- system, images, map


def test_system_column_prepended_to_message_prompt():
    row = {"system": "be nice", "prompt": [u("hello")], "chosen": [a("fine")], "rejected": [a("bad")]}
    assert to_preference_pair(row).prompt == [s("be nice"), u("hello")]


def test_system_column_makes_string_pair_conversational():
    pair = to_preference_pair({"system": "be nice", "prompt": "hello", "chosen": "fine", "rejected": "bad"})
    assert pair == PreferencePair([s("be nice"), u("hello")], [a("fine")], [a("bad")])


def test_empty_system_column_adds_no_message_but_keeps_rows_alike():
    pair = to_preference_pair({"system": None, "prompt": "hello", "chosen": "fine", "rejected": "bad"})
    assert pair == PreferencePair([u("hello")], [a("fine")], [a("bad")])


def test_system_column_equal_to_existing_system_message_is_not_doubled():
    row = {"system": "be nice", "chosen": [s("be nice"), u("hello"), a("fine")], "rejected": [s("be nice"), u("hello"), a("bad")]}
    assert to_preference_pair(row).prompt == [s("be nice"), u("hello")]


def test_system_column_conflict():
    row = {"system": "be rude", "prompt": [s("be nice"), u("hello")], "chosen": [a("fine")], "rejected": [a("bad")]}
    with pytest.raises(DataError) as e:
        to_preference_pair(row, 5)
    assert str(e.value) == "row 5: field 'system' differs from the system message that already opens the prompt; keep only one of them."


def test_columns_mapping_and_ignore():
    row = {"question": "hello", "good": "fine", "bad": "bad", "system": "ignored"}
    pair = to_preference_pair(row, 0, {"question": "prompt", "good": "chosen", "bad": "rejected", "system": None})
    assert pair == PreferencePair("hello", "fine", "bad")


def test_mapped_column_wins_over_canonical_one():
    row = {"prompt": "old", "question": "hello", "chosen": "fine", "rejected": "bad"}
    assert to_preference_pair(row, 0, {"question": "prompt"}).prompt == "hello"


def test_columns_mapping_errors():
    with pytest.raises(ConfigError, match=r"^--columns maps 'good' to 'chosn', which no row shape uses"):
        to_preference_pair({"good": "x"}, 0, {"good": "chosn"})
    with pytest.raises(DataError) as e:
        to_preference_pair({"prompt": "p", "chosen": "c", "rejected": "r"}, 7, {"good": "chosen"})
    assert str(e.value) == "row 7 has no column 'good' named in --columns (it has prompt, chosen, rejected); fix the column mapping."


def test_error_names_the_users_column():
    with pytest.raises(DataError) as e:
        to_preference_pair({"q": "p", "good": "c", "bad": None}, 3, {"q": "prompt", "good": "chosen", "bad": "rejected"})
    assert str(e.value) == "row 3: field 'bad' (used as 'rejected') is None; fill it in or drop the row."


def test_images_kept_as_tuple():
    assert to_preference_pair({"images": ["img0", "img1"], "prompt": "p", "chosen": "c", "rejected": "r"}).images == ("img0", "img1")
    assert to_preference_pair({"images": None, "prompt": "p", "chosen": "c", "rejected": "r"}).images is None


def test_datasets_none_filled_message_keys_are_dropped():
    # datasets fills missing struct keys with None when message dicts differ.
    msg = {"role": None, "content": None, "from": "human", "value": "hello", "name": None}
    row = {"prompt": [msg], "chosen": [{"role": "assistant", "content": "fine", "from": None, "value": None, "name": None}], "rejected": [a("bad")]}
    assert to_preference_pair(row) == PreferencePair([u("hello")], [a("fine")], [a("bad")])


# -------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "p", "chosen": None, "rejected": "r"}, "row 12: field 'chosen' is None; fill it in or drop the row."),
        ({"prompt": "p", "chosen": 5, "rejected": "r"}, "row 12: field 'chosen' is int 5; expected a string or a list of {'role', 'content'} messages."),
        ({"prompt": "p", "chosen": "c", "rejected": "c"}, "row 12: field 'rejected' is identical to chosen; a preference pair needs two different completions; drop the row."),
        ({"prompt": "p", "chosen": "", "rejected": "r"}, "row 12: field 'chosen' has an empty completion after the prompt is taken out; fix or drop this row."),
        ({"prompt": [u("p")], "chosen": [u("p")], "rejected": [u("p"), a("r")]}, "row 12: field 'chosen' has an empty completion after the prompt is taken out; fix or drop this row."),
        ({"prompt": "", "chosen": "c", "rejected": "r"}, "row 12: field 'prompt' is empty; every pair needs a prompt; fill it in or drop the row."),
        ({"prompt": [{"content": "p"}], "chosen": "c", "rejected": "r"}, "row 12: field 'prompt' has message 0 without a role; give every message a 'role' (or ShareGPT 'from')."),
        ({"prompt": [{"role": "user"}], "chosen": "c", "rejected": "r"}, "row 12: field 'prompt' has message 0 without content; give every message a 'content' (or ShareGPT 'value'), or an assistant message its 'tool_calls'."),
        ({"prompt": ["p"], "chosen": "c", "rejected": "r"}, "row 12: field 'prompt' holds str 'p' at message 0, not a {'role': ..., 'content': ...} mapping; fix or drop this row."),
        ({"prompt": "p", "chosen": "c", "rejected": [a("r")]}, "row 12: field 'rejected' is a different kind of value than chosen (one is a string, the other a message list); use two strings or two message lists."),
        ({"question": "q", "answer_zh": 1, "answer_en": "e"}, "row 12: field 'answer_zh' is int 1; expected a string."),
    ],
)
def test_data_errors_name_row_and_field(row, message):
    with pytest.raises(DataError) as e:
        to_preference_pair(row, 12)
    assert str(e.value) == message


def test_unknown_shape_lists_columns_and_shapes():
    with pytest.raises(DataError) as e:
        to_preference_pair({"text": "x", "label": 1}, 0)
    msg = str(e.value)
    assert msg.startswith("row 0 has columns text, label, which match no accepted shape: explicit prompt {prompt, chosen, rejected}, ")
    for shape in SHAPES:
        assert shape.describe() in msg
    assert msg.endswith("; rename columns with --columns (e.g. columns={'question': 'prompt'}).")


def test_error_without_index():
    with pytest.raises(DataError, match=r"^this row: field 'chosen' is None"):
        to_preference_pair({"chosen": None, "rejected": "r"})


# -------------------------------------------------------------------- describe


def test_describe_shape():
    assert describe_shape(["prompt", "chosen", "rejected", "source"]) == "explicit prompt {prompt, chosen, rejected}; ignored: source"
    assert describe_shape(["instruction", "input", "chosen", "rejected", "system"]) == "alpaca {instruction, chosen, rejected, input?}; also used: input, system"
    assert describe_shape(["q", "good", "bad"], {"q": "prompt", "good": "chosen", "bad": "rejected"}) == (
        "explicit prompt {prompt, chosen, rejected}; renamed: q -> prompt, good -> chosen, bad -> rejected"
    )
    assert describe_shape(["query", "response", "rejected_response", "history"]) == "query/response {query, response, rejected_response, history?}; also used: history"
    assert describe_shape(["text"]).startswith("no known shape for columns text; accepted shapes: explicit prompt {prompt, chosen, rejected}, alpaca")


def test_shape_table_first_match_wins():
    assert match_shape(["prompt", "chosen", "rejected", "instruction"]).name == "explicit prompt"
    assert match_shape(["conversations", "chosen", "rejected"]).name == "sharegpt"
    assert match_shape(["chosen", "rejected"]).name == "implicit prompt"
    assert match_shape(["messages", "rejected_response"]).name == "messages"
    assert match_shape(["text"]) is None


def test_short_string_prompt_inside_completions_is_not_mistaken_for_a_template():
    # "cat" is in the shared beginning "the cat " but nothing shared follows it.
    row = {"prompt": "cat", "chosen": "the cat sat", "rejected": "the cat ran"}
    assert to_preference_pair(row) == PreferencePair("cat", "the cat sat", "the cat ran")
    # Not a whole word: "hi" inside "this".
    row = {"prompt": "hi", "chosen": "this is good: yes", "rejected": "this is good: no"}
    assert to_preference_pair(row) == PreferencePair("hi", "this is good: yes", "this is good: no")
