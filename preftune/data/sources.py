"""Loading preference data: by name, path or registry entry; sampling; mixing; the eval set.

A data set spec (``--dataset``) is one of, tried in this order:

- ``tiny-prefs``: the bundled demo set (a folder with train/test JSONL files);
- a local ``.json`` / ``.jsonl`` / ``.csv`` / ``.parquet`` file (one split, ``train``),
  or a folder of such files named by split (``train.jsonl``, ``test-0001.parquet``);
- a name from `preftune.data.registry` (registry name, alias or hub id), loaded from
  the hub and run through its preprocessor;
- any other hub data set id.

Suffixes: ``NAME:CONFIG`` picks a hub config, ``NAME@SPLIT`` a split, ``NAME#N``
keeps N rows sampled with the run's seed (more than the set holds: whole copies
plus a random remainder, as ms-swift does). Several specs (``--dataset a b`` or
``a,b``) are concatenated.

Every row is checked when the data is loaded, and a bad row (or a broken JSON
line) is reported with where it came from, or dropped and counted with
``skip_bad_rows``. Checking a row normalises it into a `PreferencePair`; the pairs
of the returned data set travel with it (`LoadedData.pairs`) to `preftune.data.prepare`,
which tokenizes them without normalising the rows again.

This module loads, samples, mixes and splits; the pieces it uses live beside it:
`preftune.data.specs` (spec and ``--columns`` syntax), `preftune.data.files` (local
files and the JSON-lines checks), `preftune.data.rows` (`LoadedData`, row origins
and the row checks). The names callers need from them are importable from here too.

Decisions:

- Sets with the same columns and types are concatenated as they are; otherwise
  each row is normalised to ``prompt`` / ``chosen`` / ``rejected`` first, and if
  some sets are conversational (message lists) and others plain strings, the
  plain pairs become one user and one assistant message (a note says so), so that
  the whole mix is formatted with the chat template.
- List data (several scored answers per prompt, `preftune.data.lists`): when any set's
  columns hold lists, every row of every set is normalised into a `ScoredList` (a pair
  row is a list of two) and `LoadedData.is_lists` is True; sets with different columns
  are then mixed as ``prompt`` / ``completions`` / ``scores`` rows.
- ``columns`` renames columns of data sets that are not in the registry (registry
  sets are mapped by their own preprocessor); mapping a column to None drops it,
  and a mapped column wins over one that already has the target name.
"""
from __future__ import annotations

import math
import os
from dataclasses import replace
from typing import Iterable, Mapping, Sequence

from preftune.data import registry
from preftune.data.files import BUNDLED, first_line, local_splits, read_local, resolve_local
from preftune.data.lists import ScoredList
from preftune.data.pairs import PreferencePair
from preftune.data.rows import LoadedData, SourcePart
from preftune.data.specs import SourceSpec, parse_columns, parse_spec, spec_text, split_specs
from preftune.errors import ConfigError, DataError

__all__ = [  # with the names of specs, files and rows that callers reach through this module
    "BUNDLED", "LoadedData", "SourcePart", "SourceSpec", "default_eval_split", "hub_split_names", "load_preference_data",
    "load_sources", "parse_columns", "parse_spec", "spec_text", "split_off_eval", "split_specs", "train_and_eval",
]


# ----------------------------------------------------------------------- loading


def _hub_error(name: str, split: str, err: Exception) -> DataError:
    if registry.lookup(name) is not None:
        hint = "; the registry loads it from the hub (or the hub cache), so connect once or pass a local copy of the files."
    else:
        near = [n for n in registry.suggest(name) if n.lower() != name.lower()]
        hint = f"; did you mean {' or '.join(near)}?" if near else "; check the name, or pass a local file or a registry name (preftune data list)."
    return DataError(f"could not load dataset {name!r} (split {split!r}): {first_line(err)}{hint}")


def hub_split_names(name: str, config: str | None = None) -> list[str] | None:
    """The split names of a hub data set, or None when they cannot be found (offline)."""
    import datasets

    try:
        return list(datasets.get_dataset_split_names(name, config))
    except Exception:  # noqa: BLE001 - offline, gated, unknown: we only want a hint
        return None


def _apply_columns(ds, mapping: Mapping[str, str | None], label: str):
    names = list(ds.column_names)
    missing = [s for s in mapping if s not in names]
    if missing:
        raise DataError(f"dataset {label!r} has no column {', '.join(repr(m) for m in missing)} named in --columns (it has {', '.join(names)}).")
    targets = {t for t in mapping.values() if t is not None}
    drop = [c for c in names if (c in mapping and mapping[c] is None) or (c in targets and c not in mapping)]
    if drop:
        ds = ds.remove_columns(drop)
    rename = {s: t for s, t in mapping.items() if t is not None and s != t}
    return ds.rename_columns(rename) if rename else ds


def _load_part(spec: SourceSpec, split: str | None, *, config: str | None, columns, skip_bad_rows: bool) -> SourcePart:
    import datasets

    local = resolve_local(spec.name)
    if local is not None:
        read = read_local(spec.name, local, spec.split or split or "train", skip_bad_rows)
        ds = _apply_columns(read.dataset, columns, spec.name) if columns else read.dataset
        return SourcePart(spec, ds, read.split, read.files, read.json_lines, read.skipped_lines, read.n_bad_lines)

    entry = registry.lookup(spec.name)
    if entry is not None:
        wanted = spec.split or split or entry.train_split
        kwargs = {"data_files": list(entry.data_files)} if entry.data_files else {}
        try:
            raw = datasets.load_dataset(entry.hub_id, spec.config or config or entry.config, split=wanted, **kwargs)
        except Exception as err:  # noqa: BLE001 - offline, unknown split, ...: one sentence
            raise _hub_error(entry.hub_id, wanted, err) from None
        ds = raw.map(entry.preprocess, remove_columns=raw.column_names, desc=f"preprocessing {entry.name}")
        return SourcePart(spec, ds, wanted)

    wanted = spec.split or split or "train"
    try:
        ds = datasets.load_dataset(spec.name, spec.config or config, split=wanted)
    except Exception as err:  # noqa: BLE001
        raise _hub_error(spec.name, wanted, err) from None
    if columns:
        ds = _apply_columns(ds, columns, spec.label)
    return SourcePart(spec, ds, wanted)


def _sample(part: SourcePart, count: int, seed: int) -> tuple[list[int], str | None]:
    import numpy as np

    n = len(part.dataset)
    if n == 0 or count == n:
        return list(range(n)), None
    rng = np.random.RandomState(seed)
    if count < n:
        return sorted(rng.permutation(n)[:count].tolist()), None
    idx = list(range(n)) * (count // n) + sorted(rng.permutation(n)[: count % n].tolist())
    return idx, f"{part.spec.label} has {n} rows, fewer than the {count} asked for, so rows repeat ({count // n} whole copies + {count % n} sampled)."


def _as_conversational(pair: PreferencePair | ScoredList) -> PreferencePair | ScoredList:
    if isinstance(pair, ScoredList):
        return pair.as_conversational()
    prompt = pair.prompt if isinstance(pair.prompt, list) else [{"role": "user", "content": pair.prompt}]
    chosen = pair.chosen if isinstance(pair.chosen, list) else [{"role": "assistant", "content": pair.chosen}]
    rejected = pair.rejected if isinstance(pair.rejected, list) else [{"role": "assistant", "content": pair.rejected}]
    return replace(pair, prompt=prompt, chosen=chosen, rejected=rejected)  # images, tools, template kwargs kept


# ------------------------------------------------------------------------- entry


def load_sources(
    specs: str | Iterable[str],
    split: str | None = None,
    *,
    config: str | None = None,
    columns: Mapping[str, str | None] | None = None,
    seed: int = 42,
    skip_bad_rows: bool = False,
    check_rows: bool = True,
) -> LoadedData:
    """Load, sample, check and mix data set specs (see the module docstring)."""
    import datasets

    texts = split_specs(specs)
    if not texts:
        raise DataError("no data set was given; pass --dataset with a hub id, a local file or folder, or a registry name.")
    parsed = [parse_spec(t) for t in texts]
    mapped = columns if columns else None
    if mapped and all(registry.lookup(s.name) and resolve_local(s.name) is None for s in parsed):
        raise ConfigError("--columns renames columns of data sets outside the registry, and every data set given is a registry entry (mapped by its own preprocessor); drop --columns.")
    parts = [_load_part(s, split, config=config, columns=mapped, skip_bad_rows=skip_bad_rows) for s in parsed]
    notes: list[str] = []
    selections: list[list[int] | None] = []
    for i, part in enumerate(parts):
        if part.spec.count is None:
            selections.append(None)
            continue
        idx, note = _sample(part, part.spec.count, seed + i)
        selections.append(idx)
        if note:
            notes.append(note)

    alone = len(parts) == 1
    as_lists = any(p.holds_lists for p in parts)  # list data: every row becomes a list row (pairs: lists of two)
    same = all(p.dataset.features == parts[0].dataset.features for p in parts[1:])
    pieces = []  # (part, rows kept in order (None: all of them), their pairs or None)
    for part, sel in zip(parts, selections):
        rows, pairs = sel, None
        if check_rows:
            checked = part.check_rows(sel, alone=alone, skip_bad_rows=skip_bad_rows, lists=as_lists)
            pairs = checked.pairs
            if len(checked.kept) < (len(sel) if sel is not None else len(part.dataset)):
                rows = [sel[k] for k in checked.kept] if sel is not None else checked.kept
        pieces.append((part, rows, pairs))

    all_pairs = [p for _, _, pairs in pieces for p in pairs] if check_rows else None
    if same:
        chunks = [part.dataset if rows is None else part.dataset.select(rows) for part, rows, _ in pieces]
        dataset = chunks[0] if len(chunks) == 1 else datasets.concatenate_datasets(chunks)
    else:
        if not check_rows:
            raise ConfigError("data sets with different columns can only be mixed with their rows checked (check_rows=True).")
        if not as_lists and any(p.images for p in all_pairs):
            raise ConfigError("mixing data sets with images is not supported; pass one data set with images at a time.")
        kinds = {p.is_conversational for p in all_pairs}
        if len(kinds) > 1:
            kind = "lists" if as_lists else "pairs"
            notes.append(f"some data sets hold plain-string {kind} and others conversations, so the plain {kind} become one user and one assistant message each and the whole mix uses the chat template.")
            all_pairs = [_as_conversational(p) for p in all_pairs]
        if as_lists:
            dataset = datasets.Dataset.from_list([{"prompt": p.prompt, "completions": list(p.completions),
                                                   "scores": list(p.scores)} for p in all_pairs])
        else:
            dataset = datasets.Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in all_pairs])
    if alone and pieces[0][1] is None:
        return LoadedData(dataset, parts, None, notes, all_pairs, as_lists)
    origins = [(i, r) for i, (part, rows, _) in enumerate(pieces)
               for r in (rows if rows is not None else range(len(part.dataset)))]
    return LoadedData(dataset, parts, origins, notes, all_pairs, as_lists)


def load_preference_data(spec: str, split: str = "train", seed: int = 42, **kwargs):
    """A `datasets.Dataset` for one split of a data set spec (see the module docstring).

    Rows are not checked here (the trainer does that); pass ``check_rows=True`` to
    check them now and get errors that name the file and line.
    """
    kwargs.setdefault("check_rows", False)
    return load_sources(spec, split, seed=seed, **kwargs).dataset


def default_eval_split(spec_text: str, config: str | None = None) -> str | None:
    """The evaluation split a spec has without being asked: the registry's test
    split, or ``test`` in a local folder or hub set; None when there is none."""
    spec = parse_spec(spec_text)
    local = resolve_local(spec.name)
    if local is not None:
        return "test" if os.path.isdir(local) and "test" in local_splits(local).splits else None
    entry = registry.lookup(spec.name)
    if entry is not None:
        return entry.test_split
    names = hub_split_names(spec.name, spec.config or config)
    return "test" if names and "test" in names else None


def split_off_eval(data: LoadedData, ratio: float, seed: int) -> tuple[LoadedData, LoadedData]:
    """Hold out ``ceil(ratio * n)`` rows (seeded) as the evaluation set."""
    import numpy as np

    if not 0 < ratio < 1:
        raise ConfigError(f"--split_dataset_ratio={ratio} must be between 0 and 1 (e.g. 0.01 holds out 1% of the rows).")
    n = len(data.dataset)
    n_eval = math.ceil(ratio * n)
    if n_eval >= n:
        raise ConfigError(f"--split_dataset_ratio={ratio} would leave no training rows out of {n}; lower it.")
    perm = np.random.RandomState(seed).permutation(n)
    return data.select(sorted(perm[n_eval:].tolist())), data.select(sorted(perm[:n_eval].tolist()))


def train_and_eval(
    dataset: str | Sequence[str],
    *,
    eval_dataset: str | Sequence[str] | None = None,
    split: str | None = None,
    eval_split: str | None = None,
    split_ratio: float | None = None,
    config: str | None = None,
    columns: Mapping[str, str | None] | None = None,
    seed: int = 42,
    skip_bad_rows: bool = False,
    check_rows: bool = True,
) -> tuple[LoadedData, LoadedData | None]:
    """The training set and the evaluation set (or None) for the command line.

    Evaluation data, first that applies: ``eval_dataset`` specs; ``split_ratio`` of
    the training rows; ``eval_split`` of the same specs; each spec's own test split
    (registry test split, or a ``test`` split) when it has one.
    """
    if eval_dataset and split_ratio:
        raise ConfigError("pass either --eval_dataset or --split_dataset_ratio, not both.")
    if split_ratio and eval_split:
        raise ConfigError("pass either --eval_split or --split_dataset_ratio, not both.")
    kw = dict(config=config, columns=columns, seed=seed, skip_bad_rows=skip_bad_rows, check_rows=check_rows)
    train = load_sources(dataset, split, **kw)
    if eval_dataset:
        return train, load_sources(eval_dataset, eval_split, **kw)
    if split_ratio:
        kept, held = split_off_eval(train, split_ratio, seed)
        return kept, held
    texts = split_specs(dataset)
    if eval_split:
        return train, load_sources([_with_split(t, eval_split) for t in texts], None, **kw)
    found = [(t, default_eval_split(t, config)) for t in texts]
    with_test = [_with_split(t, s) for t, s in found if s is not None]
    if not with_test:
        return train, None
    evaluation = load_sources(with_test, None, **kw)
    missing = [t for t, s in found if s is None]
    if missing:
        evaluation.notes.append(f"evaluating on the test splits of {', '.join(t for t, s in found if s)} only; {', '.join(missing)} has none.")
    return train, evaluation


def _with_split(text: str, split: str) -> str:
    """The spec with its split replaced (a ``#N`` count is kept: it samples the eval set too)."""
    return spec_text(parse_spec(text), split)
