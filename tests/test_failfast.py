"""Fail fast: every problem a run can know before it loads the model's weights stops it there, in one line.

Order of the checks in `preftune.cli.train.train`: flags -> output folder -> model config
(config.json only) -> data rows -> tokenizer and chat template -> weights. Each test
makes the later stages fail loudly if they are reached (monkeypatched), so an
error that comes from the right stage is the only way to pass. Everything runs
in-process through `preftune.cli.main`, which returns 2 for a user error.
"""
import json
import os
import shutil

import pytest

import preftune.data.sources
import preftune.models
from preftune import cli
from preftune.assets import tiny_dataset_files, tiny_model_path


class Reached(Exception):
    """A stage the run should not have got to (or, for the runs that pass every check, the weights)."""


def _fail(stage):
    def fail(*args, **kwargs):
        raise Reached(stage)

    return fail


@pytest.fixture
def no_weights(monkeypatch):
    """Loading weights raises Reached("weights"), by preftune's loader or by transformers directly."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(preftune.models, "load_model", _fail("weights"))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", _fail("weights"))


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _pairs_file(folder, n=8):
    lines = open(tiny_dataset_files()["train"], encoding="utf-8").read().splitlines()[:n]
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _error(capsys, code):
    """The one `preftune: error:` line of a run that returned `code` (2), with no traceback."""
    assert code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("preftune: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0][len("preftune: error: "):]


def _run(*flags):
    return cli.main(["orpo", "--report_to", "none", "--use_cpu", "true", *flags])


# ------------------------------------------------------------ output folder


def test_non_empty_output_folder_is_refused_before_anything_loads(here, capsys, monkeypatch):
    monkeypatch.setattr(preftune.models, "check_model_config", _fail("model config"))
    (here / "out").mkdir()
    (here / "out" / "model.safetensors").write_text("a previous run")
    message = _error(capsys, _run("--model", tiny_model_path(), "--dataset", _pairs_file(here), "--output_dir", "out"))
    assert message.startswith("output folder 'out' already holds files (a previous run?); pass --overwrite_output_dir")
    assert "--resume_from_checkpoint true" in message and "another --output_dir" in message
    assert os.listdir(here / "out") == ["model.safetensors"]


@pytest.mark.parametrize("flag", [["--overwrite_output_dir"], ["--overwrite_output_dir", "true"]])
def test_overwrite_output_dir_lets_the_run_go_on(here, no_weights, flag):
    (here / "out").mkdir()
    (here / "out" / "notes.txt").write_text("x")
    with pytest.raises(Reached, match="weights"):  # every check passed
        _run("--model", tiny_model_path(), "--dataset", _pairs_file(here), "--output_dir", "out", *flag)


def test_resuming_into_a_non_empty_output_folder_is_allowed(here, no_weights):
    from preftune.train import checkpoints

    folder = here / "out" / "checkpoint-2"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    checkpoints.mark_complete(str(folder), 2)
    with pytest.raises(Reached, match="weights"):
        _run("--model", tiny_model_path(), "--dataset", _pairs_file(here), "--output_dir", "out",
             "--resume_from_checkpoint", "true")


def test_resume_with_nothing_to_resume_fails_before_the_weights(here, capsys, no_weights):
    (here / "out").mkdir()
    (here / "out" / "preftune_config.json").write_text("{}")
    message = _error(capsys, _run("--model", tiny_model_path(), "--dataset", _pairs_file(here), "--output_dir", "out",
                                  "--resume_from_checkpoint", "true"))
    assert "holds no complete checkpoint" in message


def test_unwritable_output_folder(here, capsys, monkeypatch):
    monkeypatch.setattr(preftune.models, "check_model_config", _fail("model config"))
    (here / "a-file").write_text("not a folder")
    message = _error(capsys, _run("--model", tiny_model_path(), "--dataset", _pairs_file(here),
                                  "--output_dir", "a-file/out"))
    assert message == "cannot write to output folder 'a-file/out': Not a directory."


# ------------------------------------------------------------------- model


def test_missing_local_model_fails_before_the_data_is_read(here, capsys, monkeypatch):
    monkeypatch.setattr(preftune.data.sources, "train_and_eval", _fail("data"))
    message = _error(capsys, _run("--model", str(here / "no-such-model"), "--dataset", _pairs_file(here),
                                  "--output_dir", "out"))
    assert message == f"model path {str(here / 'no-such-model')!r} does not exist; pass a local model folder or a hub id."


@pytest.mark.parametrize("model", ["not-a-model", "./not-a-model"])
def test_folder_without_a_model_fails_before_the_data(here, capsys, monkeypatch, model):
    monkeypatch.setattr(preftune.data.sources, "train_and_eval", _fail("data"))
    (here / "not-a-model").mkdir()
    (here / "not-a-model" / "notes.txt").write_text("hello")
    # the data set is missing too: the model's error comes first
    message = _error(capsys, _run("--model", model, "--dataset", "missing.jsonl", "--output_dir", "out"))
    assert message.startswith(f"model {model!r} cannot be used:") and "config.json" in message
    assert "missing.jsonl" not in message


# -------------------------------------------------------------------- data


def test_bad_row_fails_before_the_weights(here, capsys, no_weights):
    rows = [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go."}] * 3 + [{"prompt": "Hi", "chosen": None, "rejected": "Go."}]
    (here / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    message = _error(capsys, _run("--model", tiny_model_path(), "--dataset", "bad.jsonl", "--output_dir", "out"))
    assert message.startswith("row 3 (line 4): field 'chosen'") and "--skip_bad_rows" in message


def test_broken_json_line_fails_before_the_weights(here, capsys, no_weights):
    (here / "broken.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", \n')
    message = _error(capsys, _run("--model", tiny_model_path(), "--dataset", "broken.jsonl", "--output_dir", "out"))
    assert message.startswith("broken.jsonl line 2 is not valid JSON")


def test_skip_bad_rows_goes_on_with_the_good_ones(here, capsys, no_weights):
    rows = [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go."}] * 3 + [{"prompt": "Hi", "chosen": 7, "rejected": "Go."}]
    (here / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(Reached, match="weights"):
        _run("--model", tiny_model_path(), "--dataset", "bad.jsonl", "--output_dir", "out", "--skip_bad_rows", "true")
    assert "dropped 1 bad row (--skip_bad_rows)" in capsys.readouterr().out


def test_conversational_data_and_a_tokenizer_without_chat_template(here, capsys, no_weights):
    model = here / "no-template"
    shutil.copytree(tiny_model_path(), model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    for name in ("chat_template.jinja", "chat_template.json"):
        if (model / name).exists():
            (model / name).unlink()
    # tiny-prefs is conversational (message lists)
    message = _error(capsys, _run("--model", str(model), "--dataset", _pairs_file(here), "--output_dir", "out"))
    assert "the tokenizer has no chat template" in message and "setup_chat_format" in message


# ---------------------------------------------------------- default folder


def test_demo_default_output_folder_moves_on_when_taken(here):
    assert cli.parse_run("orpo", []).config.output_dir == os.path.join("outputs", "orpo-tiny-llama")
    (here / "outputs" / "orpo-tiny-llama").mkdir(parents=True)  # empty: still free
    assert cli.parse_run("orpo", []).config.output_dir == os.path.join("outputs", "orpo-tiny-llama")
    (here / "outputs" / "orpo-tiny-llama" / "model.safetensors").write_text("x")
    assert cli.parse_run("orpo", []).config.output_dir == os.path.join("outputs", "orpo-tiny-llama-2")
    (here / "outputs" / "orpo-tiny-llama-2").mkdir()
    (here / "outputs" / "orpo-tiny-llama-2" / "x").write_text("x")
    assert cli.parse_run("orpo", []).config.output_dir == os.path.join("outputs", "orpo-tiny-llama-3")
    # resuming continues the first; an explicit folder is taken as given
    assert cli.parse_run("orpo", ["--resume_from_checkpoint", "true"]).config.output_dir == os.path.join("outputs", "orpo-tiny-llama")
    assert cli.parse_run("orpo", ["--output_dir", "mine"]).config.output_dir == "mine"
    assert cli.parse_run("dpo", ["--dataset", "x.jsonl"]).config.output_dir == os.path.join("outputs", "dpo-run")


def test_demo_run_with_a_taken_default_folder_passes_the_checks(here, no_weights):
    (here / "outputs" / "orpo-tiny-llama").mkdir(parents=True)
    (here / "outputs" / "orpo-tiny-llama" / "model.safetensors").write_text("x")
    with pytest.raises(Reached, match="weights"):
        cli.main(["orpo", "--report_to", "none"])
    assert (here / "outputs" / "orpo-tiny-llama-2").is_dir()
    assert os.listdir(here / "outputs" / "orpo-tiny-llama") == ["model.safetensors"]
