"""What a finished run leaves behind: report files, eval generations, tracker logs, the hub upload, --merge."""
import glob
import json
import os

import pytest
import torch
import yaml
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from preftune import DPOConfig, DPOTrainer, ORPOConfig, ORPOTrainer
from preftune.assets import tiny_model_path
from preftune.cli import main as cli_main
from preftune.data.sources import load_preference_data
from preftune.outputs.generations import GENERATIONS_FILE, generate_from_ids, pick_prompts


def tiny():
    return AutoModelForCausalLM.from_pretrained(tiny_model_path()), AutoTokenizer.from_pretrained(tiny_model_path())


def pairs(split="train", n=16):
    return load_preference_data("tiny-prefs", split).select(range(n))


def lora():
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")


def _files(folder):
    return sorted(os.path.relpath(p, folder) for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                  if os.path.isfile(p))


def test_generate_during_eval_logs_policy_and_reference_answers(tmp_path):
    model, tok = tiny()
    args = DPOConfig(output_dir=str(tmp_path), max_steps=4, eval_strategy="steps", eval_steps=2, learning_rate=5e-3,
                     per_device_train_batch_size=4, save_strategy="no", report_to="tensorboard",
                     generate_during_eval=True, generation_num_prompts=2, generation_max_new_tokens=12)
    trainer = DPOTrainer(model=model, args=args, processing_class=tok, train_dataset=pairs(),
                         eval_dataset=pairs("test", 8), peft_config=lora())
    trainer.train()
    rows = [json.loads(line) for line in open(tmp_path / GENERATIONS_FILE)]
    assert [r["step"] for r in rows] == [2, 2, 4, 4]
    prompts = pick_prompts(trainer.eval_dataset, 2)
    assert [r["prompt"] for r in rows[:2]] == [tok.decode(p) for p in prompts]
    # the logged answers are the policy's greedy answers at that step; at the end, the final policy's
    assert [r["policy"] for r in rows[2:]] == generate_from_ids(trainer.model, tok, prompts, 12)
    with trainer.model.disable_adapter():  # the reference: the base model, unchanged by training
        assert [r["reference"] for r in rows[2:]] == generate_from_ids(trainer.model, tok, prompts, 12)
    base, _ = tiny()
    assert [r["reference"] for r in rows[:2]] == generate_from_ids(base, tok, prompts, 12)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = glob.glob(str(tmp_path / "runs" / "*"))
    acc = EventAccumulator(events, size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    assert "eval/rewards/accuracies" in acc.Tags()["scalars"]
    text = [t for t in acc.Tags()["tensors"] if "generations" in t]
    assert text, acc.Tags()
    logged = acc.Tensors(text[0])
    assert [e.step for e in logged] == [2, 4]
    assert rows[2]["policy"].split()[0] in logged[-1].tensor_proto.string_val[0].decode()


def test_report_files_after_train_and_save_model(tmp_path):
    model, tok = tiny()
    args = ORPOConfig(output_dir=str(tmp_path), max_steps=4, logging_steps=1, eval_strategy="steps", eval_steps=2,
                      learning_rate=5e-4, per_device_train_batch_size=4, save_strategy="no", report_to="none",
                      hub_token="hf_SECRETtoken123")
    trainer = ORPOTrainer(model=model, args=args, processing_class=tok, train_dataset=pairs(), eval_dataset=pairs("test", 8))
    trainer.train()
    trainer.save_model()
    files = set(_files(tmp_path))
    assert {"metrics.jsonl", "training_curves.png", "README.md", "model.safetensors", "preftune_config.json"} <= files
    history = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert history == json.loads(json.dumps(trainer.state.log_history))
    assert open(tmp_path / "training_curves.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    card = open(tmp_path / "README.md").read()
    front = yaml.safe_load(card.split("---")[1])
    assert "orpo" in front["tags"] and front["library_name"] == "transformers"
    final_eval = [e for e in trainer.state.log_history if "eval_loss" in e][-1]
    assert f"{final_eval['eval_rewards/accuracies']:.4f}" in card
    for name in files:  # the token never lands in any file, pickled training_args.bin included
        assert b"SECRETtoken123" not in open(tmp_path / name, "rb").read(), name


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records what would be created and uploaded."""

    def __init__(self):
        self.repos, self.uploads = [], []

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False, **kw):
        self.repos.append((repo_id, private))

        class Url:
            pass

        url = Url()
        url.repo_id = repo_id
        return url

    def upload_folder(self, repo_id, folder_path, ignore_patterns=(), token=None, run_as_future=False, **kw):
        import fnmatch

        names = [n for n in _files(folder_path)
                 if not any(fnmatch.fnmatch(n.split(os.sep)[0], pat) for pat in ignore_patterns)]
        contents = {n: open(os.path.join(folder_path, n), "rb").read() for n in names}
        self.uploads.append({"repo_id": repo_id, "files": contents, "token": token})
        if run_as_future:
            from concurrent.futures import Future

            future = Future()
            future.set_result(None)
            return future


def test_push_to_hub_uploads_model_card_and_adapter_without_the_token(tmp_path, monkeypatch):
    import transformers.trainer as hf_trainer

    hub = FakeHub()
    monkeypatch.setattr(hf_trainer, "hf_api", lambda: hub)
    model, tok = tiny()
    args = DPOConfig(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4, save_steps=1,
                     report_to="none", push_to_hub=True, hub_model_id="someone/tiny-dpo", hub_token="hf_SECRET987",
                     hub_private_repo=True, hub_strategy="end")
    trainer = DPOTrainer(model=model, args=args, processing_class=tok, train_dataset=pairs(n=8), peft_config=lora())
    trainer.train()
    trainer.save_model()  # as in the tutorial: save, which pushes when push_to_hub is set
    assert hub.repos == [("someone/tiny-dpo", True)]
    upload = hub.uploads[-1]
    assert upload["repo_id"] == "someone/tiny-dpo" and upload["token"] == "hf_SECRET987"
    files = upload["files"]
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "README.md", "metrics.jsonl"} <= set(files)
    assert not any(n.startswith("checkpoint-") for n in files)
    card = files["README.md"].decode()
    assert "preftune" in card and "AutoPeftModelForCausalLM" in card and "dpo" in yaml.safe_load(card.split("---")[1])["tags"]
    assert not any(b"hf_SECRET987" in data for data in files.values())


def test_wandb_offline_run_gets_metrics_and_generations(tmp_path, monkeypatch):
    """What preftune hands to wandb (a real offline run), recorded at `Run.log`.

    Not read back from the run's `.wandb` file: wandb writes it in a background
    process that may still be going after `wandb.finish()` returns (wandb 0.31).
    """
    wandb = pytest.importorskip("wandb")
    from wandb.sdk.wandb_run import Run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged = []
    real_log = Run.log

    def recording_log(self, data, *args, **kwargs):
        logged.append(dict(data))
        return real_log(self, data, *args, **kwargs)

    monkeypatch.setattr(Run, "log", recording_log)
    model, tok = tiny()
    args = ORPOConfig(output_dir=str(tmp_path / "run"), max_steps=2, logging_steps=1, eval_strategy="steps",
                      eval_steps=2, per_device_train_batch_size=4, save_strategy="no", report_to="wandb",
                      run_name="offline-test", generate_during_eval=True, generation_num_prompts=1,
                      generation_max_new_tokens=4)
    trainer = ORPOTrainer(model=model, args=args, processing_class=tok, train_dataset=pairs(n=8), eval_dataset=pairs("test", 4))
    trainer.train()
    wandb.finish()
    assert glob.glob(str(tmp_path / "wandb" / "offline-run-*"))  # a real offline run was made
    train_logs = [d for d in logged if "train/rewards/accuracies" in d]
    assert [d["train/global_step"] for d in train_logs] == [1, 2]
    history = [e for e in trainer.state.log_history if "rewards/accuracies" in e]
    assert [d["train/rewards/accuracies"] for d in train_logs] == [e["rewards/accuracies"] for e in history]
    evals = [d for d in logged if "eval/rewards/accuracies" in d]
    (eval_entry,) = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert len(evals) == 1 and evals[0]["eval/loss"] == eval_entry["eval_loss"]
    (table,) = [d["eval/generations"] for d in logged if "eval/generations" in d]
    rows = [json.loads(line) for line in open(tmp_path / "run" / GENERATIONS_FILE)]
    assert [row[table.columns.index("policy")] for row in table.data] == [r["policy"] for r in rows]


def test_named_eval_sets_are_logged_and_read_back_by_the_same_prefix_rule(tmp_path):
    """The trainer's log and the report's history share one eval-prefix rule: each named set's metrics land
    under eval_NAME_, and the report reads them back as that set's column."""
    from preftune.outputs.history import final_metrics

    model, tok = tiny()
    args = ORPOConfig(output_dir=str(tmp_path), max_steps=2, logging_steps=1, eval_strategy="steps", eval_steps=2,
                      per_device_train_batch_size=4, save_strategy="no", report_to="none")
    trainer = ORPOTrainer(model=model, args=args, processing_class=tok, train_dataset=pairs(n=8),
                          eval_dataset={"a": pairs("test", 4), "b": pairs("test", 8)})
    trainer.train()
    for name in ("a", "b"):
        (entry,) = [e for e in trainer.state.log_history if f"eval_{name}_loss" in e]
        assert {f"eval_{name}_rewards/accuracies", f"eval_{name}_nll_loss"} <= set(entry)
        assert final_metrics(trainer.state.log_history)[f"eval ({name})"]["loss"] == entry[f"eval_{name}_loss"]
    assert not any(k.startswith("eval") for e in trainer.state.log_history if "grad_norm" in e for k in e)


def test_missing_tracker_package_is_a_config_error(monkeypatch):
    import importlib.util

    from preftune import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install wandb"):
        ORPOConfig(output_dir="x", report_to="wandb")


def test_cli_merge_after_lora_training_matches_the_adapter(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli_main(["orpo", "--model", tiny_model_path(), "--dataset", "tiny-prefs#16", "--use_peft", "--lora_r", "4",
                     "--max_steps", "2", "--per_device_train_batch_size", "4", "--learning_rate", "5e-3",
                     "--output_dir", str(out), "--report_to", "none", "--merge"])
    assert code == 0
    merged_dir = str(out) + "-merged"
    assert "merged model saved to" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(merged_dir, "adapter_config.json"))
    from preftune.models import load_trained

    adapter, tok = load_trained(str(out))
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    ids = tok("Hello there, how are you?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(adapter(ids).logits, merged(ids).logits, atol=1e-4)
    # a second --merge into the same folder is refused before training starts
    code = cli_main(["orpo", "--model", tiny_model_path(), "--dataset", "tiny-prefs#16", "--use_peft", "--max_steps", "1",
                     "--output_dir", str(tmp_path / "run2"), "--merge_output", merged_dir, "--merge", "--report_to", "none"])
    assert code == 2 and "--merge would write into" in capsys.readouterr().err


def test_cli_merge_without_lora_is_refused(capsys):
    assert cli_main(["orpo", "--model", tiny_model_path(), "--dataset", "tiny-prefs", "--merge"]) == 2
    assert "--merge folds a LoRA adapter" in capsys.readouterr().err
