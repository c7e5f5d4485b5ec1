"""Tokenized pairs -> one padded batch holding chosen and rejected sequences.

The chosen and rejected sequences of B pairs are stacked into 2B rows so the
policy (and reference) run one forward pass per batch: rows ``[0, B)`` are
prompt + chosen, rows ``[B, 2B)`` prompt + rejected, in the same pair order.
Rows are right-padded to the longest row of this batch only.

Encoder-decoder models (T5, BART) get `EncoderDecoderCollator` instead: the prompt
is the encoder's input, once per pair (B rows), and the completions are the
decoder's targets, 2B rows in the same order (`Seq2SeqBatch`).

Vision-language models (LLaVA) get `VisionPreferenceCollator`: the same 2B text rows,
plus the image processor's outputs (``pixel_values``, and ``image_sizes`` etc. when
the processor gives them) for the images of the batch, in row order: the images of
pairs 0..B-1 for the chosen rows, then the same images again for the rejected rows
(the pair's images are duplicated, not shared: the vision tower runs on both copies).
The batch is a `VisionPreferenceBatch`.

List rows (one prompt, K scored answers: issue 17) get `ListCollator`: one row per answer,
prompt + answer, the rows of a prompt adjacent, with each row's prompt index (``groups``)
and score — a `ListBatch`. Prefix sharing packs each prompt's rows into one row.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from preftune.errors import ConfigError

BATCH_KEYS = ("input_ids", "attention_mask", "completion_mask")
SEQ2SEQ_KEYS = ("prompt_input_ids", "prompt_attention_mask", "completion_input_ids", "completion_mask")
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")  # optional float columns, one value per pair
LIST_KEYS = ("groups", "scores")  # a list batch's structure: the prompt of each row, each answer's score
LIST_COLUMNS = ("prompt_ids", "completion_ids", "scores")  # tokenized list rows
LIST_REF_COLUMN = "ref_completion_logps"  # optional: precomputed reference log-probs, one per answer


@dataclass(frozen=True)
class PreferenceBatch:
    """A padded batch of B preference pairs as 2B sequences.

    input_ids:       (2B, T) long — rows [0, B) prompt+chosen, rows [B, 2B)
                     prompt+rejected, right-padded with the pad token.
    attention_mask:  (2B, T) long — 1 on real tokens, 0 on padding.
    completion_mask: (2B, T) long — 1 exactly on the completion tokens (the ones
                     whose log-probs are scored), 0 on prompt and padding.
    ref_logps:       (2B,) float or None — precomputed reference log-probs of the
                     completions (chosen rows first), when the data carries them.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    ref_logps: torch.Tensor | None = None

    def __post_init__(self) -> None:
        shape = self.input_ids.shape
        if self.input_ids.dim() != 2 or shape[0] % 2:
            raise ValueError(f"input_ids must have shape (2B, T), got {tuple(shape)}")
        if self.attention_mask.shape != shape or self.completion_mask.shape != shape:
            raise ValueError(
                f"masks must match input_ids {tuple(shape)}, got attention_mask {tuple(self.attention_mask.shape)} and completion_mask {tuple(self.completion_mask.shape)}"
            )

    @classmethod
    def from_inputs(cls, inputs: Mapping[str, Any]) -> "PreferenceBatch":
        """Build from the collator's dict (extra keys are ignored)."""
        return cls(inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"], inputs.get("ref_logps"))

    @property
    def batch_size(self) -> int:
        """B, the number of pairs (half the rows)."""
        return self.input_ids.shape[0] // 2

    @property
    def row_groups(self) -> torch.Tensor:
        """(2B,) the pair of each row: rows b and B + b (chosen, rejected) share a prompt (prefix sharing's groups)."""
        return torch.arange(self.batch_size, device=self.input_ids.device).repeat(2)

    def to_dict(self) -> dict[str, torch.Tensor]:
        out = {k: getattr(self, k) for k in BATCH_KEYS}
        if self.ref_logps is not None:
            out["ref_logps"] = self.ref_logps
        return out


@dataclass(frozen=True)
class Seq2SeqBatch:
    """A padded batch of B preference pairs for an encoder-decoder model.

    prompt_input_ids:      (B, Tp) long — the encoder input, ONE row per pair (chosen
                           and rejected share it), right-padded with the pad token.
    prompt_attention_mask: (B, Tp) long — 1 on real prompt tokens.
    completion_input_ids:  (2B, Tc) long — the decoder targets: rows [0, B) chosen,
                           rows [B, 2B) rejected, right-padded with the pad token.
    completion_mask:       (2B, Tc) long — 1 on real completion tokens (all scored); it is
                           also the decoder's attention mask.
    ref_logps:             (2B,) float or None — precomputed reference log-probs.
    """

    prompt_input_ids: torch.Tensor
    prompt_attention_mask: torch.Tensor
    completion_input_ids: torch.Tensor
    completion_mask: torch.Tensor
    ref_logps: torch.Tensor | None = None

    def __post_init__(self) -> None:
        p, c = self.prompt_input_ids.shape, self.completion_input_ids.shape
        if self.prompt_input_ids.dim() != 2 or self.completion_input_ids.dim() != 2 or c[0] != 2 * p[0]:
            raise ValueError(f"prompt_input_ids must be (B, Tp) and completion_input_ids (2B, Tc), got {tuple(p)} and {tuple(c)}")
        if self.prompt_attention_mask.shape != p or self.completion_mask.shape != c:
            raise ValueError(
                f"masks must match their ids, got prompt_attention_mask {tuple(self.prompt_attention_mask.shape)} for {tuple(p)} "
                f"and completion_mask {tuple(self.completion_mask.shape)} for {tuple(c)}"
            )

    @classmethod
    def from_inputs(cls, inputs: Mapping[str, Any]) -> "Seq2SeqBatch":
        """Build from `EncoderDecoderCollator`'s dict (extra keys are ignored)."""
        return cls(*(inputs[k] for k in SEQ2SEQ_KEYS), inputs.get("ref_logps"))

    @property
    def batch_size(self) -> int:
        """B, the number of pairs."""
        return self.prompt_input_ids.shape[0]

    def to_dict(self) -> dict[str, torch.Tensor]:
        out = {k: getattr(self, k) for k in SEQ2SEQ_KEYS}
        if self.ref_logps is not None:
            out["ref_logps"] = self.ref_logps
        return out


@dataclass(frozen=True)
class VisionPreferenceBatch(PreferenceBatch):
    """A `PreferenceBatch` for a vision-language model, plus the image inputs of its 2B rows.

    vision_inputs: the image processor's tensors for the images of the rows, in row order
                   (chosen rows' images first, then the same images for the rejected rows),
                   e.g. ``pixel_values`` (n_images, C, H, W); passed to the model as keywords.
    """

    vision_inputs: Mapping[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def from_inputs(cls, inputs: Mapping[str, Any]) -> "VisionPreferenceBatch":
        """Build from `VisionPreferenceCollator`'s dict: every key that is not a text key is an image input."""
        vision = {k: v for k, v in inputs.items() if k not in (*BATCH_KEYS, "ref_logps")}
        return cls(inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"], inputs.get("ref_logps"),
                   vision)

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {**super().to_dict(), **self.vision_inputs}


@dataclass(frozen=True)
class ListBatch:
    """A padded batch of G list rows (one prompt, K_g scored answers each) as N = Σ K_g sequences.

    input_ids:       (N, T) long — prompt + answer, the rows of one prompt adjacent and in the row's
                     answer order, right-padded with the pad token.
    attention_mask:  (N, T) long — 1 on real tokens.
    completion_mask: (N, T) long — 1 exactly on the answer tokens.
    groups:          (N,) long — the prompt (0..G-1) each row answers, non-decreasing.
    scores:          (N,) float — each answer's score, higher is better.
    ref_logps:       (N,) float or None — precomputed reference log-probs of the answers.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    groups: torch.Tensor
    scores: torch.Tensor
    ref_logps: torch.Tensor | None = None

    def __post_init__(self) -> None:
        shape = self.input_ids.shape
        if self.input_ids.dim() != 2 or self.attention_mask.shape != shape or self.completion_mask.shape != shape:
            raise ValueError(f"input_ids and masks must share one (N, T) shape, got {tuple(shape)}, "
                             f"{tuple(self.attention_mask.shape)}, {tuple(self.completion_mask.shape)}")
        if self.groups.shape != shape[:1] or self.scores.shape != shape[:1]:
            raise ValueError(f"groups and scores must be ({shape[0]},), got {tuple(self.groups.shape)} and {tuple(self.scores.shape)}")

    @classmethod
    def from_inputs(cls, inputs: Mapping[str, Any]) -> "ListBatch":
        return cls(*(inputs[k] for k in (*BATCH_KEYS, *LIST_KEYS)), inputs.get("ref_logps"))

    @property
    def batch_size(self) -> int:
        """G, the number of prompts."""
        return int(self.groups[-1]) + 1 if self.groups.numel() else 0

    @property
    def row_groups(self) -> torch.Tensor:
        """(N,) the prompt of each row (prefix sharing's groups: one packed row per prompt)."""
        return self.groups

    def to_dict(self) -> dict[str, torch.Tensor]:
        out = {k: getattr(self, k) for k in (*BATCH_KEYS, *LIST_KEYS)}
        if self.ref_logps is not None:
            out["ref_logps"] = self.ref_logps
        return out


def batch_from_inputs(inputs: Mapping[str, Any]) -> "PreferenceBatch | Seq2SeqBatch | ListBatch":
    """The batch a collator's dict holds: `ListBatch` for list rows (``groups``), `Seq2SeqBatch` for
    encoder-decoder keys, `VisionPreferenceBatch` when it carries ``pixel_values``, else `PreferenceBatch`."""
    if "groups" in inputs:
        return ListBatch.from_inputs(inputs)
    if "prompt_input_ids" in inputs:
        return Seq2SeqBatch.from_inputs(inputs)
    if "pixel_values" in inputs:
        return VisionPreferenceBatch.from_inputs(inputs)
    return PreferenceBatch.from_inputs(inputs)


def _ids(value: Any) -> list[int]:
    return value.tolist() if hasattr(value, "tolist") else list(value)


def _check_pad(pad_token_id, pad_to_multiple_of):
    if pad_token_id is None or isinstance(pad_token_id, bool) or not isinstance(pad_token_id, numbers.Integral):
        raise ConfigError(f"The pad token id must be an integer, not {pad_token_id!r}; set tokenizer.pad_token (e.g. tokenizer.pad_token = tokenizer.eos_token).")
    if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
        raise ConfigError(f"pad_to_multiple_of must be a positive integer or None, not {pad_to_multiple_of!r}.")
    return int(pad_token_id)


def _ref_logps(features: Sequence[Mapping[str, Any]]) -> torch.Tensor | None:
    """(2B,) precomputed reference log-probs (chosen first) when the features carry them."""
    if REF_COLUMNS[0] not in features[0]:
        return None
    chosen = [float(f[REF_COLUMNS[0]]) for f in features]
    rejected = [float(f[REF_COLUMNS[1]]) for f in features]
    return torch.tensor(chosen + rejected, dtype=torch.float32)


def _pad_rows(rows: list[list[int]], prompt_lens: list[int], pad_token_id: int, multiple: int | None) -> dict:
    """Right-pad prompt+completion rows: input_ids, attention_mask, completion_mask (N, T) long."""
    width = max(len(r) for r in rows)
    if multiple:
        width = -(-width // multiple) * multiple
    input_ids, attention, completion = [], [], []
    for row, p_len in zip(rows, prompt_lens):
        n, pad = len(row), width - len(row)
        input_ids.append(row + [pad_token_id] * pad)
        attention.append([1] * n + [0] * pad)
        completion.append([0] * p_len + [1] * (n - p_len) + [0] * pad)
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "attention_mask": torch.tensor(attention, dtype=torch.long),
        "completion_mask": torch.tensor(completion, dtype=torch.long),
    }


@dataclass
class PaddingCollator:
    """What every collator here is given: the pad token and the multiple to pad lengths up to (checked)."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        self.pad_token_id = _check_pad(self.pad_token_id, self.pad_to_multiple_of)


@dataclass
class PreferenceCollator(PaddingCollator):
    """Collate features with ``prompt_ids``/``chosen_ids``/``rejected_ids`` (extra
    keys ignored) into a dict of long tensors: input_ids, attention_mask,
    completion_mask, each (2B, T), plus ``ref_logps`` (2B,) when the features carry
    ``ref_chosen_logps``/``ref_rejected_logps``; see `PreferenceBatch`."""

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty list of features")
        prompts = [_ids(f["prompt_ids"]) for f in features]
        rows = [p + _ids(f["chosen_ids"]) for p, f in zip(prompts, features)]
        rows += [p + _ids(f["rejected_ids"]) for p, f in zip(prompts, features)]
        batch = _pad_rows(rows, [len(p) for p in prompts] * 2, self.pad_token_id, self.pad_to_multiple_of)
        ref = _ref_logps(features)  # precomputed reference log-probs travel with their pairs
        if ref is not None:
            batch["ref_logps"] = ref
        return batch


@dataclass
class EncoderDecoderCollator(PaddingCollator):
    """Collate features with ``prompt_ids``/``chosen_ids``/``rejected_ids`` (extra keys
    ignored) for an encoder-decoder model: ``prompt_input_ids`` and
    ``prompt_attention_mask`` (B, Tp), one row per pair; ``completion_input_ids`` and
    ``completion_mask`` (2B, Tc), chosen rows first; ``ref_logps`` (2B,) when the
    features carry reference log-probs. Right-padded; see `Seq2SeqBatch`."""

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(max(len(r) for r in rows), 1)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = [r + [self.pad_token_id] * (width - len(r)) for r in rows]
        mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
        return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty list of features")
        prompt_ids, prompt_mask = self._pad([_ids(f["prompt_ids"]) for f in features])
        completions = [_ids(f["chosen_ids"]) for f in features] + [_ids(f["rejected_ids"]) for f in features]
        completion_ids, completion_mask = self._pad(completions)
        batch = {
            "prompt_input_ids": prompt_ids,
            "prompt_attention_mask": prompt_mask,
            "completion_input_ids": completion_ids,
            "completion_mask": completion_mask,
        }
        ref = _ref_logps(features)
        if ref is not None:
            batch["ref_logps"] = ref
        return batch


@dataclass
class VisionPreferenceCollator(PreferenceCollator):
    """`PreferenceCollator` plus the pairs' images, for a vision-language model (see the module docstring).

    image_processor: the processor's image processor (``processor.image_processor``). Features
    carry their images in ``images`` (a list per pair, or None / absent for a text-only pair); a
    batch without any image has no ``pixel_values`` and is a plain `PreferenceBatch`."""

    image_processor: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_processor is None:
            raise ConfigError("VisionPreferenceCollator needs the processor's image_processor.")

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        from preftune.data.images import load_images

        batch = super().__call__(features)
        images = [img for f in features for img in load_images(f.get("images"))]
        if images:
            encoded = self.image_processor(images=images, return_tensors="pt")
            for key, value in encoded.items():
                if isinstance(value, torch.Tensor):  # per image (or per patch): chosen rows, then rejected rows
                    batch[key] = torch.cat([value, value])
        return batch


@dataclass
class ListCollator(PaddingCollator):
    """Collate list rows — features with ``prompt_ids``, ``completion_ids`` (one list per answer) and
    ``scores`` (extra keys ignored) — into a `ListBatch`'s dict: input_ids, attention_mask,
    completion_mask (N, T), ``groups`` and ``scores`` (N,), plus ``ref_logps`` (N,) when the features
    carry ``ref_completion_logps``. The rows of a prompt are adjacent, in its answers' order."""

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty list of features")
        rows, prompt_lens, groups, scores = [], [], [], []
        for g, f in enumerate(features):
            prompt = _ids(f["prompt_ids"])
            answers = [_ids(a) for a in f["completion_ids"]]
            if len(answers) != len(f["scores"]):
                raise ValueError(f"list row {g} has {len(answers)} answers but {len(f['scores'])} scores")
            rows += [prompt + a for a in answers]
            prompt_lens += [len(prompt)] * len(answers)
            groups += [g] * len(answers)
            scores += [float(s) for s in f["scores"]]
        batch = _pad_rows(rows, prompt_lens, self.pad_token_id, self.pad_to_multiple_of)
        batch["groups"] = torch.tensor(groups, dtype=torch.long)
        batch["scores"] = torch.tensor(scores, dtype=torch.float32)
        if features[0].get(LIST_REF_COLUMN) is not None:
            batch["ref_logps"] = torch.tensor([float(v) for f in features for v in f[LIST_REF_COLUMN]],
                                              dtype=torch.float32)
        return batch
