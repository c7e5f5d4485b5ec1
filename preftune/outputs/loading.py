"""How a trained model is loaded again, by the kind of model it is: what the model card tells a reader.

Three kinds, read from the model's config (`model_kind`):

- ``causal`` (decoder-only: Llama, Qwen, GPT-2, ...): ``AutoModelForCausalLM``, ``text-generation``;
  an adapter loads with peft's ``AutoPeftModelForCausalLM``.
- ``seq2seq`` (encoder-decoder: T5, BART; ``is_encoder_decoder``): ``AutoModelForSeq2SeqLM``,
  ``text2text-generation``; an adapter with ``AutoPeftModelForSeq2SeqLM``. The decoder's output is all answer.
- ``vision`` (vision-language: LLaVA and kin; a ``vision_config``): ``AutoModelForImageTextToText`` with
  ``AutoProcessor``, ``image-text-to-text``; an adapter with ``PeftModel.from_pretrained`` on that base,
  named by the adapter's own config.
"""
from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelKind:
    name: str
    auto_class: str  # the transformers class that loads a full model
    peft_class: str | None  # peft's AutoPeftModel class for an adapter; None: PeftModel on the base
    pipeline_tag: str
    described: str  # what the card calls a base model it cannot name


KINDS = {
    "causal": ModelKind("causal", "AutoModelForCausalLM", "AutoPeftModelForCausalLM", "text-generation",
                        "a causal language model"),
    "seq2seq": ModelKind("seq2seq", "AutoModelForSeq2SeqLM", "AutoPeftModelForSeq2SeqLM", "text2text-generation",
                         "an encoder-decoder (sequence-to-sequence) language model"),
    "vision": ModelKind("vision", "AutoModelForImageTextToText", None, "image-text-to-text",
                        "a vision-language model"),
}


def model_kind(model) -> str:
    """"vision", "seq2seq" or "causal" for a model (a PeftModel too) or its config."""
    config = getattr(model, "config", model)
    if getattr(config, "vision_config", None) is not None:
        return "vision"
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"


def kind_named(name: str | None) -> ModelKind:
    """The `ModelKind` called `name` (None: causal); a ValueError names the kinds there are."""
    if name is None:
        return KINDS["causal"]
    if name not in KINDS:
        raise ValueError(f"model_kind {name!r} is not one of {', '.join(KINDS)}")
    return KINDS[name]


_CHAT = """messages = [{"role": "user", "content": "Hello! What can you do?"}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
output = model.generate(**inputs, max_new_tokens=128)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))"""

_SEQ2SEQ = """# the encoder reads the prompt as training wrote it: through the chat template when the tokenizer has one
messages = [{"role": "user", "content": "Hello! What can you do?"}]
prompt = (tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
          if tokenizer.chat_template else messages[-1]["content"])
inputs = tokenizer(prompt, return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=128)
print(tokenizer.decode(output[0], skip_special_tokens=True))  # the decoder's tokens are all answer"""

_VISION = """messages = [{"role": "user", "content": [
    {"type": "image", "path": "picture.jpg"},  # a local image; or "url": "https://..."
    {"type": "text", "text": "What is in this picture?"},
]}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=128)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))"""


def _load(kind: ModelKind, q: str, adapter: bool) -> str:
    """The import and loading lines of the snippet; `q` is the quoted model id."""
    if kind.name == "vision":
        if adapter:
            return f"""from peft import PeftConfig, PeftModel
from transformers import {kind.auto_class}, AutoProcessor

base = {kind.auto_class}.from_pretrained(PeftConfig.from_pretrained({q}).base_model_name_or_path)
model = PeftModel.from_pretrained(base, {q})  # the base model with this adapter on top
processor = AutoProcessor.from_pretrained({q})
"""
        return f"""from transformers import {kind.auto_class}, AutoProcessor

model = {kind.auto_class}.from_pretrained({q})
processor = AutoProcessor.from_pretrained({q})
"""
    if adapter:
        return f"""from peft import {kind.peft_class}
from transformers import AutoTokenizer

model = {kind.peft_class}.from_pretrained({q})  # the base model with this adapter on top
tokenizer = AutoTokenizer.from_pretrained({q})
"""
    return f"""from transformers import {kind.auto_class}, AutoTokenizer

model = {kind.auto_class}.from_pretrained({q})
tokenizer = AutoTokenizer.from_pretrained({q})
"""


def usage(model_id: str, adapter: bool, local_dir: str, kind: str | None = None) -> str:
    """The card's "How to use": a Python snippet that loads `model_id` and answers one message, then the
    preftune commands, which take a local folder (`local_dir`). `kind` is a name of `KINDS` (default causal)."""
    k = kind_named(kind)
    load = _load(k, json.dumps(model_id), adapter)
    talk = {"causal": _CHAT, "seq2seq": _SEQ2SEQ, "vision": _VISION}[k.name]
    extra = ""
    if adapter:
        extra = "\n\nTo fold the adapter into the base weights: `model = model.merge_and_unload()` in Python"
        extra += "." if k.name == "vision" else f", or `preftune merge --adapter {local_dir} --output MERGED_DIR`."
    text = f"```python\n{load}\n{talk}\n```{extra}"
    if k.name == "vision":  # preftune chat and ui are text-only
        return text
    download = f"hf download {model_id} --local-dir {local_dir}\n" if local_dir != model_id else ""
    where = "Or talk to it in the terminal" if k.name == "causal" else \
        "Or, when its tokenizer has a chat template, talk to it in the terminal"
    return f"{text}\n\n{where}:\n\n```bash\n{download}preftune chat {local_dir}\n```"
