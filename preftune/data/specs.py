"""Data set specs as written on the command line, and the ``--columns`` mapping.

``--dataset`` takes one or more specs (``--dataset a b`` or ``a,b``), each
``NAME[:CONFIG][@SPLIT][#N]``: ``:CONFIG`` picks a hub config, ``@SPLIT`` a split,
``#N`` a row count to sample. A path that exists is taken whole (once a ``#N``
is split off), so a file name holding ``:`` or ``@`` still works.

``--columns`` is a JSON object (``'{"q": "prompt"}'``) or ``SOURCE=TARGET`` pairs
(``q=prompt,good=chosen``); an empty, ``none`` or ``null`` target drops the column.
Parsing only here; `preftune.data.sources` applies specs and columns when loading.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Mapping

from preftune.errors import ConfigError, DataError
from preftune.data.files import is_local_name, looks_local


@dataclass(frozen=True)
class SourceSpec:
    """One parsed ``--dataset`` value."""

    text: str
    name: str
    config: str | None = None
    split: str | None = None
    count: int | None = None

    @property
    def label(self) -> str:
        return self.name if self.config is None else f"{self.name}:{self.config}"


def _split_count(spec: str) -> tuple[str, int | None]:
    if "#" in spec:
        name, _, count = spec.rpartition("#")
        if not count.isdigit() or int(count) < 1:
            raise DataError(f"dataset {spec!r}: the part after '#' must be a positive row count, e.g. {name}#1000.")
        return name, int(count)
    return spec, None


def spec_text(spec: SourceSpec, split: str | None = None) -> str:
    """The spec written back as text, with its split replaced when `split` is given."""
    split = split or spec.split
    text = spec.label + (f"@{split}" if split else "")
    return text + (f"#{spec.count}" if spec.count else "")


def parse_spec(text: str) -> SourceSpec:
    """``NAME[:CONFIG][@SPLIT][#N]`` -> SourceSpec; a path that exists is taken whole."""
    text = text.strip()
    if not text:
        raise DataError("an empty data set name was given; pass a hub id, a local file or folder, or a registry name.")
    name, count = _split_count(text)
    if is_local_name(name):
        return SourceSpec(text, name, count=count)
    split = config = None
    if "@" in name:
        name, _, split = name.rpartition("@")
        if not split or not name:
            raise DataError(f"dataset {text!r}: write NAME@SPLIT, e.g. {name or 'NAME'}@test.")
        if is_local_name(name):
            return SourceSpec(text, name, split=split, count=count)
    if ":" in name and not looks_local(name):
        name, _, config = name.partition(":")
        if not config or not name:
            raise DataError(f"dataset {text!r}: write NAME:CONFIG, e.g. {name or 'NAME'}:default.")
    return SourceSpec(text, name, config, split, count)


def split_specs(values: str | Iterable[str] | None) -> list[str]:
    """``["a,b", "c"]`` or ``"a,b"`` -> ``["a", "b", "c"]``."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    out = []
    for value in values:
        out.extend(part.strip() for part in str(value).split(",") if part.strip())
    return out


# ----------------------------------------------------------------------- columns


def parse_columns(value: str | Mapping[str, str | None] | None) -> dict[str, str | None] | None:
    """``'{"q": "prompt"}'`` or ``'q=prompt,good=chosen,junk='`` -> a mapping (empty/none/null: drop)."""
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        mapping = dict(value)
    else:
        text = str(value).strip()
        if text.startswith("{"):
            try:
                mapping = json.loads(text)
            except json.JSONDecodeError as err:
                raise ConfigError(f"--columns is not valid JSON ({err.msg} at column {err.colno}); write it as '{{\"q\": \"prompt\"}}' or q=prompt,good=chosen.") from None
            if not isinstance(mapping, dict):
                raise ConfigError("--columns must be a JSON object mapping column names to canonical names, e.g. '{\"q\": \"prompt\"}'.")
        else:
            mapping = {}
            for item in text.split(","):
                if not item.strip():
                    continue
                if "=" not in item:
                    raise ConfigError(f"--columns item {item.strip()!r} has no '='; write SOURCE=TARGET pairs, e.g. q=prompt,good=chosen.")
                source, _, target = item.partition("=")
                mapping[source.strip()] = target.strip()
    out = {}
    for source, target in mapping.items():
        if target is not None and not isinstance(target, str):
            raise ConfigError(f"--columns maps {source!r} to {target!r}; targets must be column names (or null to drop the column).")
        out[str(source)] = None if target is None or target.strip().lower() in ("", "none", "null") else target.strip()
    from preftune.data.formats import check_columns

    check_columns(out)
    return out
