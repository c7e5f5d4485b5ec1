"""The seeds' Python, with `trl` replaced by `preftune`, on the bundled tiny model.

Only what cannot run on a CPU-only test machine is changed, and each change is marked:
hub ids become local paths, `optim="paged_adamw_8bit"` (bitsandbytes + CUDA) becomes
AdamW, `report_to="wandb"` becomes "none", and epochs are bounded to keep CI short.
"""
import json
import math
import os

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from preftune.assets import tiny_dataset_files, tiny_model_path

pytestmark = pytest.mark.slow


def ultrafeedback_like(n=16):
    """Rows shaped like trl-lib/ultrafeedback_binarized: implicit prompt, full conversations."""
    rows = []
    with open(tiny_dataset_files()["train"]) as f:
        for line in list(f)[:n]:
            r = json.loads(line)
            rows.append({
                "chosen": r["prompt"] + r["chosen"],
                "rejected": r["prompt"] + r["rejected"],
                "score_chosen": 8.0,
                "score_rejected": 3.0,
            })
    return Dataset.from_list(rows)


def test_seed_003_orpo_quick_start(tmp_path):
    from preftune import ORPOConfig, ORPOTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path())  # was "Qwen/Qwen2-0.5B-Instruct"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path())
    train_dataset = ultrafeedback_like()  # was load_dataset("trl-lib/ultrafeedback_binarized", split="train")

    training_args = ORPOConfig(output_dir=str(tmp_path / "Qwen2-0.5B-ORPO"))
    trainer = ORPOTrainer(model=model, args=training_args, processing_class=tokenizer, train_dataset=train_dataset)
    trainer.train()

    assert training_args.bf16 is False  # CPU: resolved to fp32
    assert trainer.state.global_step == 6  # 16 rows / batch 8 × 3 epochs
    history = trainer.state.log_history
    assert history[-1]["train_loss"] > 0
    for f in ("preftune_config.json",):
        assert os.path.exists(tmp_path / "Qwen2-0.5B-ORPO" / f)


def test_seed_004_dpo_quick_start_reference_is_frozen_copy(tmp_path):
    from preftune import DPOConfig, DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path())
    train_dataset = ultrafeedback_like()

    training_args = DPOConfig(output_dir=str(tmp_path / "Qwen2-0.5B-DPO"), logging_steps=10, num_train_epochs=1)
    trainer = DPOTrainer(model=model, args=training_args, processing_class=tokenizer, train_dataset=train_dataset)
    ref = trainer.reference.model
    assert ref is not trainer.model and not any(p.requires_grad for p in ref.parameters())
    # Before training the policy equals its reference: every pair's loss is log 2.
    before = trainer.evaluate(eval_dataset=train_dataset)
    assert before["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert before["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    ref_weights = {n: p.clone() for n, p in ref.named_parameters()}
    trainer.args.learning_rate = 1e-3
    trainer.train()
    # The reference did not move; the policy did, and now beats it on the training pairs.
    assert all(torch.equal(p, ref_weights[n]) for n, p in ref.named_parameters())
    after = trainer.evaluate(eval_dataset=train_dataset)
    assert after["eval_loss"] < math.log(2) and after["eval_rewards/margins"] > 0


def test_seed_001_tutorial_chat_format_lora_merge(tmp_path):
    from peft import LoraConfig, PeftModel

    from preftune import ORPOConfig, ORPOTrainer, setup_chat_format

    torch_dtype = torch.float32  # the tutorial picks bf16/fp16 on a GPU
    base_model = str(tmp_path / "base")  # a base model: its tokenizer has no chat template yet
    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    tok.chat_template = None
    tok.save_pretrained(base_model)
    AutoModelForCausalLM.from_pretrained(tiny_model_path()).save_pretrained(base_model)
    new_model = str(tmp_path / "OrpoLlama-3-8B")

    peft_config = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
        target_modules=["up_proj", "down_proj", "gate_proj", "k_proj", "q_proj", "v_proj", "o_proj"],
    )
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch_dtype)
    model, tokenizer = setup_chat_format(model, tokenizer)

    dataset = ultrafeedback_like(100)  # was load_dataset("mlabonne/orpo-dpo-mix-40k", split="all")
    dataset = dataset.shuffle(seed=42).select(range(100))

    def format_chat_template(row):
        row["chosen"] = tokenizer.apply_chat_template(row["chosen"], tokenize=False)
        row["rejected"] = tokenizer.apply_chat_template(row["rejected"], tokenize=False)
        return row

    dataset = dataset.map(format_chat_template, num_proc=os.cpu_count())
    dataset = dataset.train_test_split(test_size=0.01)

    orpo_args = ORPOConfig(
        learning_rate=8e-6,
        beta=0.1,
        lr_scheduler_type="linear",
        max_length=1024,
        max_prompt_length=512,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        gradient_accumulation_steps=4,
        optim="adamw_torch",  # was "paged_adamw_8bit" (needs bitsandbytes and CUDA)
        num_train_epochs=1,
        evaluation_strategy="steps",
        eval_steps=0.2,
        logging_steps=1,
        warmup_steps=10,
        report_to="none",  # was "wandb"
        output_dir=str(tmp_path / "results"),
    )
    trainer = ORPOTrainer(
        model=model, args=orpo_args, train_dataset=dataset["train"], eval_dataset=dataset["test"],
        peft_config=peft_config, tokenizer=tokenizer,
    )
    # the implicit prompt of the chat-formatted strings ends at the assistant header
    row = trainer.train_dataset[0]
    assert tokenizer.decode(row["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert row["chosen_ids"][-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    trainer.train()
    trainer.save_model(new_model)

    logged = {k for entry in trainer.state.log_history for k in entry}
    expected = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "log_odds_chosen",
                "log_odds_ratio", "nll_loss", "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected"]
    assert set(expected) <= logged and {"eval_" + k for k in expected} <= logged
    assert os.path.exists(os.path.join(new_model, "adapter_config.json"))

    # Merge adapter with base model (the tutorial's last step, without the push)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    model, tokenizer = setup_chat_format(model, tokenizer)
    adapted = PeftModel.from_pretrained(model, new_model)
    ids = torch.tensor([row["prompt_ids"] + row["chosen_ids"]])
    with torch.no_grad():
        expected_logits = adapted(ids).logits
        merged = adapted.merge_and_unload()
        assert torch.allclose(merged(ids).logits, expected_logits, atol=1e-4)
