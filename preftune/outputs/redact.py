"""Nothing secret or machine-specific leaves in a file meant to be shared.

Configs (the model card, preftune_config.json, training_args.bin) lose every string under a
key naming a token and have absolute paths replaced by their last component; command lines
(preftune_command.json, the resume command printed after a stop) lose the value of every
``--*token*`` flag and the tokens inside JSON arguments such as ``--model_init_kwargs``.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
_FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt", ".tsv", ".yaml", ".yml")
REDACTED = "<redacted>"


def is_hub_id(name) -> bool:
    """`owner/name` that is not a local path or a data file (what the hub's front matter accepts)."""
    if not isinstance(name, str) or not _HUB_ID.match(name) or ".." in name:
        return False
    if name.lower().endswith(_FILE_SUFFIXES):
        return False
    return not os.path.exists(name)


def redact_config(config: Any) -> Any:
    """A copy of `config` without secrets: every key containing "token" whose value is a
    string (hub_token, token, ...) is dropped, at any depth (model_init_kwargs, ...)."""
    if isinstance(config, Mapping):
        return {k: redact_config(v) for k, v in config.items()
                if not ("token" in str(k).lower() and isinstance(v, str))}
    if isinstance(config, (list, tuple)):
        return [redact_config(v) for v in config]
    return config


def local_name(name):
    """A model, data set or folder as a file meant to be shared names it: hub ids as they are, a local
    path by its last component (`/home/me/models/tiny-llama` -> `tiny-llama`), so that no path of the
    training machine is published."""
    if not isinstance(name, str) or not name or is_hub_id(name):
        return name
    return os.path.basename(os.path.normpath(os.path.expanduser(name))) or name


def shareable_config(config: Any) -> Any:
    """`redact_config`, and every absolute path (output_dir, cache folders, ...) by its last component."""
    config = redact_config(config)
    if isinstance(config, Mapping):
        return {k: shareable_config(v) for k, v in config.items()}
    if isinstance(config, list):
        return [shareable_config(v) for v in config]
    if isinstance(config, str) and os.path.isabs(os.path.expanduser(config)) and len(config) > 1:
        return local_name(config)
    return config


def redact_argv(argv: list[str]) -> list[str]:
    """argv with every token value replaced by <redacted> (flags named *token*, JSON dicts holding one)."""
    shown = [(REDACTED if i and "token" in argv[i - 1] and argv[i - 1].startswith("--") else a) for i, a in enumerate(argv)]
    shown = [a.split("=", 1)[0] + "=" + REDACTED if a.startswith("--") and "token" in a and "=" in a else a for a in shown]
    return [redact_json_arg(a) for a in shown]  # e.g. --model_init_kwargs '{"token": "..."}'


def redact_json_arg(arg: str) -> str:
    """A command-line word holding a JSON object (``{...}`` or ``--flag={...}``) without its token keys."""
    prefix, _, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
    try:
        obj = json.loads(value)
    except ValueError:
        return arg
    if not isinstance(obj, dict):
        return arg
    redacted = json.dumps(redact_config(obj))
    return f"{prefix}={redacted}" if prefix else redacted
