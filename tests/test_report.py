"""The run report: metrics.jsonl, training_curves.png and the README.md model card."""
import json
import math
import os
import re
import struct
import sys

import pytest
import yaml

from preftune.outputs import card as model_card_module
from preftune.outputs import redact, report
from preftune.outputs.card import model_card, write_model_card
from preftune.outputs.report import (
    final_metrics,
    panels_for,
    plot_metrics,
    split_history,
    write_metric_history,
    write_run_report,
)

ORPO_PANELS = ["loss", "rewards", "rewards/margins", "rewards/accuracies", "log_odds_ratio", "nll_loss"]
DPO_PANELS = ["loss", "rewards", "rewards/margins", "rewards/accuracies"]


def train_log(step, loss, orpo=False, **extra):
    row = {"loss": loss, "grad_norm": 1.25, "learning_rate": 1e-4, "rewards/chosen": -0.1 * step,
           "rewards/rejected": -0.3 * step, "rewards/accuracies": 0.5 + 0.1 * step, "rewards/margins": 0.2 * step,
           "logps/chosen": -5.0, "logps/rejected": -7.0, "logits/chosen": -1.0, "logits/rejected": -1.1}
    if orpo:
        row.update({"nll_loss": loss - 0.1, "log_odds_ratio": -0.5 / step, "log_odds_chosen": 0.4 * step})
    row.update(extra)
    return {**row, "epoch": step / 4, "step": step}


def eval_log(step, loss, orpo=False, prefix="eval_"):
    row = {"loss": loss, "runtime": 0.5, "samples_per_second": 100.0, "steps_per_second": 10.0,
           "rewards/chosen": -0.15 * step, "rewards/rejected": -0.35 * step, "rewards/accuracies": 0.75,
           "rewards/margins": 0.2 * step}
    if orpo:
        row.update({"nll_loss": loss - 0.05, "log_odds_ratio": -0.6 / step})
    return {**{prefix + k: v for k, v in row.items()}, "epoch": step / 4, "step": step}


SUMMARY = {"train_runtime": 12.345, "train_samples_per_second": 3.2, "train_steps_per_second": 0.4,
           "total_flos": 1234.0, "train_loss": 0.61234567, "epoch": 1.0, "step": 4}


def history(orpo=False):
    return [train_log(2, 0.7123456, orpo), eval_log(2, 0.75, orpo), train_log(4, 0.5123456, orpo),
            eval_log(4, 0.55, orpo), dict(SUMMARY)]


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


# ------------------------------------------------------------------- history


def test_metric_history_is_one_json_line_per_entry_exactly(tmp_path):
    log = [
        {"loss": 0.5, "rewards/margins": float("nan"), "epoch": 0.5, "step": 1},
        {"eval_loss": 0.25, "eval_rewards/accuracies": 1.0, "epoch": 0.5, "step": 1},
        {"train_runtime": 1.5, "train_loss": float("inf"), "total_flos": 0.0, "epoch": 1.0, "step": 2},
    ]
    path = tmp_path / "out" / "metrics.jsonl"
    assert write_metric_history(log, str(path)) == str(path)
    assert path.read_text() == (
        '{"loss": 0.5, "rewards/margins": null, "epoch": 0.5, "step": 1}\n'
        '{"eval_loss": 0.25, "eval_rewards/accuracies": 1.0, "epoch": 0.5, "step": 1}\n'
        '{"train_runtime": 1.5, "train_loss": null, "total_flos": 0.0, "epoch": 1.0, "step": 2}\n'
    )
    write_metric_history(log[:1], str(path))  # replaced whole, no temporary file left behind
    assert path.read_text().count("\n") == 1
    assert os.listdir(path.parent) == ["metrics.jsonl"]
    write_metric_history([], str(path))
    assert path.read_text() == ""


def test_metric_history_writes_numpy_and_torch_scalars_as_numbers(tmp_path):
    import numpy as np
    import torch

    path = tmp_path / "m.jsonl"
    write_metric_history([{"loss": np.float32(0.5), "step": np.int64(3), "x": torch.tensor(2.0)}], str(path))
    assert json.loads(path.read_text()) == {"loss": 0.5, "step": 3, "x": 2.0}


def test_split_history_strips_eval_prefix_and_drops_the_summary():
    train, evals = split_history(history(orpo=True))
    assert [r["step"] for r in train] == [2, 4] and train[0]["loss"] == 0.7123456
    assert [r["step"] for r in evals] == [2, 4]
    assert evals[1]["loss"] == 0.55 and evals[1]["nll_loss"] == pytest.approx(0.5)
    assert not any(k.startswith("eval_") for r in evals for k in r)
    # one of several named eval sets: eval_NAME_loss (and eval_NAME_nll_loss is not mistaken for the loss)
    _, evals = split_history([eval_log(3, 0.4, orpo=True, prefix="eval_test_")])
    assert evals[0]["eval_set"] == "test" and evals[0]["loss"] == 0.4 and "nll_loss" in evals[0]


def test_final_metrics_are_the_last_train_and_eval_values():
    final = final_metrics(history())
    assert set(final) == {"train", "eval"}
    assert final["train"]["loss"] == 0.5123456 and final["train"]["train_loss"] == 0.61234567
    assert final["eval"]["loss"] == 0.55 and final["eval"]["step"] == 4
    assert final_metrics([]) == {}


# -------------------------------------------------------------------- curves


def test_panels_follow_the_metrics_present():
    assert panels_for(history(orpo=True)) == ORPO_PANELS
    assert panels_for(history(orpo=False)) == DPO_PANELS
    evals_only = [e for e in history(orpo=True) if "eval_loss" in e]
    assert panels_for(evals_only) == ORPO_PANELS
    train_only = [e for e in history() if "loss" in e]
    assert panels_for(train_only) == DPO_PANELS
    assert panels_for([]) == []
    assert panels_for([dict(SUMMARY)]) == []  # the summary alone is nothing to plot
    # a metric with no finite value (or no step) gets no panel
    assert panels_for([{"loss": float("nan"), "rewards/margins": float("inf"), "step": 1},
                       {"rewards/accuracies": 1.0}]) == []
    assert panels_for([{"loss": 1.0, "step": 1}]) == ["loss"]


@pytest.mark.parametrize("orpo, size", [(True, (3 * 520, 2 * 360)), (False, (2 * 520, 2 * 360))])
def test_plot_writes_a_png_with_a_panel_grid(tmp_path, orpo, size):
    path = tmp_path / "curves.png"
    pyplot_before = "matplotlib.pyplot" in sys.modules
    assert plot_metrics(history(orpo), str(path), title="ORPO on tiny") == str(path)
    assert png_size(path) == size  # 6 panels: 3 x 2, 4 panels: 2 x 2
    assert os.listdir(tmp_path) == ["curves.png"]
    if not pyplot_before:
        assert "matplotlib.pyplot" not in sys.modules  # no global pyplot state touched


def test_plot_handles_single_points_non_finite_values_and_one_split(tmp_path):
    one = [train_log(1, 0.5)]
    assert png_size(plot_metrics(one, str(tmp_path / "one.png"))) == (2 * 520, 2 * 360)
    single_panel = [{"loss": 0.5, "step": 1}]
    assert png_size(plot_metrics(single_panel, str(tmp_path / "single.png"))) == (520, 360)
    holes = [train_log(1, float("nan")), train_log(2, float("inf")), train_log(3, 0.4), eval_log(3, -math.inf)]
    assert plot_metrics(holes, str(tmp_path / "holes.png")) is not None
    evals_only = [eval_log(2, 0.5, orpo=True)]
    assert png_size(plot_metrics(evals_only, str(tmp_path / "evals.png"))) == (3 * 520, 2 * 360)
    named = [train_log(2, 0.5), eval_log(2, 0.6, prefix="eval_a_"), eval_log(2, 0.7, prefix="eval_b_")]
    assert plot_metrics(named, str(tmp_path / "named.png")) is not None


def test_plot_of_nothing_writes_nothing(tmp_path):
    assert plot_metrics([], str(tmp_path / "x.png")) is None
    assert plot_metrics([dict(SUMMARY)], str(tmp_path / "x.png")) is None
    assert plot_metrics([{"loss": float("nan"), "step": 1}], str(tmp_path / "x.png")) is None
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- model card


def config(**overrides):
    base = {"trainer": "ORPOTrainer", "output_dir": "outputs/my-run", "learning_rate": 8e-6, "num_train_epochs": 3.0,
            "max_steps": -1, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 8, "beta": 0.1,
            "max_length": 1024, "max_prompt_length": 512, "bf16": True, "fp16": False, "seed": 42,
            "lr_scheduler_type": "linear", "warmup_steps": 10, "hub_token": "<HUB_TOKEN>", "run_name": None,
            "logging_dir": "/home/someone/runs/Jan01_12-00-00"}
    base.update(overrides)
    return base


def front_matter(text):
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def card(**kw):
    args = dict(trainer_name="ORPOTrainer", base_model="Qwen/Qwen2-0.5B-Instruct",
                datasets=["trl-lib/ultrafeedback_binarized", "data/prefs.jsonl"], config_dict=config(),
                final_metrics=final_metrics(history(orpo=True)), adapter=False)
    args.update(kw)
    return model_card(**args)


def test_model_card_front_matter_and_sections():
    text = card(tags=["my-tag", "orpo"])
    meta = front_matter(text)
    assert meta["library_name"] == "transformers"
    assert meta["base_model"] == "Qwen/Qwen2-0.5B-Instruct"
    assert meta["tags"] == ["preftune", "orpo", "my-tag"]
    assert meta["datasets"] == ["trl-lib/ultrafeedback_binarized"]  # a local file is not a hub data set
    for section in ("## How to use", "## Training data", "## Training settings", "## Results", "## Citation"):
        assert section in text
    assert "AutoModelForCausalLM.from_pretrained(\"outputs/my-run\")" in text
    assert "preftune chat outputs/my-run" in text
    assert "AutoPeftModelForCausalLM" not in text
    assert "`data/prefs.jsonl`" in text
    assert "arXiv:2403.07691" in text and "Hong, Jiwoo and Lee, Noah and Thorne, James" in text
    assert "| learning rate | 8e-06 |" in text and "| gradient accumulation steps | 8 |" in text
    assert "| epochs | 3 |" in text and "| precision | bf16 mixed precision |" in text
    assert "| λ (beta): weight of the odds-ratio term | 0.1 |" in text
    assert "## Training curves" not in text  # no PNG given


def test_model_card_metric_values_are_formatted():
    text = card()
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["loss (last logging window for train)"] == "| loss (last logging window for train) | 0.5123 | 0.5500 |"
    assert rows["mean train loss over the run"] == "| mean train loss over the run | 0.6123 |  |"
    assert rows["rewards/accuracies"] == "| rewards/accuracies | 0.9000 | 0.7500 |"
    assert rows["nll_loss"] == "| nll_loss | 0.4123 | 0.5000 |"
    assert "train and eval: step 4, epoch 1" in text
    # run-specific noise stays out: runtimes, throughput, the logging dir
    assert "12.345" not in text and "runtime" not in text and "Jan01" not in text
    assert card() == card()  # nothing time- or machine-dependent
    # a flat Trainer-style dict (eval_ keys = eval) works too
    flat = card(final_metrics={"eval_loss": 0.123456, "eval_rewards/margins": 2e-5, "loss": float("nan")})
    assert "| loss (last logging window for train) | nan | 0.1235 |" in flat
    assert "| rewards/margins |  | 2.000e-05 |" in flat


def test_adapter_card_uses_peft_and_lists_lora_settings():
    from peft import LoraConfig

    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    text = card(trainer_name="DPOTrainer", adapter=True, lora=lora,
                config_dict=config(trainer="DPOTrainer", loss_type=["sigmoid"]))
    meta = front_matter(text)
    assert meta["library_name"] == "peft" and meta["tags"] == ["preftune", "dpo", "lora"]
    assert "from peft import AutoPeftModelForCausalLM" in text
    assert "AutoPeftModelForCausalLM.from_pretrained(\"outputs/my-run\")" in text
    assert "| LoRA r | 8 |" in text and "| LoRA alpha | 16 |" in text
    assert "q_proj, v_proj" in text
    assert "| loss type | sigmoid |" in text and "| β (beta) | 0.1 |" in text
    assert "arXiv:2305.18290" in text and "rafailov2023direct" in text
    assert "2403.07691" not in text
    assert "preftune merge --adapter outputs/my-run" in text


def test_dpo_variant_loss_is_named_and_tagged():
    text = card(trainer_name="DPOTrainer", config_dict=config(loss_type=["ipo"], reference_free=True))
    assert front_matter(text)["tags"] == ["preftune", "dpo", "ipo"]
    assert model_card_module.card_tags("DPOTrainer", {"loss_type": ["ipo", "sft"]}, adapter=True, tags=["x", "dpo"]) == [
        "preftune", "dpo", "ipo", "sft", "lora", "x"]
    assert "DPO-family loss ipo" in text and "reference-free" in text


def test_tokens_never_reach_the_card():
    secret = "hf_SeCrEtToKeN123"
    cfg = config(hub_token=secret, push_to_hub_token=secret, model_init_kwargs={"token": secret, "revision": "main"},
                 hub_model_id="me/my-model")
    text = card(config_dict=cfg)
    assert secret not in text
    assert redact.redact_config(cfg)["model_init_kwargs"] == {"revision": "main"}
    assert "hub_token" not in redact.redact_config(cfg)
    # the hub id is what the snippet loads; preftune chat needs the local folder
    assert "from_pretrained(\"me/my-model\")" in text
    assert "hf download me/my-model --local-dir outputs/my-run" in text


def test_local_base_model_is_named_but_not_put_in_front_matter(tmp_path):
    text = card(base_model=str(tmp_path), datasets=None, final_metrics=None)
    assert "base_model" not in front_matter(text)
    assert f"`{tmp_path.name}`" in text and str(tmp_path) not in text  # named by its folder, no path of this machine
    assert "Not recorded" in text and "## Results" not in text


def test_no_absolute_path_reaches_the_card():
    cfg = config(output_dir="/home/someone/work/outputs/my-run", ref_logps_cache_dir="/home/someone/.cache/ref",
                 model_init_kwargs={"cache_dir": "/home/someone/.cache/hf"})
    text = card(base_model="/home/someone/models/tiny-llama", datasets=["/home/someone/data/prefs.jsonl", "org/set"],
                config_dict=cfg)
    assert "/home/someone" not in text
    assert "A fine-tuned version of `tiny-llama`" in text and "`prefs.jsonl`" in text and "org/set" in text
    assert 'from_pretrained("my-run")' in text
    shared = redact.shareable_config(cfg)
    assert shared["output_dir"] == "my-run" and shared["model_init_kwargs"] == {"cache_dir": "hf"}
    assert shared["learning_rate"] == cfg["learning_rate"] and "hub_token" not in shared


def test_write_model_card_embeds_the_curves_only_when_present(tmp_path):
    kw = dict(trainer_name="ORPOTrainer", base_model="Qwen/Qwen2-0.5B-Instruct", datasets=None,
              config_dict=config(output_dir=str(tmp_path)), final_metrics=None, adapter=False)
    path = write_model_card(str(tmp_path), **kw)
    assert path == str(tmp_path / "README.md") and "training_curves.png" not in open(path).read()
    (tmp_path / "training_curves.png").write_bytes(b"\x89PNG")
    (tmp_path / "preftune_config.json").write_text("{}")
    text = open(write_model_card(str(tmp_path), **kw)).read()
    assert "![Training curves" in text and "](training_curves.png)" in text
    assert "[`preftune_config.json`](preftune_config.json)" in text
    assert sorted(os.listdir(tmp_path)) == ["README.md", "preftune_config.json", "training_curves.png"]


def test_run_report_keeps_going_when_a_file_fails(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no plotting today")

    monkeypatch.setattr(report, "plot_metrics", broken)
    (tmp_path / "training_curves.png").write_bytes(b"old")
    written = write_run_report(str(tmp_path), history(), trainer_name="DPOTrainer", base_model="a/b", datasets=None,
                               config_dict=config(), adapter=False)
    assert set(written) == {"metrics", "model_card"}
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 5


def test_run_report_removes_a_stale_png_when_there_is_nothing_to_plot(tmp_path):
    (tmp_path / "training_curves.png").write_bytes(b"old")
    written = write_run_report(str(tmp_path), [dict(SUMMARY)], trainer_name="DPOTrainer", base_model="a/b",
                               datasets=None, config_dict=config(), adapter=False)
    assert set(written) == {"metrics", "model_card"}
    assert not (tmp_path / "training_curves.png").exists()
    assert "training_curves.png" not in (tmp_path / "README.md").read_text()


# --------------------------------------------------------------- model kinds


def test_model_kind_is_read_from_the_config():
    from transformers import LlamaConfig, LlavaConfig, T5Config

    from preftune.outputs.loading import model_kind

    assert model_kind(LlamaConfig()) == "causal"
    assert model_kind(T5Config()) == "seq2seq"
    assert model_kind(LlavaConfig()) == "vision"
    with pytest.raises(ValueError, match="causal, seq2seq, vision"):
        card(model_kind="audio")


@pytest.mark.parametrize("kind,auto,peft,tag", [
    ("causal", "AutoModelForCausalLM", "AutoPeftModelForCausalLM", "text-generation"),
    ("seq2seq", "AutoModelForSeq2SeqLM", "AutoPeftModelForSeq2SeqLM", "text2text-generation"),
    ("vision", "AutoModelForImageTextToText", "PeftModel", "image-text-to-text"),
])
def test_card_loads_each_kind_of_model_with_its_own_classes(kind, auto, peft, tag):
    others = {"AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModelForImageTextToText"} - {auto}
    full = card(model_kind=kind)
    assert front_matter(full)["pipeline_tag"] == tag
    assert f"from transformers import {auto}, " in full and f"model = {auto}.from_pretrained(\"outputs/my-run\")" in full
    assert not any(o in full for o in others) and "peft" not in full.split("## Training data")[0].lower()
    adapter = card(model_kind=kind, adapter=True, trainer_name="DPOTrainer", config_dict=config(trainer="DPOTrainer"))
    assert front_matter(adapter)["pipeline_tag"] == tag and front_matter(adapter)["library_name"] == "peft"
    assert f"{peft}.from_pretrained(" in adapter and not any(o in adapter for o in others)
    assert "merge_and_unload()" in adapter
    if kind == "vision":  # a processor, an image in the message; preftune chat/merge are text-only
        assert "AutoProcessor.from_pretrained(\"outputs/my-run\")" in full and '"type": "image"' in full
        assert f"{auto}.from_pretrained(PeftConfig.from_pretrained(\"outputs/my-run\").base_model_name_or_path)" in adapter
        assert "preftune chat" not in full and "preftune merge" not in adapter
        assert "AutoTokenizer" not in full + adapter
    else:
        assert "AutoTokenizer.from_pretrained(\"outputs/my-run\")" in full and "preftune chat outputs/my-run" in full
        assert "preftune merge --adapter outputs/my-run" in adapter
    if kind == "seq2seq":  # the decoder's output is all answer: nothing sliced off
        assert "tokenizer.decode(output[0], skip_special_tokens=True)" in full
    described = card(model_kind=kind, base_model=None)
    assert {"causal": "a causal language model", "seq2seq": "an encoder-decoder (sequence-to-sequence) language model",
            "vision": "a vision-language model"}[kind] in described


def run_snippet(text, folder):
    cwd = os.getcwd()
    os.chdir(folder)  # the card names the (absolute) output folder by its name only
    try:
        exec(python_snippet(text), {})
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_seq2seq_card_snippet_loads_and_answers(arch, tmp_path):
    """A tiny T5/BART trained one step by the trainer: its card says seq2seq, and its snippet (full model and
    LoRA adapter) loads the saved folder and generates."""
    from datasets import Dataset
    from peft import LoraConfig

    from preftune import DPOConfig, DPOTrainer

    from .data.tiny_tokenizers import build
    from .tiny import tiny_seq2seq_lm

    base = tmp_path / "base"
    tiny_seq2seq_lm(arch).save_pretrained(str(base))
    tok = build(arch)
    tok.save_pretrained(str(base))
    rows = [{"prompt": "Q: a b", "chosen": "yes fine thanks", "rejected": "no bad"}] * 4
    for adapter in (False, True):
        out = tmp_path / ("lora" if adapter else "full")
        args = DPOConfig(output_dir=str(out), max_steps=1, per_device_train_batch_size=4, save_strategy="no",
                         report_to="none", use_cpu=True)
        lora = LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", task_type="SEQ_2_SEQ_LM") if adapter else None
        trainer = DPOTrainer(model=str(base), args=args, processing_class=tok, train_dataset=Dataset.from_list(rows),
                             peft_config=lora)
        trainer.train()
        trainer.save_model()
        text = (out / "README.md").read_text()
        assert front_matter(text)["pipeline_tag"] == "text2text-generation"
        assert ("AutoPeftModelForSeq2SeqLM" if adapter else "AutoModelForSeq2SeqLM.from_pretrained(\"full\")") in text
        run_snippet(text, tmp_path)


def test_vision_card_snippet_loads_and_answers(tmp_path):
    """The vision snippet (full model, and a LoRA adapter on it) on a tiny saved LLaVA and a local picture."""
    import numpy as np
    from peft import LoraConfig, get_peft_model
    from PIL import Image

    from .test_vlm import build_model, build_processor

    processor = build_processor()
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    build_model(len(processor.tokenizer), image_token).save_pretrained(str(tmp_path / "vlm"))
    processor.save_pretrained(str(tmp_path / "vlm"))
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "picture.jpg")
    run_snippet(card(model_kind="vision", config_dict=config(output_dir="vlm")), tmp_path)
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")  # as the CLI's
    model = get_peft_model(build_model(len(processor.tokenizer), image_token, seed=1), lora)
    model.peft_config["default"].base_model_name_or_path = str(tmp_path / "vlm")
    model.save_pretrained(str(tmp_path / "vlm-lora"))
    processor.save_pretrained(str(tmp_path / "vlm-lora"))
    run_snippet(card(model_kind="vision", adapter=True, config_dict=config(output_dir="vlm-lora")), tmp_path)


# --------------------------------------------------------- real training run


def tiny_data():
    from datasets import load_dataset

    from preftune.assets import tiny_dataset_files

    data = load_dataset("json", data_files=tiny_dataset_files())
    return data["train"].select(range(16)), data["test"].select(range(8))


def python_snippet(text):
    return re.search(r"```python\n(.*?)```", text, re.S).group(1).replace("max_new_tokens=128", "max_new_tokens=4")


@pytest.mark.slow
def test_run_report_after_a_short_orpo_run(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from preftune import ORPOConfig, ORPOTrainer
    from preftune.assets import tiny_model_path

    out = tmp_path / "orpo-run"
    train, test = tiny_data()
    args = ORPOConfig(output_dir=str(out), max_steps=4, learning_rate=5e-4, per_device_train_batch_size=4,
                      per_device_eval_batch_size=8, logging_steps=2, eval_strategy="steps", eval_steps=4,
                      save_strategy="no", report_to="none", hub_token="hf_NeverWriteMe")
    trainer = ORPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_path()), args=args,
                          processing_class=AutoTokenizer.from_pretrained(tiny_model_path()),
                          train_dataset=train, eval_dataset=test)
    trainer.train()
    trainer.save_model(str(out))
    cwd = os.getcwd()
    written = write_run_report(
        str(out), trainer.state.log_history, trainer_name=type(trainer).__name__, base_model=tiny_model_path(),
        datasets=["tiny-prefs"], config_dict={"trainer": type(trainer).__name__, **trainer.args.to_dict()},
        adapter=False, data_summaries={k: r.summary() for k, r in trainer.data_reports.items()},
    )
    assert written == {"metrics": str(out / "metrics.jsonl"), "curves": str(out / "training_curves.png"),
                       "model_card": str(out / "README.md")}
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == json.loads(json.dumps(trainer.state.log_history))
    assert any("eval_loss" in json.loads(line) and json.loads(line)["step"] == 4 for line in lines)
    assert panels_for(trainer.state.log_history) == ORPO_PANELS
    assert png_size(out / "training_curves.png") == (3 * 520, 2 * 360)
    text = (out / "README.md").read_text()
    assert front_matter(text)["library_name"] == "transformers"
    assert "](training_curves.png)" in text and "hf_NeverWriteMe" not in text
    assert "| max steps | 4 |" in text and "train and eval: step 4" in text
    assert "- train: prepared 16 pairs" in text and "- `tiny-prefs`" in text
    eval_loss = [e for e in trainer.state.log_history if "eval_loss" in e][-1]["eval_loss"]
    assert f"| {eval_loss:.4f} |" in text
    os.chdir(out.parent)  # the card names the (absolute) output folder by its name only
    try:
        exec(python_snippet(text), {})  # the card's own snippet loads the saved model and generates
    finally:
        os.chdir(cwd)


@pytest.mark.slow
def test_run_report_for_a_lora_dpo_run_survives_peft_saving_after_it(tmp_path):
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from preftune import DPOConfig, DPOTrainer
    from preftune.assets import tiny_model_path

    out = tmp_path / "dpo-lora"
    train, test = tiny_data()
    args = DPOConfig(output_dir=str(out), max_steps=4, learning_rate=5e-3, per_device_train_batch_size=4,
                     per_device_eval_batch_size=8, logging_steps=2, eval_strategy="steps", eval_steps=4,
                     save_strategy="no", report_to="none")
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_path()), args=args,
                         processing_class=AutoTokenizer.from_pretrained(tiny_model_path()),
                         train_dataset=train, eval_dataset=test,
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    # peft's save_pretrained rewrites README.md's tags from the model's tags: give it the card's
    trainer.model.add_model_tags(model_card_module.card_tags("DPOTrainer", trainer.args.to_dict(), adapter=True))
    trainer.train()
    # the report written first (at the end of train), the adapter saved after it: peft updates README.md
    written = write_run_report(
        str(out), trainer.state.log_history, trainer_name="DPOTrainer", base_model=tiny_model_path(),
        datasets=None, config_dict=trainer.args.to_dict(), adapter=True, lora=trainer.model,
    )
    assert set(written) == {"metrics", "curves", "model_card"}
    assert panels_for(trainer.state.log_history) == DPO_PANELS
    trainer.save_model(str(out))
    text = (out / "README.md").read_text()
    meta = front_matter(text)
    assert meta["library_name"] == "peft" and {"preftune", "dpo", "lora"} <= set(meta["tags"])
    assert "| LoRA r | 4 |" in text and "| LoRA alpha | 8 |" in text
    assert "| LoRA target modules | down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj |" in text
    assert "## Results" in text and "](training_curves.png)" in text
    cwd = os.getcwd()
    os.chdir(out.parent)  # the card names the (absolute) output folder by its name only
    try:
        exec(python_snippet(text), {})  # AutoPeftModelForCausalLM loads base + adapter from the folder
    finally:
        os.chdir(cwd)
