"""The two sides `preftune ui` compares: the trained model and the model it started from.

For a LoRA adapter folder the starting model is the same weights with the adapter switched off
(no second copy in memory); for a full model folder, ``--base`` or the model recorded in the
run's ``preftune_command.json``; with neither, only the trained side (and a note why). Each side
answers through its own `preftune.apps.chat.ChatSession`, so chat's rules apply.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field

from preftune.apps.chat import ChatSession
from preftune.apps.generate import GenerationSettings
from preftune.errors import ConfigError, UserError


def settings(max_new_tokens: int = 256, temperature: float = 0.0) -> GenerationSettings:
    """The page's decoding: temperature 0 is greedy, above 0 samples at that temperature."""
    if temperature > 0:
        return GenerationSettings(max_new_tokens=max_new_tokens, do_sample=True, temperature=float(temperature))
    return GenerationSettings(max_new_tokens=max_new_tokens)


@dataclass
class Side:
    """One column of the page: a model, its tokenizer, its title; `adapter_off` runs it with its LoRA disabled."""

    model: object
    tokenizer: object
    label: str
    adapter_off: bool = False

    sessions: dict = field(default_factory=dict, repr=False, compare=False)

    def session(self, max_new_tokens: int, temperature: float) -> ChatSession:
        """The column's chat session (one per decoding setting): chat's rules for the template, the context
        and dropped turns. It answers conversations it is given; each browser tab keeps its own history."""
        key = (max_new_tokens, temperature)
        if key not in self.sessions:
            self.sessions[key] = ChatSession(self.model, self.tokenizer, settings(max_new_tokens, temperature))
        return self.sessions[key]

    def reply(self, messages: list[dict], max_new_tokens: int, temperature: float) -> str:
        session = self.session(max_new_tokens, temperature)
        with self.model.disable_adapter() if self.adapter_off else contextlib.nullcontext():
            return session.reply(messages).text


@dataclass
class Loaded:
    trained: Side
    base: Side | None
    notes: list = field(default_factory=list)


def recorded_base(path: str) -> str | None:
    """The model a run started from, as its output folder records it (or its parent's, for a checkpoint).

    `preftune_command.json` (written by the `preftune` command line) names it under
    `model`; `preftune_config.json` is read too, for a `model_name_or_path` or
    `model` entry, in case a caller recorded it there.
    """
    path = os.path.expanduser(path)
    for folder in (path, os.path.dirname(os.path.normpath(path))):
        for name, keys in (("preftune_command.json", ("model",)), ("preftune_config.json", ("model_name_or_path", "model"))):
            file = os.path.join(folder, name)
            if not os.path.isfile(file):
                continue
            try:
                with open(file) as f:
                    record = json.load(f)
            except (OSError, ValueError):
                continue
            for key in keys:
                value = record.get(key) if isinstance(record, dict) else None
                if isinstance(value, str) and value:
                    return value
    return None


def load_models(path: str, base: str | None = None, dtype=None, device: str | None = None) -> Loaded:
    """PATH (and --base) -> the trained side and the side it started from, with notes for the person."""
    from preftune.models import adapter_base, ensure_pad_token, is_adapter_folder, load_model, load_tokenizer, load_trained

    path = os.path.expanduser(path)
    if not os.path.isdir(path):
        raise ConfigError(f"PATH {path!r} is not a folder; pass a run's output folder (a trained model or LoRA adapter).")
    notes: list[str] = []
    if is_adapter_folder(path):
        model, tokenizer = load_trained(path, base=base, dtype=dtype, device=device)
        check_chat_template(tokenizer, path)
        base_name = base or adapter_base(path)
        trained = Side(model, tokenizer, f"trained ({path})")
        return Loaded(trained, Side(model, tokenizer, f"started from ({base_name})", adapter_off=True), notes)
    model, tokenizer = load_trained(path, dtype=dtype, device=device)
    check_chat_template(tokenizer, path)
    trained = Side(model, tokenizer, f"trained ({path})")
    base_name = base or recorded_base(path)
    if not base_name:
        notes.append(f"{path} is a full model and its run recorded no starting model, so only the trained model is "
                     f"shown; pass --base MODEL to compare with the model it started from.")
        return Loaded(trained, None, notes)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    try:
        base_model = load_model(base_name, kwargs)
        base_tokenizer = load_tokenizer(base_name)
    except UserError as err:
        if base:  # asked for by name: a failure is the user's to fix
            raise ConfigError(f"--base {base!r} could not be loaded: {err}") from None
        notes.append(f"the model this run started from ({base_name}) could not be loaded ({err}); only the trained "
                     f"model is shown; pass --base MODEL to compare.")
        return Loaded(trained, None, notes)
    if device:
        base_model = base_model.to(device)
    ensure_pad_token(base_tokenizer)
    if not getattr(base_tokenizer, "chat_template", None):
        base_tokenizer.chat_template = tokenizer.chat_template
        notes.append(f"{base_name}'s tokenizer has no chat template; it is prompted with the trained model's template.")
    return Loaded(trained, Side(base_model.eval(), base_tokenizer, f"started from ({base_name})"), notes)


def check_chat_template(tokenizer, path: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"the tokenizer of {path!r} has no chat template, so it cannot be chatted with; "
                          f"save the tokenizer the run trained with into that folder.")


