"""Vision-language models (LLaVA) for DPO: a tiny LLaVA and its processor, built offline."""
import math

import numpy as np
import pytest
import torch
import transformers as tf
from datasets import Dataset
from PIL import Image

from preftune import DPOConfig, DPOTrainer
from preftune.data.collate import PreferenceBatch, VisionPreferenceBatch, VisionPreferenceCollator, batch_from_inputs
from preftune.data.prepare import prepare_dataset
from preftune.logps import LogpsOptions
from preftune.data.tokenize import LengthLimits
from preftune.errors import ConfigError, DataError
from preftune.logps.causal import plain_sequence_logps, sequence_logps
from preftune.models import load_model, load_processor
from preftune.logps.prefix import prefix_sharing_blockers
from preftune.train.reference import AdapterDisabledReference, ModelReference
from preftune.logps import LogpsRequest, choose_logps_path, is_vision_model
from tests.data.tiny_tokenizers import build

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IMAGE_SIZE, PATCH = 16, 8
N_IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2  # CLS dropped ("default" feature selection)


def build_processor():
    tok = build("chatml")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.chat_template = TEMPLATE
    image_processor = tf.CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                               crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return tf.LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=PATCH,
                             vision_feature_select_strategy="default", num_additional_image_tokens=1,
                             chat_template=TEMPLATE)


def build_model(vocab_size: int, image_token_id: int, seed: int = 0):
    torch.manual_seed(seed)
    vision = tf.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=16)
    text = tf.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2)
    config = tf.LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                            vision_feature_select_strategy="default", vision_feature_layer=-1)
    return tf.LlavaForConditionalGeneration(config)


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    """A real model folder: the tiny LLaVA and its processor, saved and reloaded by path."""
    folder = tmp_path_factory.mktemp("tiny-llava")
    processor = build_processor()
    model = build_model(len(processor.tokenizer), processor.tokenizer.convert_tokens_to_ids("<image>"))
    processor.save_pretrained(folder)
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def vlm(vlm_dir):
    return load_model(vlm_dir), load_processor(vlm_dir)


def image(seed, size=(20, 24)):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (*size, 3), dtype=np.uint8))


WORDS = "hello world how are you fine thanks good bad the cat sat on mat dog is answer yes no a b c d e f g h".split()


def rows(n=8, seed=0):
    """Rows in seed 004's vision shape: message-list prompt/chosen/rejected with content parts, and images."""
    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        def text(k):
            return " ".join(rng.choice(WORDS, k))
        n_images = 1 + i % 2
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": text(3)}]
        out.append({
            "images": [image(100 * i + j) for j in range(n_images)],
            "prompt": [{"role": "user", "content": content}],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": text(2 + i % 3)}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": text(3)}]}],
        })
    return out


def dataset(n=8, seed=0):
    return Dataset.from_list(rows(n, seed))


def image_token(processor):
    return processor.tokenizer.convert_tokens_to_ids("<image>")


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=2, learning_rate=5e-3, per_device_train_batch_size=4,
                per_device_eval_batch_size=4, save_strategy="no", report_to="none", logging_steps=1,
                max_length=64, max_prompt_length=None)
    return DPOConfig(**{**base, **kw})


# ------------------------------------------------------------------ model, data


def test_tiny_vlm_loads_from_a_folder_as_an_image_text_model(vlm, vlm_dir):
    model, processor = vlm
    assert isinstance(model, tf.LlavaForConditionalGeneration) and is_vision_model(model)
    assert isinstance(processor, tf.LlavaProcessor)
    assert any("vision-language" in b for b in prefix_sharing_blockers(model))  # prefix sharing is off


def test_image_tokens_are_never_truncated(vlm):
    _, processor = vlm
    img = image_token(processor)
    data = rows(6)
    prepared, report = prepare_dataset(Dataset.from_list(data), processor,
                                       LengthLimits(max_length=20, max_prompt_length=4))
    assert report.n_kept == 6 and report.n_truncated > 0
    assert prepared.column_names == ["prompt_ids", "chosen_ids", "rejected_ids", "images"]
    for row, src in zip(prepared, data):
        n_images = len(src["images"])
        assert len(row["images"]) == n_images
        assert row["prompt_ids"].count(img) == n_images * N_IMAGE_TOKENS  # every image token is still there
        text = processor.apply_chat_template(src["prompt"], add_generation_prompt=True, tokenize=False)
        full = processor(text=[text], images=src["images"], add_special_tokens=False)["input_ids"][0]
        assert row["prompt_ids"] == list(full)  # the prompt is whole, max_prompt_length notwithstanding
        assert len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"])) <= 20
    # a prompt that leaves no room for a completion drops its pair (counted), it is never cut
    prepared, report = prepare_dataset(Dataset.from_list(data), processor, LengthLimits(max_length=16,
                                                                                        max_prompt_length=4))
    assert report.n_dropped_empty_after_truncation == 3  # the three two-image rows (19 prompt ids)
    assert all(r["prompt_ids"].count(img) == N_IMAGE_TOKENS for r in prepared)


def test_list_rows_images_as_paths_and_mapped_column(vlm, tmp_path):
    _, processor = vlm
    data = rows(2)
    for i, row in enumerate(data):
        paths = []
        for j, im in enumerate(row.pop("images")):
            paths.append(str(tmp_path / f"{i}_{j}.png"))
            im.save(paths[-1])
        row["pics"] = paths
    prepared, _ = prepare_dataset(data, processor, LengthLimits(max_length=64, max_prompt_length=None), columns={"pics": "images"})
    assert [len(r["images"]) for r in prepared] == [1, 2]
    assert prepared[1]["prompt_ids"].count(image_token(processor)) == 2 * N_IMAGE_TOKENS


def test_image_placeholder_count_must_match_the_images(vlm):
    _, processor = vlm
    bad = rows(1)
    bad[0]["images"] = [image(1), image(2)]  # two images, one {"type": "image"} entry
    with pytest.raises(DataError, match="1 image placeholder .* 2 images"):
        prepare_dataset(bad, processor, LengthLimits(max_length=64, max_prompt_length=None))


def test_collator_adds_pixel_values_for_the_2b_rows(vlm):
    _, processor = vlm
    prepared, _ = prepare_dataset(dataset(3), processor, LengthLimits(max_length=64, max_prompt_length=None))
    features = [prepared[i] for i in range(3)]
    out = VisionPreferenceCollator(pad_token_id=0, image_processor=processor.image_processor)(features)
    images = [im for f in features for im in f["images"]]  # 1 + 2 + 1 images, pair order
    expected = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    assert out["input_ids"].shape[0] == 6
    assert torch.equal(out["pixel_values"], torch.cat([expected, expected]))  # chosen rows, then rejected rows
    batch = batch_from_inputs(out)
    assert isinstance(batch, VisionPreferenceBatch) and set(batch.vision_inputs) == {"pixel_values"}
    # the image tokens of the 2B rows match the images given, in order
    assert int((out["input_ids"] == image_token(processor)).sum()) == out["pixel_values"].shape[0] * N_IMAGE_TOKENS
    # text-only pairs give a plain batch
    text_only = [{k: f[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for f in features]
    plain = VisionPreferenceCollator(pad_token_id=0, image_processor=processor.image_processor)(text_only)
    assert "pixel_values" not in plain and type(batch_from_inputs(plain)) is PreferenceBatch


# ------------------------------------------------------------------ log-probs


def _textbook(model, batch, sequence_rows):
    """log_softmax of the model's own full logits, gathered at the next tokens."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, **batch.vision_inputs)
    logps = torch.log_softmax(out.logits[:, :-1].float(), -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    completion = batch.completion_mask[:, 1:].float()
    sequence = batch.attention_mask[:, 1:].float() * sequence_rows[:, None].float()
    return (logps * completion).sum(1), (logps * sequence).sum(1)


def test_logps_equal_the_plain_computation_values_and_gradients(vlm):
    model, processor = vlm
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    prepared, _ = prepare_dataset(dataset(4), processor, LengthLimits(max_length=64, max_prompt_length=None))
    collate = VisionPreferenceCollator(pad_token_id=0, image_processor=processor.image_processor)
    batch = batch_from_inputs(collate([prepared[i] for i in range(4)]))
    rows_ = torch.tensor([True] * 4 + [False] * 4)
    params = [p for p in model.parameters() if p.requires_grad]

    got = choose_logps_path(model, LogpsOptions(chunk_size=5))(model, batch, LogpsRequest(sequence_rows=rows_))  # chunked LM head
    comp, seq = _textbook(model, batch, rows_)
    assert torch.allclose(got.completion_logps, comp, atol=1e-5)
    assert torch.allclose(got.sequence_logps, seq, atol=1e-5)
    g_got = torch.autograd.grad((got.completion_logps * torch.arange(1., 9.)).sum() + got.sequence_logps.sum(),
                                params, allow_unused=True)
    g_ref = torch.autograd.grad((comp * torch.arange(1., 9.)).sum() + seq.sum(), params, allow_unused=True)
    vision_grads = 0
    for (name, _), a, b in zip([(n, p) for n, p in model.named_parameters() if p.requires_grad], g_got, g_ref):
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name
            vision_grads += "vision_tower" in name and bool(a.abs().sum() > 0)
    assert vision_grads > 0  # the loss reaches the image encoder
    plain = plain_sequence_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask,
                                 model_inputs=dict(batch.vision_inputs))
    assert torch.allclose(plain.completion_logps, comp, atol=1e-5)
    # the images are used: other pixels, other log-probs
    with torch.no_grad():
        other = sequence_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask,
                               model_inputs={"pixel_values": torch.randn_like(batch.vision_inputs["pixel_values"])})
    assert not torch.allclose(other.completion_logps, got.completion_logps.detach(), atol=1e-4)


# ------------------------------------------------------------------ training


METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected", "logits/chosen", "logits/rejected")


def test_dpo_trains_a_vlm_on_seed_004_data_with_the_processor(vlm, tmp_path):
    model, processor = vlm
    trainer = DPOTrainer(model, args=args(tmp_path), train_dataset=dataset(8), processing_class=processor)
    assert isinstance(trainer.reference, ModelReference) and isinstance(trainer.data_collator, VisionPreferenceCollator)
    assert "images" in trainer.train_dataset.column_names
    # a frozen copy of the policy: the loss is exactly log 2 before training
    assert trainer.evaluate(eval_dataset=dataset(4, seed=1))["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
    for name in METRICS:
        assert all(name in h and math.isfinite(h[name]) for h in logs), name
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any("vision_tower" in n for n in moved) and any("language_model" in n for n in moved)


def test_lora_on_the_language_model_with_adapter_disabled_reference(vlm, tmp_path):
    from peft import LoraConfig

    model, processor = vlm
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model, args=args(tmp_path), train_dataset=dataset(8), processing_class=processor,
                         peft_config=lora)
    assert isinstance(trainer.reference, AdapterDisabledReference)
    assert trainer.evaluate(eval_dataset=dataset(4, seed=1))["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
    trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n and "language_model" in n for n in trained)
    assert trainer.evaluate(eval_dataset=dataset(8))["eval_loss"] < math.log(2)


def test_precomputed_reference_log_probs(vlm, vlm_dir, tmp_path):
    model, processor = vlm
    trainer = DPOTrainer(model, args=args(tmp_path, precompute_ref_log_probs=True,
                                          ref_logps_cache_dir=str(tmp_path / "cache")),
                         train_dataset=dataset(8), processing_class=processor)
    data = trainer.train_dataset
    assert {"ref_chosen_logps", "images"} <= set(data.column_names)
    fresh = load_model(vlm_dir).eval()  # the policy before training is the reference
    batch = batch_from_inputs(trainer.data_collator([data[i] for i in range(4)]))
    with torch.no_grad():
        expected = choose_logps_path(fresh)(fresh, batch).completion_logps
    assert torch.allclose(batch.ref_logps, expected, atol=1e-4)
    trainer.train()
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)


def test_model_by_path_gets_its_processor(vlm_dir, tmp_path):
    trainer = DPOTrainer(vlm_dir, args=args(tmp_path, max_steps=1), train_dataset=dataset(4))
    assert isinstance(trainer.processing_class, tf.LlavaProcessor)
    assert isinstance(trainer.data_collator, VisionPreferenceCollator)


def test_vlm_with_a_tokenizer_and_image_data_is_refused(vlm, tmp_path):
    model, processor = vlm
    with pytest.raises(ConfigError, match="pass the model's processor"):
        DPOTrainer(model, args=args(tmp_path), train_dataset=dataset(2), processing_class=processor.tokenizer)


def test_cli_trains_a_vlm_from_a_jsonl_file_with_image_paths(vlm_dir, tmp_path, capsys):
    import json

    from preftune.cli import main as cli_main

    lines = []
    for i, row in enumerate(rows(8)):
        paths = []
        for j, im in enumerate(row.pop("images")):
            paths.append(str(tmp_path / f"img{i}_{j}.png"))
            im.save(paths[-1])
        lines.append(json.dumps({**row, "images": paths}))
    data = tmp_path / "vision.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    code = cli_main(["dpo", "--model", vlm_dir, "--dataset", str(data), "--max_steps", "2", "--max_length", "64",
                     "--max_prompt_length", "48", "--per_device_train_batch_size", "4", "--logging_steps", "1",
                     "--output_dir", str(out), "--report_to", "none", "--eval_strategy", "no"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    assert "prepared 8 pairs" in captured.out
    history = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [h["step"] for h in history if "loss" in h] == [1, 2]
    assert all(math.isfinite(h["loss"]) for h in history if "loss" in h)


# ------------------------------------------------------------------ TRL's vision format

def trl_rows(n=4, seed=0, key="image"):
    """TRL's vision format: one image in ``image`` (or a one-image list in ``images``), messages whose contents
    are strings; the processor's placeholders are added by preftune."""
    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        def text(k):
            return " ".join(rng.choice(WORDS, k))
        img = image(500 + i)
        out.append({
            key: img if key == "image" else [img],
            "prompt": [{"role": "user", "content": text(3)}],
            "chosen": [{"role": "assistant", "content": text(2 + i % 3)}],
            "rejected": [{"role": "assistant", "content": text(3)}],
        })
    return out


def _unpadded(out):
    rows = []
    for ids, att, cm in zip(out["input_ids"], out["attention_mask"], out["completion_mask"]):
        n = int(att.sum())
        rows.append((ids[:n].tolist(), cm[:n].tolist()))
    return rows


def test_trl_vision_format_gives_trls_vision_collator_batch():
    import copy

    trl = pytest.importorskip("trl.trainer.dpo_trainer")
    processor = build_processor()
    # the template without the newline after <|im_end|>: TRL keeps that newline in a completion, preftune ends it at EOS
    template = TEMPLATE.replace("<|im_end|>\n", "<|im_end|>")
    processor.chat_template = processor.tokenizer.chat_template = template
    data = trl_rows(3)
    prepared, report = prepare_dataset(Dataset.from_list(data), processor, LengthLimits(max_length=64))
    assert report.n_kept == 3 and prepared.column_names == ["prompt_ids", "chosen_ids", "rejected_ids", "images"]
    ours = VisionPreferenceCollator(pad_token_id=0, image_processor=processor.image_processor)([prepared[i] for i in range(3)])
    theirs = trl.DataCollatorForVisionPreference(processor=processor, max_length=64)(copy.deepcopy(data))
    assert _unpadded(ours) == _unpadded(theirs)
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
    assert all(r["prompt_ids"].count(image_token(processor)) == N_IMAGE_TOKENS for r in prepared)


def test_plain_string_prompts_with_images_get_the_placeholder(vlm):
    _, processor = vlm
    data = [{"images": [image(7), image(8)], "prompt": "the cat", "chosen": "yes", "rejected": "no"},
            {"images": [image(9)], "prompt": "<image> a dog", "chosen": "yes", "rejected": "no"}]  # already placed
    prepared, _ = prepare_dataset(data, processor, LengthLimits(max_length=64))
    first = processor(text=["<image><image>the cat"], images=data[0]["images"], add_special_tokens=False)["input_ids"][0]
    assert prepared[0]["prompt_ids"] == list(first)
    assert prepared[1]["prompt_ids"].count(image_token(processor)) == N_IMAGE_TOKENS
    assert prepared[0]["chosen_ids"] == processor.tokenizer("yes", add_special_tokens=False)["input_ids"] + [
        processor.tokenizer.eos_token_id]


def test_dpo_trains_a_vlm_on_trls_image_column(vlm, tmp_path):
    model, processor = vlm
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = DPOTrainer(model, args=args(tmp_path, max_prompt_length=None), train_dataset=Dataset.from_list(trl_rows(8)),
                         processing_class=processor)
    assert trainer.args.truncation_mode == "keep_start"
    assert "images" in trainer.train_dataset.column_names
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any("vision_tower" in n for n in moved)  # the images were used


def test_image_data_with_a_text_tokenizer_is_refused(vlm):
    _, processor = vlm
    for key in ("image", "images"):
        with pytest.raises(ConfigError, match=rf"^The data has images \(column '{key}'\) but .* is a text tokenizer"):
            prepare_dataset(Dataset.from_list(trl_rows(2, key=key)), processor.tokenizer, LengthLimits())
    # rows with no image at all (the column all None) are text data
    rows_ = [{**r, "image": None} for r in trl_rows(2)]
    prepared, _ = prepare_dataset(rows_, processor.tokenizer, LengthLimits())
    assert len(prepared) == 2


def test_text_only_model_with_image_data_is_refused(tmp_path):
    from tests.tiny import tiny_causal_lm

    from preftune import ORPOConfig, ORPOTrainer

    tok = build("chatml")
    model = tiny_causal_lm(vocab_size=len(tok))
    with pytest.raises(ConfigError, match="is a text tokenizer, not a vision-language model's processor"):
        ORPOTrainer(model, args=ORPOConfig(output_dir=str(tmp_path), max_steps=1, report_to="none", use_cpu=True),
                    train_dataset=Dataset.from_list(trl_rows(2)), processing_class=tok)


def _image_jsonl(tmp_path, rows_):
    import json

    lines = []
    for i, row in enumerate(rows_):
        path = str(tmp_path / f"trl{i}.png")
        row.pop("image").save(path)
        lines.append(json.dumps({**row, "image": path}))
    data = tmp_path / "trl_vision.jsonl"
    data.write_text("\n".join(lines) + "\n")
    return str(data)


def test_cli_refuses_image_data_for_a_text_model(tmp_path, capsys):
    from preftune.cli import main as cli_main

    data = _image_jsonl(tmp_path, trl_rows(4))
    code = cli_main(["orpo", "--dataset", data, "--max_steps", "1", "--output_dir", str(tmp_path / "run"),
                     "--report_to", "none", "--eval_strategy", "no"])
    err = capsys.readouterr().err
    assert code == 2 and "preftune: error: The data has images (column 'image')" in err and "Traceback" not in err


def test_data_inspect_counts_image_tokens_with_a_vlm(vlm_dir, tmp_path):
    from preftune.cli.inspect import inspect_dataset

    data = _image_jsonl(tmp_path, trl_rows(4))
    report = inspect_dataset(data, model=vlm_dir)
    assert report["pairs"] == 4 and report["image_column"] == "image"
    prepared, _ = prepare_dataset(Dataset.from_list(trl_rows(4)), load_processor(vlm_dir), LengthLimits(None))
    assert report["tokens"]["prompt"]["max"] == max(len(p) for p in prepared["prompt_ids"])  # image tokens counted
    assert all(p.count(image_token(load_processor(vlm_dir))) == N_IMAGE_TOKENS for p in prepared["prompt_ids"])
    text = inspect_dataset(data)  # the bundled text model: the text is measured, and a note says why not the images
    assert text["pairs"] == 4 and "image_column" in text
    assert any("the data has images (column 'image')" in n for n in text["notes"])
