"""Images of vision-language (VLM) preference pairs: reading them, and the prompt's token ids.

A VLM's ``processing_class`` is a processor (``LlavaProcessor``): a tokenizer plus an
image processor, with a chat template that writes one image placeholder
(``processor.image_token``, ``<image>`` for LLaVA) per ``{"type": "image"}`` entry of a
message's content. Calling the processor with the prompt text and the pair's images
expands each placeholder into the number of image tokens the model fills with image
features (e.g. (image_size / patch_size)² for LLaVA), so the prompt's ids are exactly
the ones the model expects. The completions hold no images and are tokenized as text.

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


def load_images(values: Sequence[Any] | None) -> list:
    return [load_image(v) for v in (values or ())]


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
