"""PreferencePair -> exact token ids (BOS once, EOS once), and truncation."""
import copy

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from preftune.data.formats import PreferencePair
from preftune.data.tokenize import LengthLimits, TokenizedPair, render_pair, tokenize_pair, truncate_pair
from preftune.errors import ConfigError, DataError

from .tiny_tokenizers import V, build

BOS, EOS = V["<s>"], V["</s>"]  # plain
BOT, EOT, SH, EH = V["<|begin_of_text|>"], V["<|eot_id|>"], V["<|start_header_id|>"], V["<|end_header_id|>"]  # llama3
IMS, IME, NL = V["<|im_start|>"], V["<|im_end|>"], V["\n"]  # chatml
USER, ASSISTANT, SYSTEM = V["user"], V["assistant"], V["system"]
HELLO, WORLD, FINE, BAD = V["hello"], V["world"], V["fine"], V["bad"]


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


CHAT = PreferencePair([u("hello")], [a("fine")], [a("bad")])
STANDARD = PreferencePair("hello world", "fine", "bad")


# ---------------------------------------------------------------- standard pairs


def test_standard_without_auto_bos(plain):
    assert tokenize_pair(STANDARD, plain) == TokenizedPair([HELLO, WORLD], [FINE, EOS], [BAD, EOS], BOS)


def test_standard_with_auto_bos(llama3):
    assert tokenize_pair(STANDARD, llama3) == TokenizedPair([BOT, HELLO, WORLD], [FINE, EOT], [BAD, EOT], BOT)


def test_standard_bos_in_text_is_not_doubled(llama3):
    pair = PreferencePair("<|begin_of_text|>hello world", "fine", "bad")
    assert tokenize_pair(pair, llama3).prompt_ids == [BOT, HELLO, WORLD]


def test_standard_eos_already_there_is_not_doubled(plain):
    pair = PreferencePair("hello", "fine </s>", "bad</s>\n")
    tp = tokenize_pair(pair, plain)
    assert tp.chosen_ids == [FINE, EOS]
    assert tp.rejected_ids == [BAD, EOS]  # EOS followed only by whitespace: cut after it


def test_eos_followed_by_text_gets_a_final_eos(plain):
    tp = tokenize_pair(PreferencePair("hello", "fine </s> good", "bad"), plain)
    assert tp.chosen_ids == [FINE, EOS, V["good"], EOS]


# ---------------------------------------------------------- conversational pairs


def test_llama3_template_bos_plus_auto_bos_gives_one_bos(llama3):
    tp = tokenize_pair(CHAT, llama3)
    assert tp.prompt_ids == [BOT, SH, USER, EH, HELLO, EOT, SH, ASSISTANT, EH]
    assert tp.chosen_ids == [FINE, EOT]
    assert tp.rejected_ids == [BAD, EOT]


def test_chatml_eos_then_newline_is_cut_after_eos(chatml):
    assert render_pair(CHAT, chatml) == (
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
        "fine<|im_end|>\n",
        "bad<|im_end|>\n",
    )
    tp = tokenize_pair(CHAT, chatml)
    assert tp == TokenizedPair([IMS, USER, NL, HELLO, IME, NL, IMS, ASSISTANT, NL], [FINE, IME], [BAD, IME], None)


def test_chatml_multi_turn_prompt_and_multi_message_completion(chatml):
    pair = PreferencePair(
        [{"role": "system", "content": "good"}, u("hello")],
        [a("hello"), u("how are you"), a("fine")],
        [a("bad")],
    )
    tp = tokenize_pair(pair, chatml)
    assert tp.prompt_ids == [IMS, SYSTEM, NL, V["good"], IME, NL, IMS, USER, NL, HELLO, IME, NL, IMS, ASSISTANT, NL]
    assert tp.chosen_ids == [HELLO, IME, NL, IMS, USER, NL, V["how"], V["are"], V["you"], IME, NL, IMS, ASSISTANT, NL, FINE, IME]
    assert tp.rejected_ids == [BAD, IME]


def test_no_chat_template_for_conversational_data(plain):
    with pytest.raises(ConfigError, match=r"tokenizer has no chat template; set one, e\.g\. with preftune\.setup_chat_format"):
        tokenize_pair(CHAT, plain)


def test_template_that_renders_prompt_differently(chatml):
    tok = copy.deepcopy(chatml)
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(DataError) as e:
        tokenize_pair(CHAT, tok, index=3)
    assert str(e.value).startswith(
        "row 3: the chat template renders the prompt differently with and without the chosen reply, so the reply cannot be cut out of the text;"
    )


def test_template_exception_becomes_data_error(chatml):
    tok = copy.deepcopy(chatml)
    tok.chat_template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}" + tok.chat_template
    pair = PreferencePair([a("hello")], [a("fine")], [a("bad")])
    with pytest.raises(DataError, match=r"^row 8: the chat template rejected the messages \(Conversation must start with user\)"):
        tokenize_pair(pair, tok, index=8)


def test_tokenizer_without_eos():
    backend = Tokenizer(models.WordLevel(vocab=dict(V), unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    with pytest.raises(ConfigError, match=r"^The tokenizer has no eos_token"):
        tokenize_pair(STANDARD, tok)


def test_special_ids_are_re_read_when_the_tokenizer_changes():
    tok = build("plain")
    assert tokenize_pair(STANDARD, tok).chosen_ids == [FINE, EOS]
    tok.eos_token = "<|im_end|>"
    assert tokenize_pair(STANDARD, tok).chosen_ids == [FINE, IME]


# ---------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"max_length": 0}, "--max_length"),
        ({"max_length": 1.5}, "--max_length"),
        ({"max_prompt_length": True}, "--max_prompt_length"),
        ({"max_completion_length": -1}, "--max_completion_length"),
        ({"truncation_mode": "keep_middle"}, "--truncation_mode"),
        ({"max_length": 100, "max_prompt_length": 200}, "--max_prompt_length (200) is larger than --max_length (100)"),
    ],
)
def test_length_limits_validation(kwargs, flag):
    with pytest.raises(ConfigError) as e:
        LengthLimits(**kwargs)
    assert str(e.value).startswith(flag)


def test_length_limits_defaults_follow_trl():
    assert LengthLimits() == LengthLimits(max_length=1024, max_prompt_length=None, max_completion_length=None, truncation_mode="keep_start")
    LengthLimits(None, None, None)  # no limits at all is valid


# ------------------------------------------------------------------ truncation

# BOS=4; prompt ids 20.., chosen 30.. (EOS 5 last), rejected 40..
LONG = TokenizedPair([4, 21, 22, 23, 24, 25, 26], [31, 32, 33, 5], [41, 42, 5], 4)


def test_nothing_to_cut_returns_the_same_object():
    assert truncate_pair(LONG, LengthLimits(max_length=11, max_prompt_length=4)) is LONG
    assert truncate_pair(LONG, LengthLimits(None, None, None)) is LONG


def test_max_completion_length_keeps_start_and_drops_eos():
    cut = truncate_pair(LONG, LengthLimits(max_length=None, max_completion_length=2))
    assert cut == TokenizedPair([4, 21, 22, 23, 24, 25, 26], [31, 32], [41, 42], 4)


def test_keep_end_keeps_bos_and_the_end_of_the_prompt():
    cut = truncate_pair(LONG, LengthLimits(max_length=8, max_prompt_length=4, truncation_mode="keep_end"))
    assert cut == TokenizedPair([4, 24, 25, 26], [31, 32, 33, 5], [41, 42, 5], 4)


def test_keep_end_without_bos():
    tp = TokenizedPair([21, 22, 23, 24, 25, 26], [31, 32, 33, 5], [41, 5], None)
    cut = truncate_pair(tp, LengthLimits(max_length=6, max_prompt_length=3, truncation_mode="keep_end"))
    assert cut == TokenizedPair([24, 25, 26], [31, 32, 33], [41, 5], None)


def test_keep_end_with_max_prompt_length_one_keeps_only_bos():
    cut = truncate_pair(LONG, LengthLimits(max_length=3, max_prompt_length=1, truncation_mode="keep_end"))
    assert cut == TokenizedPair([4], [31, 32], [41, 42], 4)


def test_keep_start_keeps_the_start_of_the_prompt():
    cut = truncate_pair(LONG, LengthLimits(max_length=7, max_prompt_length=4, truncation_mode="keep_start"))
    assert cut == TokenizedPair([4, 21, 22, 23], [31, 32, 33], [41, 42, 5], 4)


def test_short_prompt_is_kept_and_completions_fill_the_room():
    tp = TokenizedPair([4, 21], [31, 32, 33, 34, 5], [41, 5], 4)
    cut = truncate_pair(tp, LengthLimits(max_length=5, max_prompt_length=4))
    assert cut == TokenizedPair([4, 21], [31, 32, 33], [41, 5], 4)


def test_no_room_left_returns_none():
    assert truncate_pair(LONG, LengthLimits(max_length=7, max_prompt_length=None)) is None
    assert truncate_pair(LONG, LengthLimits(max_length=4, max_prompt_length=4)) is None


def test_tokenize_then_truncate_keeps_one_bos(llama3):
    pair = PreferencePair("hello world how are you", "fine thanks", "bad")
    tp = tokenize_pair(pair, llama3)
    assert tp == TokenizedPair([BOT, HELLO, WORLD, V["how"], V["are"], V["you"]], [FINE, V["thanks"], EOT], [BAD, EOT], BOT)
    cut = truncate_pair(tp, LengthLimits(max_length=5, max_prompt_length=3, truncation_mode="keep_end"))
    assert cut == TokenizedPair([BOT, V["are"], V["you"]], [FINE, V["thanks"]], [BAD, EOT], BOT)
