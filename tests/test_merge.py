"""`preftune merge`: the merged model computes what base + adapter computed, and stands alone."""
import json
import os
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from preftune import cli
from preftune.assets import tiny_model_path
from preftune.errors import ConfigError
from preftune.apps.merge import MERGE_RECORD, merge_adapter
from preftune.models import load_trained, setup_chat_format

from .tiny import tiny_causal_lm

LORA = dict(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")


def save_adapter(model, tokenizer, folder, seed=0):
    """LoRA on `model`, with B made nonzero (it starts at zero, a no-op), saved with the tokenizer as a run saves it."""
    peft_model = get_peft_model(model, LoraConfig(**LORA))
    torch.manual_seed(seed)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.02)
    peft_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def adapter(tmp_path):
    return save_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_path()), AutoTokenizer.from_pretrained(tiny_model_path()),
                        tmp_path / "adapter")


def logits(model, tokenizer, text="Can you tell me what 20 minus 8 is?"):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        return model(**ids).logits


def assert_merged_matches(adapter_dir, merged_dir, base=None):
    adapted, tok = load_trained(adapter_dir, base=base)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    expected = logits(adapted, tok)
    torch.testing.assert_close(logits(merged, AutoTokenizer.from_pretrained(merged_dir)), expected, atol=2e-5, rtol=1e-5)
    return expected


# ------------------------------------------------------------------- merging


def test_merged_model_computes_what_base_plus_adapter_computed(adapter, tmp_path):
    out = merge_adapter(adapter, str(tmp_path / "merged"))
    assert out == str(tmp_path / "merged")
    expected = assert_merged_matches(adapter, out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path()).eval()
    assert (logits(base, AutoTokenizer.from_pretrained(tiny_model_path())) - expected).abs().max() > 1e-2  # the adapter mattered
    files = set(os.listdir(out))
    assert {"model.safetensors", "config.json", "generation_config.json", MERGE_RECORD} <= files
    assert not {"adapter_config.json", "adapter_model.safetensors"} & files
    assert not [f for f in os.listdir(tmp_path) if "merging" in f]  # no staging folder left behind
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == AutoTokenizer.from_pretrained(tiny_model_path()).chat_template
    with open(os.path.join(out, MERGE_RECORD)) as f:
        assert json.load(f)["base"] == tiny_model_path()
    # and it is now an ordinary model folder for preftune too
    model, _ = load_trained(out)
    assert not hasattr(model, "peft_config")


def test_tokens_added_by_the_run_are_kept(tmp_path):
    """A base without a chat format, given ChatML by setup_chat_format before LoRA (new tokens, resized embeddings)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "</s>", "hello", "there", "user", "assistant", "how", "are", "you"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")
    base = str(tmp_path / "base")
    model = tiny_causal_lm("gpt2", vocab_size=len(tok))
    for config in (model.config, model.generation_config):
        config.bos_token_id = config.eos_token_id = tok.eos_token_id
    model.save_pretrained(base)
    tok.save_pretrained(base)

    model, tok = setup_chat_format(AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base))
    adapter = save_adapter(model, tok, tmp_path / "adapter")
    out = merge_adapter(adapter, str(tmp_path / "merged"))

    assert_merged_matches(adapter, out)  # the prompt holds the new <|im_start|> / <|im_end|> tokens
    merged_tok = AutoTokenizer.from_pretrained(out)
    assert len(merged_tok) == len(words) + 2 and merged_tok.chat_template == tok.chat_template
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == len(merged_tok)
    with open(os.path.join(out, "generation_config.json")) as f:  # answers stop at the new EOS
        assert json.load(f)["eos_token_id"] == merged_tok.convert_tokens_to_ids("<|im_end|>")


def test_adapter_from_the_trainer_merges(tmp_path):
    from preftune import ORPOConfig, ORPOTrainer
    from preftune.data.sources import load_preference_data

    args = ORPOConfig(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=2, learning_rate=5e-3,
                      save_strategy="no", report_to="none", use_cpu=True)
    trainer = ORPOTrainer(model=tiny_model_path(), args=args, train_dataset=load_preference_data("tiny-prefs", "train").select(range(2)),
                          peft_config=LoraConfig(**LORA))
    trainer.train()
    trainer.save_model(args.output_dir)
    assert_merged_matches(args.output_dir, merge_adapter(args.output_dir, str(tmp_path / "merged")))


def test_dtype_is_the_merged_models_dtype(adapter, tmp_path):
    out = merge_adapter(adapter, str(tmp_path / "merged"), dtype="bf16")
    assert AutoModelForCausalLM.from_pretrained(out, dtype="auto").dtype == torch.bfloat16


# ------------------------------------------------------------ what is refused


def test_a_stored_quantized_base_is_refused_unless_base_points_at_full_precision(adapter, tmp_path):
    quantized = tmp_path / "base-4bit"
    shutil.copytree(tiny_model_path(), quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantized / "config.json").write_text(json.dumps(config))
    adapter_config = os.path.join(adapter, "adapter_config.json")
    with open(adapter_config) as f:
        settings = json.load(f)
    with open(adapter_config, "w") as f:
        json.dump({**settings, "base_model_name_or_path": str(quantized)}, f)

    with pytest.raises(ConfigError, match="stores bitsandbytes weights.*pass --base pointing at the full-precision model"):
        merge_adapter(adapter, str(tmp_path / "merged"))
    assert not os.path.exists(tmp_path / "merged")
    out = merge_adapter(adapter, str(tmp_path / "merged"), base=tiny_model_path())
    assert_merged_matches(adapter, out, base=tiny_model_path())


@pytest.mark.parametrize("case, message", [
    ("full model", "holds no adapter_config.json; it already holds a full model"),
    ("missing", "is not a folder"),
    ("output is adapter", "is (or contains) the adapter folder"),
    ("output holds adapter", "is (or contains) the adapter folder"),
    ("output not empty", "already exists and is not empty; pass --overwrite"),
])
def test_bad_input_is_one_sentence_and_exit_2(adapter, tmp_path, capsys, case, message):
    adapter_dir, output = {
        "full model": (tiny_model_path(), tmp_path / "out"),
        "missing": (tmp_path / "nope", tmp_path / "out"),
        "output is adapter": (adapter, adapter),
        "output holds adapter": (adapter, tmp_path),
        "output not empty": (adapter, tmp_path / "out"),
    }[case]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        merge_adapter(str(adapter_dir), str(output))
    assert cli.main(["merge", "--adapter", str(adapter_dir), "--output", str(output)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("preftune: error: --") and message in err[-1]
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine" and os.path.isfile(os.path.join(adapter, "adapter_config.json"))


def test_missing_flags_are_user_errors(capsys):
    assert cli.main(["merge", "--adapter", "somewhere"]) == 2
    assert "the following arguments are required: --output" in capsys.readouterr().err
    assert cli.main(["merge", "--adapter", "a", "--output", "b", "--safe_serialization", "false"]) == 2
    assert "only as safetensors" in capsys.readouterr().err


# ------------------------------------------------------------ the command line


def test_cli_merges_and_overwrite_replaces_the_folder(adapter, tmp_path, capsys):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")  # stale: would make the folder look like an adapter
    argv = ["merge", "--adapter", adapter, "--output", str(out), "--safe_serialization"]
    assert cli.main(argv) == 2
    assert cli.main(argv + ["--overwrite"]) == 0
    assert f"merged model saved to {out}" in capsys.readouterr().out
    assert not (out / "adapter_config.json").exists()
    assert_merged_matches(adapter, str(out))
