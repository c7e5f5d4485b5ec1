"""Safe defaults: no code from a model or data folder runs unless asked, no pickle runs, no token is written down.

Every "this would run code" case plants a payload that creates a sentinel file when
it runs, and a control test shows the payload does create it when it is allowed to
run, so "the sentinel does not exist" means something.
"""
import builtins
import inspect
import json
import os
import shutil

import pytest
import torch

import preftune.models
from preftune import cli
from preftune.assets import tiny_dataset_files, tiny_model_path
from preftune.data.sources import load_preference_data, load_sources
from preftune.errors import ConfigError, DataError



def _pairs_file(folder, n=8, name="pairs.jsonl"):
    lines = open(tiny_dataset_files()["train"], encoding="utf-8").read().splitlines()[:n]
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _one_line_error(capsys, code):
    assert code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("preftune: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------- remote code


def _custom_code_model(folder, sentinel, model_type="sentinel_arch"):
    """A model folder whose config.json (and tokenizer config) point at custom code that creates `sentinel`."""
    shutil.copytree(tiny_model_path(), folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type=model_type, architectures=["SentinelModel"],
                  auto_map={"AutoConfig": "custom.SentinelConfig", "AutoModelForCausalLM": "custom.SentinelModel"})
    (folder / "config.json").write_text(json.dumps(config))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok.update(auto_map={"AutoTokenizer": ["custom.SentinelTokenizer", None]}, tokenizer_class="SentinelTokenizer")
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    (folder / "custom.py").write_text(
        f"open({str(sentinel)!r}, 'w').write('custom code ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast\n"
        f"class SentinelConfig(LlamaConfig):\n    model_type = {model_type!r}\n"
        "class SentinelModel(LlamaForCausalLM):\n    config_class = SentinelConfig\n"
        "class SentinelTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    return str(folder)


def test_loaders_never_trust_remote_code_by_default():
    assert inspect.signature(preftune.models.check_model_config).parameters["trust_remote_code"].default is False
    tok = inspect.signature(preftune.models.load_tokenizer).parameters.get("trust_remote_code")
    assert tok is None or tok.default is False


def test_what_reaches_from_pretrained(monkeypatch):
    """Spy on transformers: trust_remote_code is never True unless the caller asked for it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    seen = []
    for cls in (AutoConfig, AutoModelForCausalLM, AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, _name=cls.__name__, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    preftune.models.check_model_config(tiny_model_path())
    preftune.models.load_tokenizer(tiny_model_path())
    preftune.models.load_model(tiny_model_path())
    assert {name for name, _ in seen} >= {"AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"}
    assert all(value is not True for _, value in seen), seen
    seen.clear()
    preftune.models.load_model(tiny_model_path(), {"trust_remote_code": True})  # asked: passed on
    assert ("AutoModelForCausalLM", True) in seen


def test_custom_code_control_the_payload_runs_when_trusted(tmp_path):
    from transformers import AutoConfig

    sentinel = tmp_path / "SENTINEL"
    path = _custom_code_model(tmp_path / "model", sentinel)
    AutoConfig.from_pretrained(path, trust_remote_code=True)
    assert sentinel.exists()


def test_custom_code_model_is_refused_in_one_line_and_never_runs(tmp_path, monkeypatch, capsys):
    sentinel = tmp_path / "SENTINEL"
    path = _custom_code_model(tmp_path / "model", sentinel)
    monkeypatch.setattr(builtins, "input", lambda *a: pytest.fail("asked on stdin whether to run custom code"))
    with pytest.raises(ConfigError) as err:
        preftune.models.check_model_config(path)
    assert "\n" not in str(err.value) and "custom code" in str(err.value)
    with pytest.raises(ConfigError):
        preftune.models.load_tokenizer(path)
    monkeypatch.chdir(tmp_path)
    message = _one_line_error(capsys, cli.main(["orpo", "--model", path, "--dataset", str(_pairs_file(tmp_path)),
                                                "--output_dir", "out", "--report_to", "none"]))
    assert message.startswith(f"preftune: error: model {path!r} cannot be used: ") and "custom code" in message
    assert not sentinel.exists()


def test_load_model_never_asks_on_stdin(tmp_path, monkeypatch):
    sentinel = tmp_path / "SENTINEL"
    path = _custom_code_model(tmp_path / "model", sentinel)
    asked = []
    monkeypatch.setattr(builtins, "input", lambda *a: asked.append(a) or "y")
    try:
        with pytest.raises(ConfigError) as err:
            preftune.models.load_model(path)
        assert "\n" not in str(err.value)
    finally:
        assert not asked and not sentinel.exists()


def test_known_architecture_with_auto_map_loads_the_builtin_class_without_running_code(tmp_path):
    from transformers import LlamaForCausalLM

    sentinel = tmp_path / "SENTINEL"
    path = _custom_code_model(tmp_path / "model", sentinel, model_type="llama")
    preftune.models.check_model_config(path)
    model = preftune.models.load_model(path)
    assert type(model) is LlamaForCausalLM
    assert not sentinel.exists()


# -------------------------------------------------------------- pickles


class _Payload:
    """Unpickling this creates the sentinel file (as os.system('touch ...') would, without a shell)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def _pickle_model(folder, sentinel):
    folder.mkdir()
    shutil.copy(os.path.join(tiny_model_path(), "config.json"), folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tiny_model_path(), name), folder)
    torch.save({"model.embed_tokens.weight": _Payload(sentinel)}, folder / "pytorch_model.bin")
    return str(folder)


def test_pickle_control_the_payload_runs_when_unpickled_unsafely(tmp_path):
    sentinel = tmp_path / "SENTINEL"
    path = _pickle_model(tmp_path / "model", sentinel)
    torch.load(os.path.join(path, "pytorch_model.bin"), weights_only=False)
    assert sentinel.exists()


def test_malicious_pickle_weights_never_run(tmp_path):
    sentinel = tmp_path / "SENTINEL"
    path = _pickle_model(tmp_path / "model", sentinel)
    with pytest.raises(Exception):
        preftune.models.load_model(path)
    assert not sentinel.exists()


def test_malicious_pickle_weights_fail_in_one_sentence(tmp_path, monkeypatch, capsys):
    sentinel = tmp_path / "SENTINEL"
    path = _pickle_model(tmp_path / "model", sentinel)
    with pytest.raises(ConfigError) as err:
        preftune.models.load_model(path)
    assert "\n" not in str(err.value) and "weights" in str(err.value)
    monkeypatch.chdir(tmp_path)
    _one_line_error(capsys, cli.main(["orpo", "--model", path, "--dataset", str(_pairs_file(tmp_path)),
                                      "--output_dir", "out", "--report_to", "none"]))
    assert not sentinel.exists()


# ------------------------------------------------------- data scripts


def test_dataset_folder_loading_script_never_runs(tmp_path):
    sentinel = tmp_path / "SENTINEL"
    folder = tmp_path / "mydata"
    folder.mkdir()
    script = f"open({str(sentinel)!r}, 'w').write('dataset script ran')\n"
    for name in ("mydata.py", "__init__.py"):  # datasets' old convention: a script named after the folder
        (folder / name).write_text(script)
    _pairs_file(folder, n=5, name="train.jsonl")
    ds = load_preference_data(str(folder))
    assert len(ds) == 5 and set(ds.column_names) >= {"prompt", "chosen", "rejected"}
    assert len(load_sources(str(folder), check_rows=True).dataset) == 5
    with pytest.raises(DataError, match=r"has extension '\.py'"):
        load_preference_data(str(folder / "mydata.py"))
    only_script = tmp_path / "only-script"
    only_script.mkdir()
    (only_script / "only-script.py").write_text(script)
    with pytest.raises(DataError, match="holds no .json, .jsonl, .csv or .parquet file"):
        load_preference_data(str(only_script))
    assert not sentinel.exists()


def test_script_control_importing_it_would_create_the_sentinel(tmp_path):
    sentinel = tmp_path / "SENTINEL"
    exec(f"open({str(sentinel)!r}, 'w').write('ran')")
    assert sentinel.exists()


# ---------------------------------------------------------------- tokens


def _files_holding(folder, secrets):
    found = []
    for root, _, files in os.walk(folder):
        for name in files:
            data = open(os.path.join(root, name), "rb").read()
            found += [(os.path.relpath(os.path.join(root, name), folder), s) for s in secrets if s.encode() in data]
    return found


def _token_run(tmp_path, monkeypatch, *extra):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_TOKEN", "ENVSECRET789")
    data = _pairs_file(tmp_path)
    return cli.main(["orpo", "--model", tiny_model_path(), "--dataset", str(data), "--output_dir", "out",
                     "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1",
                     "--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu", "true", *extra])


@pytest.mark.parametrize("flag", [["--hub_token", "SECRETTOKEN123"], ["--hub_token=SECRETTOKEN123"]])
def test_hub_token_is_never_written_or_printed(tmp_path, monkeypatch, capfd, flag):
    assert _token_run(tmp_path, monkeypatch, *flag) == 0
    out, err = capfd.readouterr()
    for secret in ("SECRETTOKEN123", "ENVSECRET789"):
        assert secret not in out and secret not in err
    folder = tmp_path / "out"
    written = {os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs}
    assert {"preftune_config.json", "preftune_command.json", "training_args.bin", "README.md",
            "checkpoint-2/trainer_state.json", "checkpoint-2/training_args.bin"} <= written
    assert _files_holding(folder, ["SECRETTOKEN123", "ENVSECRET789"]) == []
    assert json.loads((folder / "preftune_config.json").read_text()).get("hub_token") in (None, "<HUB_TOKEN>")


def test_token_in_model_init_kwargs_is_never_written(tmp_path, monkeypatch, capfd):
    code = _token_run(tmp_path, monkeypatch, "--model_init_kwargs", '{"token": "SECRETKWARG456"}')
    out, err = capfd.readouterr()
    assert code == 0, err[-2000:]
    assert "SECRETKWARG456" not in out + err
    assert _files_holding(tmp_path / "out", ["SECRETKWARG456"]) == []
