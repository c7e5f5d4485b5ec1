"""The benchmark suite runs and reports what it says it reports.

The suite is run on the micro configuration for 2 steps, as a user runs it. Nothing
here is timed as a pass/fail criterion: the checks are the table's columns, that
every number is finite and in range, and that the token and padding counts equal
what the synthetic pairs imply (worked out here from the pairs themselves).
"""
import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench_modules(monkeypatch):
    """benchmarks/ is a folder of scripts, not a package: import its modules by path."""
    monkeypatch.syspath_prepend(str(BENCH))
    names = ("configs", "assets", "run")
    for name in names:
        sys.modules.pop(name, None)
    modules = {name: importlib.import_module(name) for name in names}
    yield modules
    for name in names:
        sys.modules.pop(name, None)


def expected_counts(pairs, batch_size, steps):
    """Per step: tokens of chosen + rejected (BOS + prompt in each, EOS after each completion),
    and the (2B, T) positions of the batch padded to its longest row."""
    tokens, computed = [], []
    for s in range(steps):
        batch = pairs[s * batch_size:(s + 1) * batch_size]
        lens = [(1 + len(p["prompt"].split()), len(p["chosen"].split()) + 1, len(p["rejected"].split()) + 1)
                for p in batch]
        tokens.append(sum(2 * a + c + r for a, c, r in lens))
        computed.append(2 * len(batch) * max(a + max(c, r) for a, c, r in lens))
    return tokens, computed


@pytest.mark.slow
def test_micro_suite_two_steps(tmp_path, bench_modules):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--config", "micro", "--steps", "2", "--impls", "preftune",
         "--methods", "orpo,dpo", "--json", str(out), "--assets-dir", str(tmp_path / "assets")],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| impl"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns == ["impl", "method", "tokens/s", "s/step", "peak mem MiB", "train Δmem MiB", "padding"]

    result = json.loads(out.read_text())
    assert result["steps"] == 2 and result["warmup_steps"] == 1
    rows = result["rows"]
    assert [(r["impl"], r["method"]) for r in rows] == [("preftune", "orpo"), ("preftune", "dpo")]

    cfg = bench_modules["configs"].CONFIGS["micro"]
    assets_dir = next((tmp_path / "assets").iterdir())
    pairs = bench_modules["assets"].load_pairs(assets_dir)
    assert len(pairs) == 2 * cfg.batch_size
    tokens, computed = expected_counts(pairs, cfg.batch_size, 2)
    for row in rows:
        assert "error" not in row, row.get("error")
        assert row["steps"] == 2 and len(row["step_times_s"]) == 2
        assert row["tokens_per_step"] == tokens  # counted from the batches the trainer used
        forwards = 1 if row["method"] == "orpo" else 2  # DPO: policy and reference
        assert row["forwards_per_step"] == [forwards, forwards]
        # Positions computed: at most the plain padded batch per forward; at least each pair's
        # distinct tokens once (prompt shared) — where in between depends on preftune's packing.
        distinct = sum(tokens) - sum(1 + len(p["prompt"].split()) for p in pairs)
        assert forwards * distinct <= row["computed_positions"] <= forwards * sum(computed)
        assert 0 <= row["padding_fraction"] < 1
        for key in ("tokens_per_s", "s_per_step", "peak_rss_mib", "model_tflops_per_s"):
            assert math.isfinite(row[key]) and row[key] > 0, key
        # tokens/s is the measured step's tokens over its time (step 1 is the warm-up)
        assert row["tokens_per_s"] == pytest.approx(tokens[1] / row["step_times_s"][1])
        assert row["peak_rss_mib"] >= row["rss_before_train_mib"] > 0
        assert row["params"] > row["matmul_params"] > 0
    # The configuration is what the README says: ~1M parameters, 1k vocabulary.
    assert 0.5e6 < rows[0]["params"] < 2e6 and cfg.vocab_size == 1024


@pytest.mark.slow
def test_lora_rows_train_an_adapter_and_count_its_flops(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--config", "micro", "--steps", "2", "--impls", "preftune",
         "--methods", "orpo,dpo", "--lora", "4", "--json", str(out), "--assets-dir", str(tmp_path / "assets")],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LoRA r=4" in proc.stdout
    result = json.loads(out.read_text())
    assert result["lora_rank"] == 4
    for row in result["rows"]:
        assert "error" not in row, row.get("error")
        assert 0 < row["trainable_params"] < row["params"] / 10  # only the adapter trains
        # 4·N per token for the frozen policy's forward + backward, + 2·N for DPO's (adapter-off) reference
        per_token = (4 if row["method"] == "orpo" else 6) * row["matmul_params"]
        assert row["model_tflops_per_s"] == pytest.approx(per_token * row["tokens_per_s"] / 1e12)


def test_position_counter_plain_and_packed_forwards(bench_modules, monkeypatch):
    """Two pairs: prompt [1, 5, 6] (BOS included), chosen [7, 2], rejected [8, 9, 2]. As plain
    rows they are 5 + 6 = 11 real tokens per pair; packed with the shared prefix [1, 5, 6] once,
    8. A (4, 7) forward is plain (2B rows), a (2, 9) forward packed (B rows)."""
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("worker", None)
    worker = importlib.import_module("worker")
    import torch

    features = [{"prompt_ids": [1, 5, 6], "chosen_ids": [7, 2], "rejected_ids": [8, 9, 2]}] * 2
    counts = worker.batch_counts(features)
    assert counts == {"pairs": 2, "tokens": 22, "real_plain": 22, "real_shared": 16}
    embed = torch.nn.Embedding(10, 4)
    with worker.PositionCounter([counts]) as positions:
        embed(torch.zeros(4, 7, dtype=torch.long))
        embed(torch.zeros(2, 9, dtype=torch.long))
    embed(torch.zeros(4, 7, dtype=torch.long))  # after the context: not counted
    assert positions.computed == {0: 28 + 18} and positions.real == {0: 22 + 16} and positions.forwards == {0: 2}
    sys.modules.pop("worker", None)


def test_table_ratios_and_unavailable_rows(bench_modules):
    run = bench_modules["run"]
    rows = [
        {"impl": "preftune", "method": "orpo", "label": "preftune", "tokens_per_s": 300.0, "s_per_step": 2.0,
         "peak_rss_mib": 700.0, "train_rss_delta_mib": 200.0, "padding_fraction": 0.25},
        {"impl": "trl", "method": "orpo", "label": "trl", "tokens_per_s": 200.0, "s_per_step": 3.0,
         "peak_rss_mib": 1000.0, "train_rss_delta_mib": 500.0, "padding_fraction": 0.25},
        {"impl": "preftune", "method": "dpo", "label": "preftune", "tokens_per_s": 100.0, "s_per_step": 1.0,
         "peak_rss_mib": 500.0, "train_rss_delta_mib": None, "padding_fraction": 0.0},
        {"impl": "trl", "method": "dpo", "label": "trl", "error": "trl is not installed"},
    ]
    run.add_ratios(rows)
    assert rows[0]["speed_vs_trl"] == pytest.approx(1.5)
    assert rows[0]["mem_vs_trl"] == pytest.approx(0.7)
    assert rows[0]["train_delta_mem_vs_trl"] == pytest.approx(0.4)
    assert "speed_vs_trl" not in rows[2]  # no TRL result to compare with
    table = run.format_table(rows).splitlines()
    assert table[0] == ("| impl | method | tokens/s | s/step | peak mem MiB | train Δmem MiB | padding "
                        "| speed vs TRL | mem vs TRL |")
    assert table[2].split(" | ")[-2:] == ["1.50×", "0.70× |"]
    assert "n/a: trl is not installed" in table[5]


def test_repeats_take_each_steps_fastest_time(bench_modules):
    """Two repeats of the same 3 steps (step 0 is the warm-up): step 1 was disturbed in
    the first run, step 2 in the second; the row keeps 2.0 s and 1.0 s."""
    run = bench_modules["run"]
    common = {"impl": "preftune", "method": "orpo", "label": "preftune", "warmup_steps": 1,
              "tokens_per_step": [100, 400, 300], "padding_fraction": 0.1}
    first = {**common, "step_times_s": [9.0, 8.0, 1.0], "tokens_per_s": 700 / 9.0, "peak_rss_mib": 100.0}
    second = {**common, "step_times_s": [5.0, 2.0, 6.0], "tokens_per_s": 700 / 8.0, "peak_rss_mib": 300.0}
    row = run.best_run([first, second])
    assert row["step_times_s"] == [5.0, 2.0, 1.0]
    assert row["tokens_per_s"] == pytest.approx(700 / 3.0)
    assert row["s_per_step"] == pytest.approx(1.5)
    assert row["peak_rss_mib"] == pytest.approx(200.0)  # median over the repeats
    assert run.best_run([{**common, "error": "boom"}])["error"] == "boom"


@pytest.mark.slow
def test_seq2seq_micro_runs_each_variant():
    proc = subprocess.run([sys.executable, str(BENCH / "seq2seq_micro.py"), "--arch", "bart", "--repeats", "1",
                           "--variants", "chunked,plain"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| chunked") or
            line.startswith("| plain")]
    assert [r[0].strip() for r in rows] == ["chunked", "plain"]
    for r in rows:
        assert float(r[1]) > 0 and float(r[3]) >= 0  # seconds, added MiB


def test_ratios_to_the_first_preftune_row(bench_modules):
    """--preftune-flags "" --preftune-flags "--padding_free true": the second row ÷ the first, per method."""
    run = bench_modules["run"]
    common = {"impl": "preftune", "s_per_step": 1.0, "padding_fraction": 0.0}
    rows = [
        {**common, "method": "dpo", "flags": "", "label": "preftune", "tokens_per_s": 200.0, "peak_rss_mib": 800.0,
         "train_rss_delta_mib": 400.0},
        {**common, "method": "dpo", "flags": "--padding_free true", "label": "preftune --padding_free true",
         "tokens_per_s": 500.0, "peak_rss_mib": 600.0, "train_rss_delta_mib": 100.0},
    ]
    run.add_ratios_to_first(rows)
    assert rows[1]["speed_vs_first"] == pytest.approx(2.5) and rows[1]["mem_vs_first"] == pytest.approx(0.75)
    assert rows[1]["train_delta_mem_vs_first"] == pytest.approx(0.25) and rows[0]["speed_vs_first"] == 1.0
    table = run.format_table(rows).splitlines()
    assert table[0].endswith("| padding | speed vs 1st | mem vs 1st | Δmem vs 1st |")
    assert table[3].split(" | ")[-3:] == ["2.50×", "0.75×", "0.25× |"]
    one = [{k: v for k, v in rows[0].items() if not k.endswith("_vs_first")}]
    run.add_ratios_to_first(one)  # a single preftune row: nothing to compare
    assert "speed_vs_first" not in one[0]


def test_position_counter_padding_free_forward(bench_modules, monkeypatch):
    """padding_free: the two pairs of the test above as one (1, 16) row (prompt shared) or (1, 22): all real."""
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("worker", None)
    worker = importlib.import_module("worker")
    import torch

    counts = worker.batch_counts([{"prompt_ids": [1, 5, 6], "chosen_ids": [7, 2], "rejected_ids": [8, 9, 2]}] * 2)
    embed = torch.nn.Embedding(10, 4)
    with worker.PositionCounter([counts]) as positions:
        embed(torch.zeros(1, 16, dtype=torch.long))
        embed(torch.zeros(1, 22, dtype=torch.long))
    assert positions.computed == {0: 38} and positions.real == {0: 38} and positions.unknown == 0
    sys.modules.pop("worker", None)


@pytest.mark.slow
def test_cpo_simpo_kto_rows_run_in_each_installed_implementation(tmp_path):
    """The rows the README's CPO/SimPO/KTO table comes from: each method trains in preftune (and in TRL
    where TRL 1.16 is installed) and its tokens are counted from the batches (KTO: each row and its KL row)."""
    impls = ["preftune"]
    try:
        import trl

        if trl.__version__.startswith("1.16"):
            impls.append("trl")
    except ImportError:
        pass
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--config", "micro", "--steps", "2", "--impls", ",".join(impls),
         "--methods", "cpo,simpo,kto", "--json", str(out), "--assets-dir", str(tmp_path / "assets")],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(r["impl"], r["method"]) for r in rows} == {(i, m) for i in impls for m in ("cpo", "simpo", "kto")}
    for row in rows:
        assert "error" not in row, (row["impl"], row["method"], row.get("error"))
        assert row["tokens_per_s"] > 0 and row["peak_rss_mib"] > 0
    by = {(r["impl"], r["method"]): r for r in rows}
    if "trl" in impls:  # the same batches in both: the same tokens counted
        for method in ("cpo", "simpo", "kto"):
            assert by["preftune", method]["tokens_per_step"] == by["trl", method]["tokens_per_step"], method


# ------------------------------------------------------------------ --lists K: list rows vs their pairs


@pytest.fixture
def list_modules(bench_modules, monkeypatch):
    for name in ("worker", "list_rows"):
        sys.modules.pop(name, None)
    modules = {**bench_modules, **{name: importlib.import_module(name) for name in ("worker", "list_rows")}}
    yield modules
    for name in ("worker", "list_rows"):
        sys.modules.pop(name, None)


def test_synthetic_lists_and_their_pairs(bench_modules):
    """Each prompt gets K answers with K distinct scores, the prompt lengths the pair generator draws
    (same seed, same first draw), and its expansion is every two answers, the higher-scored chosen."""
    assets, cfg = bench_modules["assets"], bench_modules["configs"].CONFIGS["micro"]
    lists = assets.synthetic_lists(cfg, 5, 4)
    pairs = assets.synthetic_pairs(cfg, 5)
    assert [len(r["prompt"].split()) for r in lists] == [len(p["prompt"].split()) for p in pairs]
    for row in lists:
        assert len(row["completions"]) == 4 and sorted(row["scores"]) == [0.0, 1.0, 2.0, 3.0]
        assert all(a.startswith(" ") and a.strip() for a in row["completions"])
    expanded = assets.expand_lists(lists)
    assert len(expanded) == 5 * 6
    for g, row in enumerate(lists):
        score = dict(zip(row["completions"], row["scores"]))
        mine = expanded[6 * g:6 * (g + 1)]  # a prompt's pairs are adjacent
        assert all(p["prompt"] == row["prompt"] and score[p["chosen"]] > score[p["rejected"]] for p in mine)
        assert {frozenset((p["chosen"], p["rejected"])) for p in mine} == {
            frozenset((a, b)) for i, a in enumerate(row["completions"]) for b in row["completions"][i + 1:]}
    # a tie never becomes a pair
    tied = [{"prompt": "x", "completions": [" a", " b", " c"], "scores": [1.0, 0.0, 1.0]}]
    assert assets.expand_lists(tied) == [{"prompt": "x", "chosen": " a", "rejected": " b"},
                                         {"prompt": "x", "chosen": " c", "rejected": " b"}]


def test_list_counts_equal_those_of_the_expanded_pairs(list_modules):
    """Prompt [1, 5, 6] (BOS included) with answers [7, 2], [8, 9, 2], [10, 2] scored 2, 0, 1: rows of
    5, 6 and 5 tokens. Its pairs (0>1, 0>2, 2>1) count (5+6) + (5+5) + (5+6) = 32 tokens; the three plain
    rows hold 16 real tokens, one packed row 16 - 2·3 = 10 (the prompt once). Two such prompts per batch.
    With scores 1, 0, 1 the tie (0, 2) is no pair: (5+6) + (6+5) = 22."""
    worker = list_modules["worker"]
    import torch

    row = {"prompt_ids": [1, 5, 6], "completion_ids": [[7, 2], [8, 9, 2], [10, 2]], "scores": [2.0, 0.0, 1.0]}
    counts = worker.list_counts([row, row])
    assert counts == {"pairs": 6, "tokens": 64, "real_plain": 32, "real_shared": 20, "packed_rows": 2,
                      "plain_rows": 6}
    pairs = [{"prompt_ids": [1, 5, 6], "chosen_ids": c, "rejected_ids": r}
             for c, r in (([7, 2], [8, 9, 2]), ([7, 2], [10, 2]), ([10, 2], [8, 9, 2]))]
    assert worker.batch_counts(pairs + pairs)["tokens"] == counts["tokens"]
    assert worker.list_counts([{**row, "scores": [1.0, 0.0, 1.0]}])["tokens"] == 22
    embed = torch.nn.Embedding(11, 4)
    with worker.PositionCounter([counts]) as positions:
        embed(torch.zeros(6, 6, dtype=torch.long))  # plain: one row per answer
        embed(torch.zeros(2, 11, dtype=torch.long))  # packed: one row per prompt
    assert positions.computed == {0: 36 + 22} and positions.real == {0: 32 + 20} and positions.unknown == 0


def test_list_table_ratios(list_modules):
    """speed vs pairs = list tokens/s ÷ pair tokens/s (600 / 200 = 3), mem = 900 / 1200 = 0.75,
    Δmem = 100 / 400 = 0.25; a method whose pair run failed gets no ratios."""
    list_rows = list_modules["list_rows"]
    common = {"impl": "preftune", "flags": "", "padding_fraction": 0.1, "warmup_steps": 1,
              "tokens_per_step": [500, 300, 500]}
    rows = [
        {**common, "data": "lists", "method": "dpo", "label": "lists", "tokens_per_s": 600.0, "s_per_step": 0.5,
         "peak_rss_mib": 900.0, "train_rss_delta_mib": 100.0},
        {**common, "data": "pairs", "method": "dpo", "label": "pairs", "tokens_per_s": 200.0, "s_per_step": 1.5,
         "peak_rss_mib": 1200.0, "train_rss_delta_mib": 400.0},
        {**common, "data": "lists", "method": "orpo", "label": "lists", "tokens_per_s": 600.0, "s_per_step": 0.5,
         "peak_rss_mib": 900.0, "train_rss_delta_mib": 100.0},
        {**common, "data": "pairs", "method": "orpo", "label": "pairs", "error": "boom"},
    ]
    list_rows.add_list_ratios(rows)
    assert rows[0]["speed_vs_pairs"] == pytest.approx(3.0) and rows[0]["mem_vs_pairs"] == pytest.approx(0.75)
    assert rows[0]["train_delta_mem_vs_pairs"] == pytest.approx(0.25)
    assert "speed_vs_pairs" not in rows[1] and "speed_vs_pairs" not in rows[2]
    table = list_rows.format_list_table(rows).splitlines()
    assert table[0] == ("| run | method | pair-eq tokens/step | pair-eq tokens/s | s/step | peak mem MiB | "
                        "train Δmem MiB | padding | speed vs pairs | mem vs pairs | Δmem vs pairs |")
    assert table[2].split(" | ")[2:4] == ["400", "600"]  # mean of the measured steps' tokens (300 + 500) / 2
    assert table[2].split(" | ")[-3:] == ["3.00×", "0.75×", "0.25× |"]
    assert "n/a: boom" in table[5]


@pytest.mark.slow
def test_lists_against_their_pairs_on_micro(tmp_path, list_modules):
    """run.py --lists 4: per method a list run (2 prompts per step) and a pair run (the same 2 prompts'
    12 pairs per step) that count the same pair-equivalent tokens per step — worked out here from
    lists.jsonl — with the ratio columns computed from the two rows' numbers."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--config", "micro", "--steps", "2", "--lists", "4",
         "--methods", "dpo,orpo", "--json", str(out), "--assets-dir", str(tmp_path / "assets")],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| run"))
    assert [c.strip() for c in header.strip("|").split("|")] == list_modules["list_rows"].LIST_COLUMNS
    result = json.loads(out.read_text())
    assert result["lists"] == 4 and result["pairs_per_prompt"] == 6 and result["prompts_per_step"] == 2
    rows = result["rows"]
    assert [(r["method"], r["data"]) for r in rows] == [("dpo", "lists"), ("dpo", "pairs"), ("orpo", "lists"),
                                                        ("orpo", "pairs")]

    assets_dir = next((tmp_path / "assets").iterdir())
    assets = list_modules["assets"]
    lists = assets.load_rows(assets_dir, "lists")
    assert len(lists) == 2 * 2 and assets.load_pairs(assets_dir) == assets.expand_lists(lists)
    expected = []  # per step: Σ over each prompt's 6 pairs of (BOS + prompt + better + EOS) + (BOS + prompt + worse + EOS)
    for s in range(2):
        tokens = 0
        for row in lists[2 * s:2 * s + 2]:
            p, c = 1 + len(row["prompt"].split()), [1 + len(a.split()) for a in row["completions"]]
            tokens += sum(2 * p + c[i] + c[j] for i in range(4) for j in range(i + 1, 4))
        expected.append(tokens)

    by = {(r["method"], r["data"]): r for r in rows}
    for method in ("dpo", "orpo"):
        lst, prs = by[method, "lists"], by[method, "pairs"]
        for row in (lst, prs):
            assert "error" not in row, row.get("error")
            assert row["tokens_per_step"] == expected and row["pairs_per_step"] == [12, 12]
            assert row["forwards_per_step"] == [2 if method == "dpo" else 1] * 2
            assert 0 <= row["padding_fraction"] < 1
        assert lst["rows_per_step"] == [2, 2] and prs["rows_per_step"] == [12, 12]
        assert lst["computed_positions"] < prs["computed_positions"]  # one packed row per prompt, not per pair
        assert lst["speed_vs_pairs"] == pytest.approx(lst["tokens_per_s"] / prs["tokens_per_s"])
        assert lst["speed_vs_pairs"] == pytest.approx(prs["step_times_s"][1] / lst["step_times_s"][1])
        assert lst["mem_vs_pairs"] == pytest.approx(lst["peak_rss_mib"] / prs["peak_rss_mib"])
    line = next(x for x in proc.stdout.splitlines() if x.startswith("| preftune lists") and "| dpo |" in x)
    assert f"| {by['dpo', 'lists']['speed_vs_pairs']:.2f}× |" in line
