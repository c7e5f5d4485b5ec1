"""Loading the policy and its tokenizer; LoRA; the ChatML chat format.

A model given by name goes through `AutoModelForCausalLM.from_pretrained`, or
`AutoModelForSeq2SeqLM.from_pretrained` when its config says ``is_encoder_decoder``
(T5, BART), or `AutoModelForImageTextToText.from_pretrained` when it has a
``vision_config`` (LLaVA; its processing class is then a processor, `load_processor`),
so a hub id and a local folder take the same path. Tokens never appear
in what we log.
"""
from __future__ import annotations

import logging

import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedModel

from preftune.errors import ConfigError

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(value):
    """'auto' | a dtype name | a torch.dtype -> what from_pretrained expects."""
    if value is None or value == "auto" or isinstance(value, torch.dtype):
        return value
    if value in _DTYPES:
        return _DTYPES[value]
    raise ConfigError(f"dtype={value!r} is not known; use auto, bf16, fp16 or fp32.")


def check_model_ref(name_or_path: str) -> None:
    """Fail early, in words, on a local path that is not there (before any download is tried)."""
    import os

    looks_local = name_or_path.startswith(("/", "./", "../", "~")) or os.sep + os.sep in name_or_path
    if looks_local and not os.path.isdir(os.path.expanduser(name_or_path)):
        raise ConfigError(f"model path {name_or_path!r} does not exist; pass a local model folder or a hub id.")


def check_model_config(name_or_path: str, trust_remote_code: bool = False):
    """Read only the model's config.json (a few KB): a wrong id, a folder without a model, or an
    unknown architecture fails here, before any data is read or weights are downloaded. Returns the config."""
    from transformers import AutoConfig

    check_model_ref(name_or_path)
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model {name_or_path!r} cannot be used: {first}") from None


# from_pretrained kwargs that also locate or authorize the config (the rest configure the weights).
_CONFIG_KWARGS = ("trust_remote_code", "revision", "token", "cache_dir", "local_files_only", "subfolder")


def load_model(name_or_path: str, init_kwargs: dict | None = None) -> PreTrainedModel:
    """Load a causal LM, or a seq2seq LM when the config says is_encoder_decoder, by hub id or local path."""
    from transformers import AutoConfig

    check_model_ref(name_or_path)
    kwargs = dict(init_kwargs or {})
    kwargs.setdefault("trust_remote_code", False)  # never run a model's own code unless asked (and never prompt)
    for key in ("dtype", "torch_dtype"):
        if key in kwargs:
            kwargs["dtype"] = resolve_dtype(kwargs.pop(key))
    import pickle

    try:
        config = AutoConfig.from_pretrained(name_or_path, **{k: kwargs[k] for k in _CONFIG_KWARGS if k in kwargs})
        if getattr(config, "vision_config", None) is not None:  # a vision-language model (LLaVA)
            from transformers import AutoModelForImageTextToText as auto
        else:
            auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        return auto.from_pretrained(name_or_path, **kwargs)
    except pickle.UnpicklingError:  # torch.load(weights_only=True) refused it; nothing in it ran
        raise ConfigError(f"could not load model {name_or_path!r}: its weights file is a pickle holding more than "
                          "tensors, so it was not loaded; use a .safetensors copy from a source you trust.") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"could not load model {name_or_path!r}: {_first_line(err)}") from err


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    check_model_ref(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"could not load the tokenizer of {name_or_path!r}: {_first_line(err)}") from err


def load_processor(name_or_path: str, trust_remote_code: bool = False):
    """A vision-language model's processor (tokenizer + image processor), by hub id or local path."""
    from transformers import AutoProcessor

    check_model_ref(name_or_path)
    try:
        return AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"could not load the processor of {name_or_path!r}: {_first_line(err)}") from err


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def text_tokenizer(processing_class):
    """The tokenizer inside a processor (VLMs), or the tokenizer itself."""
    return getattr(processing_class, "tokenizer", processing_class)


def ensure_pad_token(tokenizer) -> None:
    """Give a tokenizer without a pad token its EOS as pad (padding is masked out anyway)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError("the tokenizer has neither a pad token nor an EOS token; set tokenizer.pad_token.")
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("tokenizer has no pad token; using its EOS token %r for padding", tokenizer.eos_token)


def set_pad_token(tokenizer, token: str | None) -> None:
    """Make `token` (a config's ``pad_token``) the tokenizer's pad token; it must already be in the vocabulary."""
    if token is None:
        return
    if token not in tokenizer.get_vocab():
        raise ConfigError(f"pad_token={token!r} is not in the tokenizer's vocabulary; pass one of its tokens "
                          f"(e.g. its EOS token {tokenizer.eos_token!r}) or add it to the tokenizer first.")
    tokenizer.pad_token = token


CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def setup_chat_format(model, tokenizer, format: str = "chatml", resize_to_multiple_of: int | None = None):
    """Give a model and tokenizer the ChatML format (as TRL's `setup_chat_format`).

    Adds <|im_start|> / <|im_end|> as special tokens, makes <|im_start|> the BOS and
    <|im_end|> the EOS and pad token, sets the chat template, and resizes the
    embeddings to the new vocabulary (optionally to a multiple, for speed).
    Returns (model, tokenizer).
    """
    if format != "chatml":
        raise ConfigError(f"chat format {format!r} is not supported; use 'chatml'.")
    if getattr(tokenizer, "chat_template", None):
        raise ConfigError("the tokenizer already has a chat template; setup_chat_format would replace it, remove it first.")
    tokenizer.add_special_tokens(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
         "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=resize_to_multiple_of)
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None:
            config.bos_token_id = tokenizer.bos_token_id
            config.eos_token_id = tokenizer.eos_token_id
            config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off: `nn.Dropout` modules, and the float rates that layers pass to functional dropout
    (T5's attention `dropout`, BART's `dropout`/`activation_dropout`/`attention_dropout`, `layerdrop`)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if type(value) is float and ("dropout" in name or name == "layerdrop"):
                setattr(module, name, 0.0)


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def apply_peft(model, peft_config, gradient_checkpointing: bool = False):
    """Wrap the model with a LoRA (or other PEFT) adapter; k-bit models are prepared first."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if is_peft_model(model):
        raise ConfigError("the model already has a PEFT adapter; pass it without peft_config, or pass the base model.")
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    if quantized and not getattr(model, "_preftune_kbit_prepared", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        # With frozen embeddings, checkpointed blocks need inputs that require grad.
        model.enable_input_require_grads()
    if getattr(model.config, "is_encoder_decoder", False) and getattr(peft_config, "task_type", None) == "CAUSAL_LM":
        import copy

        peft_config = copy.deepcopy(peft_config)  # the command line's LoRA config says CAUSAL_LM before the model is known
        peft_config.task_type = "SEQ_2_SEQ_LM"
        logger.info("encoder-decoder model: LoRA task_type CAUSAL_LM changed to SEQ_2_SEQ_LM")
    return get_peft_model(model, peft_config)


def is_adapter_folder(path: str) -> bool:
    import os

    return os.path.isfile(os.path.join(os.path.expanduser(path), "adapter_config.json"))


def adapter_base(path: str) -> str:
    """The base model an adapter folder was trained on (from its adapter_config.json)."""
    import json
    import os

    with open(os.path.join(os.path.expanduser(path), "adapter_config.json")) as f:
        base = json.load(f).get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{path}/adapter_config.json names no base_model_name_or_path; pass the base model explicitly.")
    return base


def load_trained(path: str, base: str | None = None, dtype=None, device: str | None = None):
    """A trained output folder -> (model in eval mode, tokenizer).

    A full model folder loads as is; an adapter folder (adapter_config.json) loads its
    base model (from the adapter's config, or `base`) with the adapter on top. The
    tokenizer comes from the folder itself when saved there (it carries the chat
    format the run trained with), else from the base.
    """
    import os

    path = os.path.expanduser(path)
    if not os.path.isdir(path):
        raise ConfigError(f"{path!r} is not a folder; pass a trained model or adapter folder (a run's output_dir).")
    kwargs = {"dtype": resolve_dtype(dtype)} if dtype is not None else {}
    if is_adapter_folder(path):
        from peft import PeftModel

        base = base or adapter_base(path)
        model = load_model(base, kwargs)
        tokenizer_src = path if _has_tokenizer(path) else base
        tokenizer = load_tokenizer(tokenizer_src)
        if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))  # the run added tokens (setup_chat_format)
        model = PeftModel.from_pretrained(model, path)
    else:
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError(f"{path!r} holds neither a model (config.json) nor an adapter (adapter_config.json).")
        model = load_model(path, kwargs)
        tokenizer = load_tokenizer(path)
    if device:
        model = model.to(device)
    ensure_pad_token(tokenizer)
    return model.eval(), tokenizer


def _has_tokenizer(path: str) -> bool:
    import os

    return any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
