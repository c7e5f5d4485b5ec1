"""prepare_dataset: exact ids per row, dropped/truncated/bad counts, caching."""
import datasets
import pytest
from datasets import Features, Image, List, Value

from preftune.data.prepare import PrepareReport, _fingerprint, prepare_dataset
from preftune.data.tokenize import LengthLimits
from preftune.errors import ConfigError, DataError

from .tiny_tokenizers import V

EOS, IMS, IME, NL = V["</s>"], V["<|im_start|>"], V["<|im_end|>"], V["\n"]
NO_LIMITS = LengthLimits(None, None, None)


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def ids(text):
    return [V[w] for w in text.split()]


def test_conversational_dataset_exact_ids(chatml):
    ds = datasets.Dataset.from_list(
        [
            {"chosen": [u("hello"), a("fine")], "rejected": [u("hello"), a("bad")], "source": "x"},
            {"chosen": [u("how are you"), a("good")], "rejected": [u("how are you"), a("no")], "source": "y"},
        ]
    )
    out, report = prepare_dataset(ds, chatml, NO_LIMITS)
    assert out.column_names == ["prompt_ids", "chosen_ids", "rejected_ids"]
    prompt_tail = [IME, NL, IMS, V["assistant"], NL]
    assert out[:] == {
        "prompt_ids": [
            [IMS, V["user"], NL, V["hello"]] + prompt_tail,
            [IMS, V["user"], NL, V["how"], V["are"], V["you"]] + prompt_tail,
        ],
        "chosen_ids": [[V["fine"], IME], [V["good"], IME]],
        "rejected_ids": [[V["bad"], IME], [V["no"], IME]],
    }
    assert report == PrepareReport(n_rows=2, n_kept=2, n_dropped_empty_after_truncation=0, n_truncated=0, n_bad_rows=0)
    assert report.summary() == "prepared 2 pairs: 0 truncated"


def test_truncated_and_dropped_are_counted(plain):
    rows = [
        {"prompt": "hello", "chosen": "fine", "rejected": "bad"},  # 1 + 2 <= 4: kept as is
        {"prompt": "hello world", "chosen": "fine thanks", "rejected": "bad"},  # 2 + 3 > 4: prompt fits, room 2
        {"prompt": "a b c d e", "chosen": "fine", "rejected": "bad"},  # 5 + 2 > 4: prompt -> last 3, room 1
        {"prompt": "a b c d", "chosen": "fine", "rejected": "bad"},  # 4 + 2 > 4: prompt -> last 3, room 1
    ]
    out, report = prepare_dataset(rows, plain, LengthLimits(max_length=4, max_prompt_length=3, truncation_mode="keep_end"))
    assert out[:] == {
        "prompt_ids": [ids("hello"), ids("hello world"), ids("c d e"), ids("b c d")],
        "chosen_ids": [ids("fine") + [EOS], ids("fine thanks"), ids("fine"), ids("fine")],
        "rejected_ids": [ids("bad") + [EOS], ids("bad") + [EOS], ids("bad"), ids("bad")],
    }
    assert (report.n_rows, report.n_kept, report.n_truncated, report.n_dropped_empty_after_truncation) == (4, 4, 3, 0)


def test_empty_after_truncation_is_dropped_and_counted(plain):
    rows = [
        {"prompt": "hello", "chosen": "fine", "rejected": "bad"},
        {"prompt": "a b c d", "chosen": "fine", "rejected": "bad"},  # prompt fills max_length
        {"prompt": "a b c d e f", "chosen": "fine", "rejected": "bad"},
    ]
    out, report = prepare_dataset(rows, plain, LengthLimits(max_length=4, max_prompt_length=None))
    assert out[:] == {"prompt_ids": [ids("hello")], "chosen_ids": [ids("fine") + [EOS]], "rejected_ids": [ids("bad") + [EOS]]}
    assert report == PrepareReport(n_rows=3, n_kept=1, n_dropped_empty_after_truncation=2, n_truncated=0, n_bad_rows=0,
                                   n_dropped_long_prompt=2)  # both prompts alone fill max_length: TRL drops them too
    assert report.summary() == (
        "prepared 1 of 3 pairs: 0 truncated, 2 dropped because the prompt alone fills --max_length, leaving no room "
        "for a completion (as TRL does; raise --max_length)"
    )


BAD_ROWS = [
    {"prompt": "hello", "chosen": "fine", "rejected": "bad"},
    {"prompt": "hello", "chosen": None, "rejected": "bad"},
    {"prompt": "hello", "chosen": "fine", "rejected": "fine"},
    {"prompt": "how", "chosen": "good", "rejected": "bad"},
]


def test_bad_rows_raise_with_first_index_and_count(plain):
    with pytest.raises(DataError) as e:
        prepare_dataset(datasets.Dataset.from_list(BAD_ROWS), plain, NO_LIMITS)
    assert str(e.value) == (
        "row 1: field 'chosen' is None; fill it in or drop the row "
        "(2 of 4 rows are bad; fix them, or set skip_bad_rows=True / --skip_bad_rows to drop them)."
    )


def test_skip_bad_rows(plain):
    out, report = prepare_dataset(BAD_ROWS, plain, NO_LIMITS, skip_bad_rows=True)
    assert out["prompt_ids"][:] == [ids("hello"), ids("how")]
    assert out["chosen_ids"][:] == [ids("fine") + [EOS], ids("good") + [EOS]]
    assert report == PrepareReport(
        n_rows=4,
        n_kept=2,
        n_dropped_empty_after_truncation=0,
        n_truncated=0,
        n_bad_rows=2,
        first_errors=(
            "row 1: field 'chosen' is None; fill it in or drop the row.",
            "row 2: field 'rejected' is identical to chosen; a preference pair needs two different completions; drop the row.",
        ),
    )
    assert report.summary() == (
        "prepared 2 of 4 pairs: 0 truncated, 2 bad rows skipped\n"
        "first bad row: row 1: field 'chosen' is None; fill it in or drop the row."
    )


def test_template_mismatch_is_a_bad_row(chatml):
    tok = chatml.__class__.from_pretrained(chatml.name_or_path)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}assistant {% endif %}"
    rows = [{"prompt": [u("hello")], "chosen": [a("fine")], "rejected": [a("bad")]}]
    with pytest.raises(DataError, match=r"^row 0: the chat template renders the prompt differently .* \(1 of 1 rows are bad;"):
        prepare_dataset(rows, tok, NO_LIMITS)


def test_missing_chat_template_is_a_config_error_even_when_skipping(plain):
    rows = [{"prompt": [u("hello")], "chosen": [a("fine")], "rejected": [a("bad")]}]
    with pytest.raises(ConfigError, match="no chat template"):
        prepare_dataset(rows, plain, NO_LIMITS, skip_bad_rows=True)


def test_columns_mapping_and_images_are_never_decoded(plain):
    features = Features({"pics": List(Image()), "q": Value("string"), "good": Value("string"), "worse": Value("string")})
    ds = datasets.Dataset.from_dict(
        {"pics": [[{"bytes": b"not an image", "path": None}]], "q": ["hello"], "good": ["fine"], "worse": ["bad"]},
        features=features,
    )
    columns = {"pics": "images", "q": "prompt", "good": "chosen", "worse": "rejected"}
    with pytest.raises(ConfigError, match=r"^The data has images \(column 'pics'\) but .* is a text tokenizer"):
        prepare_dataset(ds, plain, NO_LIMITS, columns=columns)  # found without decoding the (broken) image
    out, report = prepare_dataset(ds, plain, NO_LIMITS, columns=columns, ignore_images=True)  # `preftune data inspect`
    assert out[:] == {"prompt_ids": [ids("hello")], "chosen_ids": [ids("fine") + [EOS]], "rejected_ids": [ids("bad") + [EOS]]}


def test_nothing_left_and_empty_dataset(plain):
    with pytest.raises(DataError, match=r"^No pair is left to train on: prepared 0 of 1 pairs: 0 truncated, 1 dropped because"):
        prepare_dataset([{"prompt": "a b c", "chosen": "fine", "rejected": "bad"}], plain, LengthLimits(max_length=3, max_prompt_length=None))
    with pytest.raises(DataError, match=r"^The dataset has no rows"):
        prepare_dataset([], plain, NO_LIMITS)
    with pytest.raises(TypeError, match="datasets.Dataset or a list of dict rows"):
        prepare_dataset("rows.jsonl", plain, NO_LIMITS)


def test_list_row_that_is_not_a_mapping(plain):
    with pytest.raises(DataError, match=r"^row 1 is str, not a mapping"):
        prepare_dataset([{"prompt": "a", "chosen": "b", "rejected": "c"}, "oops"], plain, NO_LIMITS)


def test_cache_is_reused_exactly_when_inputs_match(plain, tmp_path):
    rows = [{"prompt": "hello", "chosen": "fine thanks", "rejected": "bad"}] * 4
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    first, _ = prepare_dataset(ds, plain, NO_LIMITS)
    again, _ = prepare_dataset(ds, plain, NO_LIMITS)
    other, _ = prepare_dataset(ds, plain, LengthLimits(max_length=2, max_prompt_length=1))
    assert first.cache_files == again.cache_files
    assert first.cache_files != other.cache_files
    assert other["chosen_ids"][:] == [ids("fine")] * 4
    assert _fingerprint(ds, plain, NO_LIMITS, None) == _fingerprint(ds, plain, NO_LIMITS, None)
    assert _fingerprint(ds, plain, NO_LIMITS, None) != _fingerprint(ds, plain, NO_LIMITS, {"x": "prompt"})


def test_num_proc_gives_the_same_result(plain):
    rows = [{"prompt": "hello", "chosen": "fine", "rejected": "bad"}, {"prompt": "how", "chosen": None, "rejected": "x"}] * 4
    ds = datasets.Dataset.from_list(rows)
    one, r1 = prepare_dataset(ds, plain, NO_LIMITS, skip_bad_rows=True)
    two, r2 = prepare_dataset(ds, plain, NO_LIMITS, skip_bad_rows=True, num_proc=2)
    assert one[:] == two[:]
    assert r1 == r2
    assert r2.n_bad_rows == 4 and r2.first_errors[0].startswith("row 1: ")


def test_bad_columns_mapping_fails_before_reading_rows(plain):
    with pytest.raises(ConfigError, match=r"^--columns maps 'good' to 'chosn'"):
        prepare_dataset([{"good": 1}], plain, NO_LIMITS, columns={"good": "chosn"})


def test_llama3_pairs_get_one_bos_through_prepare(llama3):
    BOT, EOT, SH, EH = V["<|begin_of_text|>"], V["<|eot_id|>"], V["<|start_header_id|>"], V["<|end_header_id|>"]
    rows = [
        {"question": "how are you", "answer_zh": "fine", "answer_en": "bad"},  # shareai emoji: conversational
    ]
    out, _ = prepare_dataset(rows, llama3, LengthLimits(max_length=10, max_prompt_length=5, truncation_mode="keep_end"))
    # prompt [BOT SH user EH how are you EOT SH assistant EH] (11 ids) is cut to BOT + its last 4 ids
    assert out[:] == {"prompt_ids": [[BOT, EOT, SH, V["assistant"], EH]], "chosen_ids": [[V["fine"], EOT]], "rejected_ids": [[V["bad"], EOT]]}


def test_rows_checked_when_loaded_are_not_normalised_again(monkeypatch):
    """The pairs loading made (`LoadedData.pairs`) are tokenized as they are: no row goes through
    `to_preference_pair` a second time, and the ids equal those of normalising the rows afresh."""
    from transformers import AutoTokenizer

    import preftune.data.prepare as prepare
    from preftune.assets import tiny_model_path
    from preftune.data.sources import load_sources

    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    loaded = load_sources(["tiny-prefs#12"], split="train", seed=3)
    assert loaded.pairs is not None and len(loaded.pairs) == len(loaded.dataset) == 12
    calls = []
    real = prepare.to_preference_pair
    monkeypatch.setattr(prepare, "to_preference_pair", lambda *a, **k: calls.append(1) or real(*a, **k))
    limits = LengthLimits(256, 128)
    afresh, _ = prepare_dataset(datasets.Dataset.from_list(loaded.dataset.to_list()), tok, limits)
    assert len(calls) == 12
    once, _ = prepare_dataset(loaded.dataset, tok, limits, pairs=loaded.pairs)
    assert len(calls) == 12  # none more
    assert once[:] == afresh[:]
    with pytest.raises(ValueError, match="3 pairs for a data set of 12 rows"):
        prepare_dataset(loaded.dataset, tok, limits, pairs=loaded.pairs[:3])
