"""`preftune data inspect` on list data: the numbers of a hand-made set, derived by hand below."""
import json

import pytest

from preftune import cli
from preftune.assets import tiny_model_path
from preftune.cli.inspect import data_main, format_report, inspect_dataset


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# With the plain tiny tokenizer (one id per word, EOS after each answer, no BOS):
# row 0: prompt 1 id; answers 4, 2, 3 ids, scores 3, 1, 2: ordered pairs 0>1, 0>2, 2>1, the better one longer
#        in all three; spread 3 - 1 = 2; no tie
# row 1: prompt 3 ids; answers 2, 2, 4 ids, scores 1, 1, 0: ordered pairs 0>2, 1>2, the better one shorter in
#        both; spread 1; a tie (answers 0 and 1)
# row 2: a pair row (a list of two): prompt 2 ids; answers 2, 2 ids, scores 1, 0: one pair, same length; spread 1
# row 3: bad (one distinct score)
ROWS = [
    {"prompt": "hello", "completions": ["fine thanks good", "bad", "yes no"], "scores": [3, 1, 2]},
    {"prompt": "how are you", "completions": ["fine", "good", "bad a b"], "scores": [1, 1, 0]},
    {"prompt": "the cat", "chosen": "yes", "rejected": "no"},
    {"prompt": "hello", "completions": ["fine", "bad"], "scores": [1, 1]},
]


def test_list_report_numbers(tmp_path, plain):
    """Answers per prompt 3, 3, 2: min 2, mean 8/3, max 3. Spreads 2, 1, 1: mean 4/3, median 1. Ties: 1 of 3
    prompts. Ordered pairs 3 + 2 + 1 = 6: the better answer longer in 3 (0.5), shorter in 2, same length in 1.
    Tokens: prompts 1, 3, 2; lists (prompt + every answer) 1 + 9 = 10, 3 + 8 = 11, 2 + 4 = 6.
    max_length 5 (keep_start): row 0 fits (1 + 4), row 1 does not (3 + 4 > 5: answers cut to 2), row 2 fits."""
    path = write_jsonl(tmp_path / "list.jsonl", ROWS)
    report = inspect_dataset(path, tokenizer=plain, max_length=5)
    assert report["kind"] == "lists" and report["rows"] == 4
    assert report["shape"] == "scored list {prompt, completions, scores}; mixed with pairs {prompt, chosen, rejected} (a list of two)"
    assert (report["lists"], report["answers"], report["bad_rows"]) == (3, 8, 1)
    assert report["first_bad_rows"][0].startswith("row 3: field 'scores' has one distinct score (1)")
    assert report["answers_per_prompt"] == {"min": 2, "mean": 2.67, "max": 3}
    assert report["score_spread"] == {"min": 1.0, "mean": 1.3333, "p50": 1.0, "max": 2.0}
    assert report["ties"] == 0.3333
    assert report["ordered_pairs"] == 6
    assert report["length_bias"] == {"better_longer": 0.5, "better_shorter": 0.3333, "same_length": 0.1667}
    assert report["tokens"]["prompt"]["max"] == 3 and report["tokens"]["prompt"]["mean"] == 2.0
    assert report["tokens"]["list"]["max"] == 11 and report["tokens"]["answer"]["max"] == 4
    assert (report["truncated"], report["dropped_by_truncation"]) == (1, 0)
    # max_length 3: row 1's prompt fills it (dropped); rows 0 and 2 are cut
    report = inspect_dataset(path, tokenizer=plain, max_length=3)
    assert (report["truncated"], report["dropped_by_truncation"]) == (2, 1)
    text = " ".join(format_report(report).split())  # table padding aside
    for needle in ("usable lists 3 (75.0%)", "answers per prompt (min / mean / max) 2 / 2.67 / 3", "prompts with a tie 33.3%",
                   "ordered pairs (better, worse) 6", "better answer longer (0.5 = no length bias) 50.0%",
                   "list (prompt + every answer)", "first bad row: row 3"):
        assert needle in text, needle


def test_no_usable_list_still_reports(tmp_path, plain):
    report = inspect_dataset(write_jsonl(tmp_path / "bad.jsonl", ROWS[3:]), tokenizer=plain)
    assert report["lists"] == 0 and report["bad_rows"] == 1
    assert "usable lists" in format_report(report)


def test_the_command_exits_0_on_a_list_file_and_2_on_a_bad_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "list.jsonl", ROWS[:3])
    assert data_main(["inspect", "list.jsonl", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["lists"] == 3 and report["ordered_pairs"] == 6
    assert cli.main(["data", "inspect", "list.jsonl"]) == 0
    assert "answers per prompt" in capsys.readouterr().out

    write_jsonl(tmp_path / "images.jsonl", [{**ROWS[0], "images": ["cat.png"]}])
    write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], {"prompt": "hello", "completions": ["fine", "bad"], "scores": [1, None]}])
    for args, needle in [
        (["data", "inspect", "images.jsonl"], "list rows (several scored answers per prompt) do not support images"),
        (["dpo", "--model", tiny_model_path(), "--dataset", "bad.jsonl"],
         "row 1 (line 2): field 'scores' holds NoneType None at position 1, not a finite number"),
    ]:
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("preftune: error: ")]
        assert len(errors) == 1 and needle in errors[0] and "Traceback" not in err, err


@pytest.mark.parametrize("columns", [None, "points=scores"])
def test_renamed_columns(tmp_path, plain, columns):
    rows = [{"prompt": "hello", "completions": ["fine", "bad"], ("points" if columns else "scores"): [1, 0]}]
    report = inspect_dataset(write_jsonl(tmp_path / "l.jsonl", rows), tokenizer=plain,
                             columns={"points": "scores"} if columns else None)
    assert report["kind"] == "lists" and report["lists"] == 1 and report["ordered_pairs"] == 1
