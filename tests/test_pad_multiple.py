"""pad_to_multiple_of: TRL's values are accepted, every collator pads to the multiple, log-probs do not change."""
import pytest
import torch
from PIL import Image
from transformers import HfArgumentParser

from preftune import DPOConfig, DPOTrainer, ORPOConfig
from preftune.data.collate import (EncoderDecoderCollator, PreferenceBatch, PreferenceCollator, Seq2SeqBatch,
                                   VisionPreferenceCollator)
from preftune.errors import ConfigError
from preftune.logps.causal import chunked_sequence_logps
from preftune.logps.prefix import shared_prefix_logps
from preftune.logps.seq2seq import encoder_decoder_logps

from .tiny import tiny_causal_lm, tiny_seq2seq_lm

# rows: prompt+chosen 2+3 = 5 and 3+1 = 4, prompt+rejected 2+1 = 3 and 3+2 = 5: longest 5
FEATURES = [{"prompt_ids": [11, 12], "chosen_ids": [21, 22, 2], "rejected_ids": [31]},
            {"prompt_ids": [13, 14, 15], "chosen_ids": [23], "rejected_ids": [32, 2]}]


@pytest.mark.parametrize("given, resolved", [("auto", None), ("none", None), ("NULL", None), (None, None),
                                             ("8", 8), (16, 16)])
def test_config_values(given, resolved):
    assert DPOConfig(output_dir="out", report_to="none", pad_to_multiple_of=given).pad_to_multiple_of == resolved
    assert ORPOConfig(output_dir="out", report_to="none", pad_to_multiple_of=given).pad_to_multiple_of == resolved


def test_config_defaults_and_command_line():
    args = DPOConfig(output_dir="out", report_to="none")
    assert (args.pad_to_multiple_of, args.padding_free, args.activation_offloading) == (None, False, False)
    (args,) = HfArgumentParser(DPOConfig).parse_args_into_dataclasses(
        ["--output_dir", "out", "--report_to", "none", "--pad_to_multiple_of", "64", "--padding_free",
         "--activation_offloading", "true"])
    assert (args.pad_to_multiple_of, args.padding_free, args.activation_offloading) == (64, True, True)
    (args,) = HfArgumentParser(DPOConfig).parse_args_into_dataclasses(
        ["--output_dir", "out", "--report_to", "none", "--pad_to_multiple_of", "none"])
    assert args.pad_to_multiple_of is None


@pytest.mark.parametrize("bad", ["eight", "1.5", 0, -8, True, 2.0])
def test_bad_values_name_the_flag(bad):
    with pytest.raises(ConfigError, match=r"^pad_to_multiple_of=.* must be a positive integer, 'auto' or 'none'\.$"):
        DPOConfig(output_dir="out", report_to="none", pad_to_multiple_of=bad)


def test_decoder_only_collator_shapes():
    out = PreferenceCollator(pad_token_id=0, pad_to_multiple_of=8)(FEATURES)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"input_ids": (4, 8), "attention_mask": (4, 8),
                                                          "completion_mask": (4, 8)}
    assert out["input_ids"][0].tolist() == [11, 12, 21, 22, 2, 0, 0, 0]
    assert out["attention_mask"].sum(1).tolist() == [5, 4, 3, 5]  # the real tokens are unchanged
    assert PreferenceCollator(0, pad_to_multiple_of=5)(FEATURES)["input_ids"].shape == (4, 5)  # already a multiple
    assert PreferenceCollator(0, pad_to_multiple_of=3)(FEATURES)["input_ids"].shape == (4, 6)


def test_encoder_decoder_collator_pads_prompts_and_completions():
    out = EncoderDecoderCollator(pad_token_id=0, pad_to_multiple_of=4)(FEATURES)
    # prompts 2 and 3 tokens -> 4; completions 3, 1, 1, 2 tokens -> 4
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "prompt_input_ids": (2, 4), "prompt_attention_mask": (2, 4), "completion_input_ids": (4, 4),
        "completion_mask": (4, 4)}
    assert out["prompt_input_ids"].tolist() == [[11, 12, 0, 0], [13, 14, 15, 0]]
    assert out["completion_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]]


def test_vision_collator_pads_the_text_rows():
    """The 2B text rows are padded like the plain collator's; image tensors have no sequence axis and are as given."""
    def image_processor(images, return_tensors):
        return {"pixel_values": torch.arange(len(images) * 12, dtype=torch.float32).reshape(len(images), 3, 2, 2)}

    features = [{**f, "images": [Image.new("RGB", (2, 2))]} for f in FEATURES]
    out = VisionPreferenceCollator(pad_token_id=0, pad_to_multiple_of=8, image_processor=image_processor)(features)
    assert out["input_ids"].shape == out["attention_mask"].shape == out["completion_mask"].shape == (4, 8)
    assert out["pixel_values"].shape == (4, 3, 2, 2)  # pairs' images for the chosen rows, then the rejected rows


def test_decoder_only_logps_unchanged():
    model = tiny_causal_lm("llama").eval()
    plain = PreferenceBatch.from_inputs(PreferenceCollator(0)(FEATURES))
    padded = PreferenceBatch.from_inputs(PreferenceCollator(0, pad_to_multiple_of=16)(FEATURES))
    assert padded.input_ids.shape == (4, 16)
    with torch.no_grad():
        for fn in (lambda b: chunked_sequence_logps(model, b.input_ids, b.attention_mask, b.completion_mask),
                   lambda b: shared_prefix_logps(model, b)):
            a, b = fn(plain), fn(padded)
            assert torch.allclose(a.completion_logps, b.completion_logps, atol=1e-6)
            assert torch.equal(a.completion_tokens, b.completion_tokens)


def test_encoder_decoder_logps_unchanged():
    model = tiny_seq2seq_lm("t5").eval()
    plain = Seq2SeqBatch.from_inputs(EncoderDecoderCollator(0)(FEATURES))
    padded = Seq2SeqBatch.from_inputs(EncoderDecoderCollator(0, pad_to_multiple_of=16)(FEATURES))
    with torch.no_grad():
        a, b = encoder_decoder_logps(model, plain), encoder_decoder_logps(model, padded)
    assert torch.allclose(a.completion_logps, b.completion_logps, atol=1e-6)


def test_trainer_collates_to_the_multiple(tmp_path):
    from .test_trainer import pairs, tiny

    losses = {}
    for multiple in (None, 64):
        model, tok = tiny()
        args = DPOConfig(output_dir=str(tmp_path), report_to="none", pad_to_multiple_of=multiple)
        trainer = DPOTrainer(model, args=args, processing_class=tok, train_dataset=pairs())
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        width = batch["input_ids"].shape[1]
        assert width % 64 == 0 if multiple else width < 64
        with torch.no_grad():
            losses[multiple] = trainer.compute_loss(trainer.model, batch).item()
    assert losses[64] == pytest.approx(losses[None], abs=1e-6)
