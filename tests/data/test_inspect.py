"""`preftune data inspect`: counts checked against the training pipeline's own tokenization."""
import json

import pytest

from preftune.data.formats import to_preference_pair
from preftune.cli.inspect import NO_LIMIT, data_main, format_report, inspect_dataset
from preftune.data.tokenize import LengthLimits, tokenize_pair, truncate_pair
from preftune.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_tokenizer(bundled_model_path):
    from preftune.models import load_tokenizer

    return load_tokenizer(bundled_model_path)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


ROWS = [
    {"prompt": "What is two plus two?", "chosen": "Four, and well done for asking!", "rejected": "4."},
    {"prompt": "What is two plus two?", "chosen": "Four, and well done for asking!", "rejected": "4."},  # duplicate pair
    {"prompt": "What is two plus two?", "chosen": "It is four.", "rejected": "Four, obviously, as everyone knows."},  # repeated prompt
    {"prompt": "Name a color.", "chosen": "Blue", "rejected": "Blue"},  # chosen == rejected: bad row
    {"prompt": "Say hi.", "chosen": "Hi there, friend!", "rejected": "hi"},
]


def test_report_matches_the_pipeline(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    limits = LengthLimits(12, 8, None, "keep_end")
    report = inspect_dataset(path, tokenizer=tiny_tokenizer, max_length=12, max_prompt_length=8)
    assert report["rows"] == 5 and report["pairs"] == 4 and report["bad_rows"] == 1
    assert report["chosen_equals_rejected"] == 1
    assert report["first_bad_rows"][0].startswith("row 3: field 'rejected' is identical to chosen")
    assert report["duplicate_pairs"] == 1 and report["repeated_prompts"] == 2
    assert report["shape"].startswith("explicit prompt")

    good = [r for r in ROWS if r["chosen"] != r["rejected"]]
    tokenized = [tokenize_pair(to_preference_pair(r), tiny_tokenizer) for r in good]
    chosen_lengths = sorted(len(t.chosen_ids) for t in tokenized)
    assert report["tokens"]["chosen"]["max"] == chosen_lengths[-1]
    assert report["tokens"]["prompt"]["p50"] == sorted(len(t.prompt_ids) for t in tokenized)[1]  # "higher" median of 4
    cuts = [truncate_pair(t, limits) for t in tokenized]
    assert report["dropped_by_truncation"] == sum(c is None for c in cuts)
    assert report["truncated"] == sum(c is not None and c is not t for c, t in zip(cuts, tokenized))
    longer = sum(len(t.chosen_ids) > len(t.rejected_ids) for t in tokenized)
    assert report["length_bias"]["chosen_longer"] == pytest.approx(longer / 4)
    assert report["limits"] == {"max_length": 12, "max_prompt_length": 8, "max_completion_length": None, "truncation_mode": "keep_start"}


def test_defaults_come_from_the_config_and_none_means_no_limit(tmp_path, tiny_tokenizer):
    from preftune.train.config import ORPOConfig

    path = write_jsonl(tmp_path / "p.jsonl", ROWS[:1])
    report = inspect_dataset(path, tokenizer=tiny_tokenizer)
    default = ORPOConfig.__dataclass_fields__
    assert report["limits"]["max_length"] == default["max_length"].default
    assert report["limits"]["max_prompt_length"] == default["max_prompt_length"].default
    report = inspect_dataset(path, tokenizer=tiny_tokenizer, max_length=NO_LIMIT, max_prompt_length=NO_LIMIT)
    assert report["limits"]["max_length"] is None and report["truncated"] == 0


def test_conversational_rows_use_the_chat_template(tmp_path, tiny_tokenizer):
    rows = [{"question": "你是谁？", "answer_zh": "👋 我是助手！", "answer_en": "I am an assistant."}]
    report = inspect_dataset(write_jsonl(tmp_path / "e.jsonl", rows), tokenizer=tiny_tokenizer)
    pair = to_preference_pair(rows[0])
    assert report["shape"].startswith("shareai emoji")
    assert report["tokens"]["prompt"]["max"] == len(tokenize_pair(pair, tiny_tokenizer).prompt_ids)


def test_no_usable_row_still_reports(tmp_path, tiny_tokenizer):
    report = inspect_dataset(write_jsonl(tmp_path / "p.jsonl", [ROWS[3]]), tokenizer=tiny_tokenizer)
    assert report["pairs"] == 0 and report["chosen_equals_rejected"] == 1
    assert "usable pairs" in format_report(report)


def test_text_and_json_output(tmp_path, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    assert data_main(["inspect", path, "--max_length", "12", "--max_prompt_length", "8"]) == 0
    text = capsys.readouterr().out
    for needle in ("rows: 5", "p50", "p90", "p99", "duplicate pairs", "chosen longer than rejected", "truncated by the limits"):
        assert needle in text, needle
    assert data_main(["inspect", path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pairs"] == 4 and set(report["tokens"]) == {"prompt", "chosen", "rejected", "pair"}


def test_data_list_and_bad_arguments(capsys):
    assert data_main(["list"]) == 0
    assert "Anthropic/hh-rlhf" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="unknown data command"):
        data_main(["inspekt", "x"])
    with pytest.raises(ConfigError, match="not a number of tokens"):
        data_main(["inspect", "tiny-prefs", "--max_length", "many"])
