"""Images of vision-language (VLM) preference pairs: reading them, and the prompt's token ids.

A VLM's ``processing_class`` is a processor (``LlavaProcessor``): a tokenizer plus an
image processor, with a chat template that writes one image placeholder
(``processor.image_token``, ``<image>`` for LLaVA) per ``{"type": "image"}`` entry of a
message's content. Calling the processor with the prompt text and the pair's images
expands each placeholder into the number of image tokens the model fills with image
features (e.g. (image_size / patch_size)² for LLaVA), so the prompt's ids are exactly
the ones the model expects. The completions hold no images and are tokenized as text.

TRL's vision format is accepted as it is: an ``images`` column (a list) or an ``image``
column (one image), with message prompts whose contents are strings, or plain-string
prompts. `with_image_placeholders` gives such a pair the placeholders the processor
needs, as TRL's ``prepare_multimodal_messages`` does for a processor: every string
content becomes ``[{"type": "text", "text": ...}]`` and the first user message with a
string content gets one ``{"type": "image"}`` entry per image in front of its text
(only when the prompt holds no image entry yet). A plain-string prompt without the
placeholder gets ``placeholder * n_images`` in front of its text (TRL hands the string
to the processor as it is, which then refuses the count mismatch).

Images may be PIL images (a ``datasets.Image`` column, decoded), file paths, raw bytes,
or ``{"bytes": ..., "path": ...}`` dicts (an undecoded ``datasets.Image`` value); they
are converted to RGB.
"""
from __future__ import annotations

import io
from typing import Any, Sequence

from preftune.errors import DataError


def is_vision_processor(processing_class) -> bool:
    """True for a processor that holds an image processor and a tokenizer (a VLM's)."""
    return (getattr(processing_class, "image_processor", None) is not None
            and getattr(processing_class, "tokenizer", None) is not None)


def load_image(value: Any):
    """One image value (PIL image, path, bytes, or a datasets Image dict) -> an RGB PIL image."""
    from PIL import Image

    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict) and (value.get("bytes") is not None or value.get("path")):
        image = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") is not None else Image.open(value["path"])
    elif isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(bytes(value)))
    elif isinstance(value, str):
        image = Image.open(value)
    else:
        raise DataError(f"an image is {type(value).__name__}; expected a PIL image, a file path, bytes or a "
                        "datasets Image value.")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_images(values: Any) -> list:
    """A pair's images (a list, one image value, or None) -> RGB PIL images."""
    if values is None:
        return []
    if not isinstance(values, (list, tuple)):
        values = [values]  # TRL's one-image ``image`` column
    return [load_image(v) for v in values]


def _has_image_entry(messages: Sequence[dict]) -> bool:
    return any(isinstance(m.get("content"), list) and any(isinstance(c, dict) and c.get("type") == "image"
                                                           for c in m["content"]) for m in messages)


def _as_parts(messages: Sequence[dict], n_images: int) -> list:
    """String contents -> text parts; `n_images` image entries before the first string user content."""
    out, pending = [], n_images
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
            if message.get("role") == "user" and pending:
                parts = [{"type": "image"} for _ in range(pending)] + parts
                pending = 0
            message = {**message, "content": parts}
        out.append(message)
    return out


def with_image_placeholders(pair, processor):
    """`pair` as a vision-language model's processor renders it (see the module docstring)."""
    from dataclasses import replace

    n = len(pair.images or ())
    if pair.is_conversational:
        prompt = pair.prompt if isinstance(pair.prompt, list) else [{"role": "user", "content": pair.prompt}]
        n_new = 0 if _has_image_entry(prompt) else n
        return replace(pair, prompt=_as_parts(prompt, n_new), chosen=_as_parts(pair.chosen, 0),
                       rejected=_as_parts(pair.rejected, 0))
    placeholder = image_placeholder(processor)
    if n and placeholder is not None and placeholder not in pair.prompt:
        return replace(pair, prompt=placeholder * n + pair.prompt)
    return pair


def image_placeholder(processor) -> str | None:
    """The text a processor expands into image tokens (``<image>`` for LLaVA)."""
    token = getattr(processor, "image_token", None)
    return token if isinstance(token, str) and token else None


def image_prompt_ids(processor, prompt_text: str, images: Sequence[Any], where: str) -> list[int]:
    """The prompt's ids with every image placeholder expanded, as the processor does for the model
    (no special tokens added: the BOS rules of `preftune.data.tokenize` apply afterwards).

    Raises DataError when the prompt's placeholders do not match the images (one per image)."""
    placeholder = image_placeholder(processor)
    if placeholder is not None:
        found = prompt_text.count(placeholder)
        if found != len(images):
            raise DataError(
                f"{where}: the prompt has {found} image placeholder{'s' if found != 1 else ''} ({placeholder}) but the "
                f"row has {len(images)} image{'s' if len(images) != 1 else ''}; put one {{'type': 'image'}} entry in the "
                "user message's content per image (or the placeholder in a plain-text prompt)."
            )
    try:
        encoded = processor(text=[prompt_text], images=load_images(images), add_special_tokens=False)
    except (ValueError, OSError) as e:  # unreadable image, or the processor's own count check
        raise DataError(f"{where}: the processor rejected the prompt and its images ({str(e).splitlines()[0]}).") from None
    ids = encoded["input_ids"][0]
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)
