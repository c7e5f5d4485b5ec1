"""Data sources: specs, local files (with broken lines), sampling, mixing, columns, the registry, eval sets."""
import json

import datasets
import pytest

from preftune.data import sources
from preftune.data.sources import load_sources, parse_columns, parse_spec, split_specs, train_and_eval
from preftune.errors import ConfigError, DataError

GOOD = {"prompt": "hi", "chosen": "hello there", "rejected": "go away"}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def numbered(n, **extra):
    return [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}", **extra} for i in range(n)]


# ----------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    "text, name, config, split, count",
    [
        ("trl-lib/ultrafeedback_binarized", "trl-lib/ultrafeedback_binarized", None, None, None),
        ("Anthropic/hh-rlhf:harmless-base@test#100", "Anthropic/hh-rlhf", "harmless-base", "test", 100),
        ("hh-rlhf#5", "hh-rlhf", None, None, 5),
        ("tiny-prefs@test", "tiny-prefs", None, "test", None),
    ],
)
def test_parse_spec(text, name, config, split, count):
    spec = parse_spec(text)
    assert (spec.name, spec.config, spec.split, spec.count) == (name, config, split, count)
    assert sources.spec_text(spec) == text


def test_existing_path_is_taken_whole(tmp_path):
    odd = tmp_path / "a:b@c.jsonl"
    write_jsonl(odd, [GOOD])
    assert parse_spec(str(odd)).name == str(odd)
    assert parse_spec(f"{odd}#1").count == 1


@pytest.mark.parametrize("text", ["x#0", "x#many", "x@", "x:"])
def test_bad_specs_are_one_sentence(text):
    with pytest.raises(DataError, match=r"^dataset 'x"):
        parse_spec(text)


def test_split_specs_flattens_commas_and_lists():
    assert split_specs(["a,b", " c ", ""]) == ["a", "b", "c"]
    assert split_specs("a") == ["a"] and split_specs(None) == []


def test_parse_columns_json_and_pairs():
    assert parse_columns('{"q": "prompt", "junk": null}') == {"q": "prompt", "junk": None}
    assert parse_columns("q=prompt, good=chosen,bad=rejected,junk=") == {"q": "prompt", "good": "chosen", "bad": "rejected", "junk": None}
    assert parse_columns(None) is None
    with pytest.raises(ConfigError, match="no '='"):
        parse_columns("q:prompt")
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_columns('{"q": prompt}')
    with pytest.raises(ConfigError, match="which no row shape uses"):
        parse_columns("q=prompts")


# ------------------------------------------------------------------ local files


def test_bundled_set_and_backwards_compatible_loader():
    ds = sources.load_preference_data("tiny-prefs", "train")
    assert len(ds) == 600 and set(ds.column_names) == {"prompt", "chosen", "rejected"}
    assert len(sources.load_preference_data("tiny-prefs", "test")) == 100


def test_bad_row_names_row_and_line_and_count(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD, GOOD, GOOD, {"prompt": "hi", "chosen": "same", "rejected": "same"}])
    with pytest.raises(DataError) as err:
        load_sources(path)
    message = str(err.value)
    assert message.startswith("row 3 (line 4): field 'rejected' is identical to chosen")
    assert "1 of 4 rows are bad" in message and "--skip_bad_rows" in message
    data = load_sources(path, skip_bad_rows=True)
    assert len(data.dataset) == 3
    assert data.skipped_summary().startswith("dropped 1 bad row (--skip_bad_rows); first: row 3 (line 4)")


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ('{"prompt": "x",', "is not valid JSON"),
        ('["prompt", "chosen"]', "holds a JSON list, not an object"),
    ],
)
def test_broken_jsonl_line_is_reported_by_line_number(tmp_path, bad_line, problem):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD, "", bad_line, GOOD])  # line 2 is blank
    with pytest.raises(DataError) as err:
        load_sources(path)
    assert f"p.jsonl line 3 {problem}" in str(err.value) and "(1 in all)" in str(err.value)
    data = load_sources(path, skip_bad_rows=True)
    assert len(data.dataset) == 2 and "1 broken JSON line" in data.skipped_summary()
    assert data.parts[0].line_of(1)[1] == 4  # rows still map to their lines in the original file


def test_broken_json_array_file_gives_line(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[\n {"prompt": "a", "chosen": "b", "rejected": "c"},\n {"prompt": "a" "chosen": "b"}\n]\n')
    with pytest.raises(DataError, match=r"p.json is not valid JSON at line 3"):
        load_sources(str(path), skip_bad_rows=True)


def test_missing_file_and_bad_extension(tmp_path):
    with pytest.raises(DataError, match="'missing.jsonl' does not exist"):
        load_sources("missing.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="extension '.txt'"):
        load_sources(str(tmp_path / "x.txt"))


def test_csv_parquet_and_folder_splits(tmp_path):
    folder = tmp_path / "prefs"
    folder.mkdir()
    datasets.Dataset.from_list(numbered(6)).to_parquet(str(folder / "train-00000.parquet"))
    datasets.Dataset.from_list(numbered(2)).to_parquet(str(folder / "test-00000.parquet"))
    assert len(load_sources(str(folder)).dataset) == 6
    assert len(load_sources(str(folder), "test").dataset) == 2
    assert len(load_sources(f"{folder}@test").dataset) == 2
    with pytest.raises(DataError, match="has no 'validation' split; found: test, train"):
        load_sources(str(folder), "validation")
    csv = tmp_path / "p.csv"
    datasets.Dataset.from_list(numbered(3)).to_csv(str(csv))
    assert len(load_sources(str(csv)).dataset) == 3
    with pytest.raises(DataError, match="single file, so it has only the split 'train'"):
        load_sources(str(csv), "test")


# -------------------------------------------------------------------- sampling


def test_sampling_is_seeded_and_keeps_row_origins(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", numbered(20))
    a, b = load_sources(f"{path}#5", seed=1), load_sources(f"{path}#5", seed=1)
    assert a.dataset["prompt"] == b.dataset["prompt"] and len(a.dataset) == 5
    assert load_sources(f"{path}#5", seed=2).dataset["prompt"] != a.dataset["prompt"]
    first = int(a.dataset[0]["prompt"][1:])
    assert a.describe_row(0) == f"row {first} (line {first + 1})"


def test_oversampling_repeats_whole_copies_and_says_so(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", numbered(3))
    data = load_sources(f"{path}#7")
    assert len(data.dataset) == 7
    assert sorted(data.dataset["prompt"][:6]) == sorted(["q0", "q1", "q2"] * 2)
    assert "rows repeat (2 whole copies + 1 sampled)" in data.notes[0]


# ---------------------------------------------------------------------- mixing


def test_mixing_same_columns_concatenates(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", numbered(3))
    b = write_jsonl(tmp_path / "b.jsonl", numbered(2))
    data = load_sources([f"{a},{b}"])
    assert len(data.dataset) == 5 and data.notes == []
    assert data.describe_row(4) == "row 1 of " + b + " (line 2)"


def test_mixing_shapes_normalises_and_says_when_strings_become_messages(tmp_path):
    emoji = write_jsonl(tmp_path / "emoji.jsonl", [{"question": "你是谁？", "answer_zh": "👋 我是助手！", "answer_en": "I am an assistant."}])
    plain = write_jsonl(tmp_path / "plain.jsonl", numbered(2))
    data = load_sources([emoji, plain])
    assert set(data.dataset.column_names) == {"prompt", "chosen", "rejected"}
    assert data.dataset[0]["chosen"] == [{"role": "assistant", "content": "👋 我是助手！"}]
    assert data.dataset[2]["prompt"] == [{"role": "user", "content": "q1"}]
    assert any("plain pairs become one user and one assistant message" in n for n in data.notes)


def test_bad_row_in_a_mix_names_its_source(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", numbered(2))
    b = write_jsonl(tmp_path / "b.jsonl", [GOOD, {"prompt": "x", "chosen": None, "rejected": "y"}])
    with pytest.raises(DataError, match=r"^row 1 of .*b\.jsonl \(line 2\): field 'chosen' is None"):
        load_sources([a, b])
    data = load_sources([a, b], skip_bad_rows=True)
    assert len(data.dataset) == 3 and data.n_bad_skipped == 1


# --------------------------------------------------------------------- columns


def test_columns_rename_drop_and_mapped_column_wins(tmp_path):
    rows = [{"q": "hi", "good": "yes please", "bad": "no", "prompt": "ignored", "junk": 1}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    data = load_sources(path, columns=parse_columns("q=prompt,good=chosen,bad=rejected,junk="))
    assert data.dataset.column_names == ["prompt", "chosen", "rejected"] or set(data.dataset.column_names) == {"prompt", "chosen", "rejected"}
    assert data.dataset[0]["prompt"] == "hi"
    with pytest.raises(DataError, match="has no column 'question' named in --columns"):
        load_sources(path, columns={"question": "prompt"})


def test_columns_on_registry_only_is_an_error():
    with pytest.raises(ConfigError, match="--columns renames columns of data sets outside the registry"):
        load_sources("hh-rlhf", columns={"q": "prompt"})


# -------------------------------------------------------------------- registry


@pytest.fixture
def fake_hub(monkeypatch):
    """datasets.load_dataset answering from local rows, recording what was asked."""
    calls, tables = [], {}

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split, kwargs))
        if (path, split) not in tables:
            raise ValueError(f'Unknown split "{split}". Should be one of {sorted(s for p, s in tables if p == path)}.')
        return datasets.Dataset.from_list(tables[(path, split)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(sources, "hub_split_names", lambda name, config=None: sorted(s for p, s in tables if p == name))
    return calls, tables


def test_registry_entry_loads_from_hub_id_with_preprocessor(fake_hub):
    calls, tables = fake_hub
    tables[("Anthropic/hh-rlhf", "train")] = [{"chosen": "\n\nHuman: hi\n\nAssistant: hello!", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}] * 3
    tables[("Anthropic/hh-rlhf", "test")] = [{"chosen": "\n\nHuman: yo\n\nAssistant: hey!", "rejected": "\n\nHuman: yo\n\nAssistant: no"}]
    train, evaluation = train_and_eval("hh-rlhf")
    assert calls[0][:3] == ("Anthropic/hh-rlhf", None, "train")
    assert train.dataset[0]["chosen"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}]
    assert len(evaluation.dataset) == 1  # the registry's test split, found without being asked


def test_registry_default_splits_and_data_files(fake_hub):
    calls, tables = fake_hub
    row = {"prompt": "p", "prompt_id": "1", "chosen": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "a"}],
           "rejected": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "b"}], "score_chosen": 1.0, "score_rejected": 0.0}
    tables[("HuggingFaceH4/ultrafeedback_binarized", "train_prefs")] = [row] * 2
    tables[("HuggingFaceH4/ultrafeedback_binarized", "test_prefs")] = [row]
    train, evaluation = train_and_eval("HuggingFaceH4/ultrafeedback_binarized")
    assert [c[2] for c in calls] == ["train_prefs", "test_prefs"] and len(evaluation.dataset) == 1
    tables[("shareAI/DPO-zh-en-emoji", "train")] = [{"question": "q", "answer_zh": "好", "answer_en": "ok"}]
    data = load_sources("shareai-llama3-dpo-zh-en-emoji")
    assert calls[-1][3]["data_files"][0] == "0_dpo_loji.jsonl"
    assert data.dataset[0]["prompt"] == [{"role": "user", "content": "q"}]


def test_unknown_split_and_offline_hub_are_one_sentence(fake_hub, monkeypatch):
    calls, tables = fake_hub
    tables[("someone/prefs", "train")] = [GOOD]
    with pytest.raises(DataError, match=r"could not load dataset 'someone/prefs' \(split 'dev'\): Unknown split \"dev\""):
        load_sources("someone/prefs@dev")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'trl-lib/ultrafeedback_binarized' on the Hub (OfflineModeIsEnabled)\nmore lines")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as err:
        load_sources("ultrafeedback-binarized")
    assert "\n" not in str(err.value) and "OfflineModeIsEnabled" in str(err.value) and "local copy" in str(err.value)
    with pytest.raises(DataError, match="did you mean hh-rlhf"):
        load_sources("hh-rlfh")


# --------------------------------------------------------------- eval data


def test_eval_from_ratio_is_seeded_and_disjoint(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", numbered(20))
    train, evaluation = train_and_eval(path, split_ratio=0.1, seed=3)
    assert len(train.dataset) == 18 and len(evaluation.dataset) == 2
    assert not set(train.dataset["prompt"]) & set(evaluation.dataset["prompt"])
    assert train_and_eval(path, split_ratio=0.1, seed=3)[1].dataset["prompt"] == evaluation.dataset["prompt"]
    held = evaluation.dataset[0]["prompt"]
    assert evaluation.describe_row(0) == f"row {held[1:]} (line {int(held[1:]) + 1})"


def test_eval_sources_and_conflicts(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", numbered(4))
    other = write_jsonl(tmp_path / "o.jsonl", numbered(2))
    assert train_and_eval(path)[1] is None  # a single file has no test split
    assert len(train_and_eval(path, eval_dataset=[other])[1].dataset) == 2
    assert len(train_and_eval("tiny-prefs#10")[1].dataset) == 10  # bundled test split, sampled alike
    with pytest.raises(ConfigError, match="either --eval_dataset or --split_dataset_ratio"):
        train_and_eval(path, eval_dataset=[other], split_ratio=0.5)
    with pytest.raises(ConfigError, match="must be between 0 and 1"):
        train_and_eval(path, split_ratio=1.5)
    with pytest.raises(ConfigError, match="would leave no training rows"):
        train_and_eval(path, split_ratio=0.9)
