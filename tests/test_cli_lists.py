"""List rows from the command line (issue 17): `preftune dpo --dataset list.jsonl` trains, a mixed file of list and
pair rows trains as lists, `--list_pairs` and `--loss_type plackett_luce` reach the trainer, and a bad list row or
KTO on lists exits 2 with one line and no traceback."""
import json
import re

from .test_cli import preftune, write_jsonl

ROWS = [
    {"prompt": "What is 2 plus 2?", "completions": ["It is 4! 🎉", "It is 4.", "4. Next.", "FOUR."], "scores": [3, 2, 1, 0]},
    {"prompt": "Name a red fruit.", "ranking": ["A cherry! 🍒", "A cherry.", "CHERRY."]},
    {"prompt": "What sound does a cat make?", "chosen": "Meow! 🐱", "rejected": "Meow."},
] * 4


def test_dpo_trains_on_a_list_file(tmp_path):
    data = write_jsonl(tmp_path / "list.jsonl", ROWS)
    out = tmp_path / "out"
    res = preftune("dpo", "--dataset", data, "--split_dataset_ratio", "0.25", "--max_steps", "2",
                   "--per_device_train_batch_size", "3", "--output_dir", str(out), "--eval_strategy", "steps",
                   "--eval_steps", "2", "--logging_steps", "1", "--list_pairs", "adjacent", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    counts = re.findall(r"(train|eval) data: prepared (\d+) lists \((\d+) answers\)", res.stdout)
    assert [(split, int(n)) for split, n, _ in counts] == [("train", 9), ("eval", 3)]
    assert sum(int(a) for _, _, a in counts) == (4 + 3 + 2) * 4  # every answer of the 12 rows, split 9 / 3
    assert "log-probs: prefix-shared packed rows" in res.stdout
    held_out = [line for line in res.stdout.splitlines() if line.startswith("preftune: held-out")]
    assert held_out and "rewards/ranking_accuracy=" in held_out[0]
    assert json.loads((out / "preftune_config.json").read_text())["list_pairs"] == "adjacent"
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/ranking_accuracy" in entry for entry in logs)


def test_plackett_luce_from_the_command_line(tmp_path):
    data = write_jsonl(tmp_path / "list.jsonl", ROWS)
    res = preftune("dpo", "--dataset", data, "--max_steps", "1", "--loss_type", "plackett_luce",
                   "--output_dir", str(tmp_path / "out"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "prepared 12 lists" in res.stdout


def test_bad_list_row_exits_2_with_one_line(tmp_path):
    data = write_jsonl(tmp_path / "bad.jsonl", ROWS[:2] + [{"prompt": "Hi", "completions": ["a", "b"], "scores": [1, 1]}])
    res = preftune("dpo", "--dataset", data, "--max_steps", "1", "--output_dir", str(tmp_path / "out"), cwd=tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    message = res.stderr.strip().splitlines()[-1]
    assert "line 3" in message and "scores" in message


def test_kto_refuses_list_rows(tmp_path):
    data = write_jsonl(tmp_path / "list.jsonl", ROWS)
    res = preftune("kto", "--dataset", data, "--max_steps", "1", "--output_dir", str(tmp_path / "out"), cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "KTO does not train" in res.stderr
