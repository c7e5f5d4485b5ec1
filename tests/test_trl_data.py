"""TRL 1.16 drop-in, data side: truncation gives TRL's tokens, and TRL's `chat_template_kwargs` and `tools`
columns (with tool-calling conversations) render as TRL renders them.

TRL is used as the reference where it is installed (its collator and its tokenize helpers, on the same ids);
the hand-derived cases run without it.
"""
import json

import datasets
import numpy as np
import pytest

from preftune import DPOConfig, ORPOConfig
from preftune.data.collate import PreferenceCollator
from preftune.data.formats import to_preference_pair
from preftune.data.prepare import prepare_dataset
from preftune.data.tokenize import LengthLimits, TokenizedPair, truncate_pair
from preftune.errors import DataError
from tests.data.tiny_tokenizers import V, build

BOS = 4


# ------------------------------------------------------------------ truncation


def _rows(out):
    """Each row of a collated batch without its padding: (ids, completion mask)."""
    rows = []
    for ids, att, cm in zip(out["input_ids"], out["attention_mask"], out["completion_mask"]):
        n = int(att.sum())
        rows.append((ids[:n].tolist(), cm[:n].tolist()))
    return rows


def _cases(n=300, seed=0):
    rng = np.random.RandomState(seed)
    for _ in range(n):
        p = [BOS] + rng.randint(20, 99, rng.randint(0, 12)).tolist()
        c = rng.randint(100, 199, rng.randint(1, 10)).tolist()
        r = rng.randint(200, 299, rng.randint(1, 10)).tolist()
        yield p, c, r, int(rng.randint(2, 18))


def _ours(p, c, r, limits):
    cut = truncate_pair(TokenizedPair(p, c, r, BOS), limits)
    if cut is None:
        return None
    feature = {"prompt_ids": cut.prompt_ids, "chosen_ids": cut.chosen_ids, "rejected_ids": cut.rejected_ids}
    return _rows(PreferenceCollator(pad_token_id=0)([feature]))


def test_keep_start_gives_trls_tokens_and_drops_what_trl_drops():
    trl = pytest.importorskip("trl.trainer.dpo_trainer")
    limits_seen = 0
    for p, c, r, max_length in _cases():
        ours = _ours(p, c, r, LengthLimits(max_length=max_length))  # the default: TRL 1.16's keep_start
        # TRL: `_prepare_dataset` drops pairs whose prompt alone fills max_length; the collator cuts the rest
        assert (ours is not None) == (len(p) < max_length), (p, c, r, max_length)
        if ours is None:
            continue
        collator = trl.DataCollatorForPreference(pad_token_id=0, max_length=max_length, truncation_mode="keep_start")
        assert ours == _rows(collator([{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r}])), (p, c, r, max_length)
        limits_seen += len(p) + max(len(c), len(r)) > max_length
    assert limits_seen > 50  # the cases do cut


def test_keep_end_matches_trl_on_the_longer_sequence():
    trl = pytest.importorskip("trl.trainer.dpo_trainer")
    shorter_differs = 0
    for p, c, r, max_length in _cases(seed=1):
        ours = _ours(p, c, r, LengthLimits(max_length=max_length, truncation_mode="keep_end"))
        longest = max(len(c), len(r))
        # departure: a completion that alone fills max_length would leave TRL's longer row without a prompt: dropped
        assert (ours is None) == (longest >= max_length)
        if ours is None:
            continue
        collator = trl.DataCollatorForPreference(pad_token_id=0, max_length=max_length, truncation_mode="keep_end")
        theirs = _rows(collator([{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r}]))
        longer = 0 if len(c) >= len(r) else 1
        assert ours[longer] == theirs[longer]  # exactly TRL's tokens and mask
        # the shorter: the same completion, after the (shared) prompt cut for the longer one -- a suffix of TRL's
        (ids, mask), (trl_ids, trl_mask) = ours[1 - longer], theirs[1 - longer]
        n_prompt, trl_prompt = mask.index(1), trl_mask.index(1)
        assert ids[n_prompt:] == trl_ids[trl_prompt:]
        assert trl_ids[:trl_prompt][trl_prompt - n_prompt:] == ids[:n_prompt]
        shorter_differs += ids != trl_ids
    assert shorter_differs > 10


def test_keep_end_example_from_the_notes():
    p, c, r = [BOS, 21, 22, 23, 24, 25], [31, 32, 33], [41]
    cut = truncate_pair(TokenizedPair(p, c, r, BOS), LengthLimits(max_length=6, truncation_mode="keep_end"))
    # TRL: chosen row [23 24 25 31 32 33], rejected row [21 22 23 24 25 41]; one shared prompt here: [23 24 25]
    assert cut == TokenizedPair([23, 24, 25], c, r, BOS)  # the BOS goes, as in TRL (only the last ids are kept)


def test_max_prompt_length_keeps_the_older_rules():
    p, c, r = [BOS, 21, 22, 23, 24, 25], [31, 32, 33], [41]
    cut = truncate_pair(TokenizedPair(p, c, r, BOS), LengthLimits(max_length=6, max_prompt_length=3,
                                                                   truncation_mode="keep_end"))
    assert cut == TokenizedPair([BOS, 24, 25], c, r, BOS)  # BOS + the prompt's last ids


def test_orpo_default_gives_trl_orpo_tokens():
    # TRL 1.16 experimental ORPO (`tokenize_row`): the prompt is never cut; each answer keeps its first
    # max(0, max_length - len(prompt)) ids. TRL keeps the pair when that is 0 (warning); preftune drops it.
    limits = ORPOConfig(output_dir="unused", use_cpu=True).length_limits()
    assert (limits.max_prompt_length, limits.truncation_mode) == (None, "keep_start")
    for p, c, r, max_length in _cases(seed=2):
        limits = LengthLimits(max_length=max_length)
        cut = truncate_pair(TokenizedPair(p, c, r, BOS), limits)
        room = max(0, max_length - len(p))
        trl = [ids[:room] if len(p) + len(ids) > max_length else ids for ids in (c, r)]
        if not all(trl):
            assert cut is None
        else:
            assert (cut.prompt_ids, cut.chosen_ids, cut.rejected_ids) == (p, *trl)


def test_config_without_max_prompt_length(tmp_path):
    args = DPOConfig(output_dir=str(tmp_path), max_length=256, use_cpu=True)  # no error about an unset field
    assert args.length_limits() == LengthLimits(256, None, None, "keep_start")


def test_prepare_counts_pairs_whose_prompt_fills_max_length():
    plain = build("plain")
    rows = [
        {"prompt": "hello", "chosen": "fine thanks", "rejected": "bad"},  # 1 + 3 > 3: completions cut to 2
        {"prompt": "a b c", "chosen": "fine", "rejected": "bad"},  # the prompt fills max_length: dropped
        {"prompt": "a b c d", "chosen": "fine", "rejected": "bad"},
    ]
    out, report = prepare_dataset(rows, plain, LengthLimits(max_length=3))
    eos = plain.eos_token_id
    assert out[:] == {"prompt_ids": [[V["hello"]]], "chosen_ids": [[V["fine"], V["thanks"]]], "rejected_ids": [[V["bad"], eos]]}
    assert (report.n_kept, report.n_truncated, report.n_dropped_long_prompt, report.n_dropped_empty_after_truncation) == (1, 1, 2, 2)
    assert "2 dropped because the prompt alone fills --max_length" in report.summary()
    _, report = prepare_dataset(rows[:1] + [{"prompt": "a", "chosen": "b c d e f", "rejected": "g"}], plain,
                                LengthLimits(max_length=5, truncation_mode="keep_end"))
    assert report.n_dropped_long_completion == 1
    assert "1 dropped because a completion alone fills --max_length" in report.summary()


# ------------------------------------------------------------------ chat_template_kwargs, tools

# Renders tool names, tool calls and a keyword (`greeting`) in words of the tiny vocabulary. No newline after
# the end-of-turn token, so TRL's ids and preftune's (which ends a completion at EOS) are the same.
TOOL_TEMPLATE = (
    "{% if greeting %}{{ greeting }} {% endif %}"
    "{% if tools %}<|im_start|>system\n{% for t in tools %}{{ t['function']['name'] }} {% endfor %}<|im_end|>{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is not none %}{{ m['content'] }}{% endif %}"
    "{% if m['tool_calls'] %}{% for call in m['tool_calls'] %} {{ call['function']['name'] }} "
    "{{ call['function']['arguments'] }}{% endfor %}{% endif %}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOLS = [{"type": "function", "function": {"name": "cat", "description": "a cat",
                                           "parameters": {"type": "object", "properties": {}}}},
         {"type": "function", "function": {"name": "dog", "description": "a dog",
                                           "parameters": {"type": "object", "properties": {}}}}]


def tool_tokenizer():
    tok = build("chatml")
    tok.chat_template = TOOL_TEMPLATE
    return tok


def call(name, argument):
    return {"type": "function", "function": {"name": name, "arguments": argument}}


def tool_rows():
    """Tool-calling conversations: an assistant turn with tool_calls and no content, a tool result."""
    return [
        {
            "prompt": [{"role": "user", "content": "how is the cat"},
                       {"role": "assistant", "content": None, "tool_calls": [call("cat", "yes")]},
                       {"role": "tool", "content": "fine"}],
            "chosen": [{"role": "assistant", "content": "the cat is fine"}],
            "rejected": [{"role": "assistant", "content": "no"}],
            "tools": json.dumps(TOOLS),
            "chat_template_kwargs": {"greeting": "hello"},
        },
        {
            "prompt": [{"role": "user", "content": "a dog"}],
            "chosen": [{"role": "assistant", "content": None, "tool_calls": [call("dog", "yes")]}],
            "rejected": [{"role": "assistant", "content": "bad"}],
            "tools": json.dumps(TOOLS[1:]),
            "chat_template_kwargs": {"greeting": None},
        },
    ]


def S(name):
    return V[name]


def test_tools_tool_calls_and_chat_template_kwargs_give_exact_ids():
    tok = tool_tokenizer()
    out, report = prepare_dataset(datasets.Dataset.from_list(tool_rows()), tok, LengthLimits(None, None, None))
    assert report.n_kept == 2
    ims, ime, nl = S("<|im_start|>"), S("<|im_end|>"), S("\n")
    assert out[0] == {
        "prompt_ids": [S("hello"), ims, S("system"), nl, S("cat"), S("dog"), ime,
                       ims, S("user"), nl, S("how"), S("is"), S("the"), S("cat"), ime,
                       ims, S("assistant"), nl, S("cat"), S("yes"), ime,  # the tool call, no content
                       ims, S("<unk>"), nl, S("fine"), ime,  # the tool's answer ("tool" is not in the vocabulary)
                       ims, S("assistant"), nl],
        "chosen_ids": [S("the"), S("cat"), S("is"), S("fine"), ime],
        "rejected_ids": [S("no"), ime],
    }
    assert out[1] == {
        "prompt_ids": [ims, S("system"), nl, S("dog"), ime, ims, S("user"), nl, S("a"), S("dog"), ime,
                       ims, S("assistant"), nl],
        "chosen_ids": [S("dog"), S("yes"), ime],  # a completion that only calls a tool
        "rejected_ids": [S("bad"), ime],
    }


def test_tools_and_kwargs_render_as_trl_renders_them():
    data_utils = pytest.importorskip("trl.data_utils")
    tok = tool_tokenizer()
    ds = datasets.Dataset.from_list(tool_rows())
    out, _ = prepare_dataset(ds, tok, LengthLimits(None, None, None))
    for example, ours in zip(ds, out):  # TRL's `_prepare_dataset.tokenize_fn`, step by step
        tools = json.loads(example["tools"])
        kwargs = {"tools": tools, **example["chat_template_kwargs"]}
        prompt = data_utils._tokenize(tok, example["prompt"], add_generation_prompt=True, **kwargs)["input_ids"]
        chosen = data_utils._tokenize(tok, example["prompt"] + example["chosen"], **kwargs)["input_ids"]
        rejected = data_utils._tokenize(tok, example["prompt"] + example["rejected"], **kwargs)["input_ids"]
        n = min(data_utils.common_prefix_length(prompt, chosen), data_utils.common_prefix_length(prompt, rejected))
        assert ours == {"prompt_ids": prompt[:n], "chosen_ids": chosen[n:], "rejected_ids": rejected[n:]}


def test_tools_as_a_list_and_kwargs_in_list_rows():
    tok = tool_tokenizer()
    rows = tool_rows()
    rows[0]["tools"] = TOOLS  # a list of dicts, not JSON text
    out, _ = prepare_dataset(rows, tok, LengthLimits(None, None, None))
    reference, _ = prepare_dataset(datasets.Dataset.from_list(tool_rows()), tok, LengthLimits(None, None, None))
    assert out[:] == reference[:]
    without, _ = prepare_dataset([{k: v for k, v in rows[0].items() if k != "chat_template_kwargs"}], tok,
                                 LengthLimits(None, None, None))
    assert without[0]["prompt_ids"] == reference[0]["prompt_ids"][1:]  # no greeting without the row's kwargs


def test_bad_tools_and_kwargs_name_the_row():
    row = tool_rows()[0]
    with pytest.raises(DataError, match=r"^row 3: field 'tools' is a string that is not JSON"):
        to_preference_pair({**row, "tools": "[{"}, 3)
    with pytest.raises(DataError, match=r"^row 3: field 'tools' is int 5; expected a list"):
        to_preference_pair({**row, "tools": 5}, 3)
    with pytest.raises(DataError, match=r"^row 3: field 'chat_template_kwargs' is str 'x'; expected a dict"):
        to_preference_pair({**row, "chat_template_kwargs": "x"}, 3)
    with pytest.raises(DataError, match=r"^row 3: field 'prompt' has message 1 without content"):
        to_preference_pair({**row, "prompt": [row["prompt"][0], {"role": "assistant", "content": None}]}, 3)
    pair = to_preference_pair(row, 3)
    assert pair.tools == TOOLS and pair.template_kwargs == {"greeting": "hello"}
    assert pair.prompt[1] == {"role": "assistant", "content": None, "tool_calls": [call("cat", "yes")]}


def test_describe_shape_names_the_new_columns():
    from preftune.data.formats import describe_shape

    text = describe_shape(["prompt", "chosen", "rejected", "tools", "chat_template_kwargs", "image"])
    assert text == "explicit prompt {prompt, chosen, rejected}; also used: image, tools, chat_template_kwargs"
