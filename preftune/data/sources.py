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

Every row is checked (`preftune.data.formats.to_preference_pair`) when the data is
loaded, so a bad row is reported with where it came from: ``row 7 (line 8)`` for a
single JSONL file, ``row 7 of prefs.jsonl (line 8)`` when several sets are mixed.
By default the first bad row stops the run, with a count; ``skip_bad_rows`` drops
bad rows (and broken JSON lines) and counts them. A JSONL line that is not JSON is
reported by its line number before the datasets library fails on it obscurely.

Decisions:

- Sets with the same columns and types are concatenated as they are; otherwise
  each row is normalised to ``prompt`` / ``chosen`` / ``rejected`` first, and if
  some sets are conversational (message lists) and others plain strings, the
  plain pairs become one user and one assistant message (a note says so), so that
  the whole mix is formatted with the chat template.
- ``columns`` renames columns of data sets that are not in the registry (registry
  sets are mapped by their own preprocessor); mapping a column to None drops it,
  and a mapped column wins over one that already has the target name.
- Row numbers count from 0 in the order the file (or hub split) holds the rows;
  line numbers count from 1.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ..errors import ConfigError, DataError
from . import registry

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
BUNDLED = ("tiny-prefs", "preftune/tiny-prefs")
_N_SHOWN = 3  # bad rows quoted in a skip summary


# ------------------------------------------------------------------------- specs


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


def _looks_local(name: str) -> bool:
    return (os.path.splitext(name)[1].lower() in _FILE_BUILDERS or name.startswith((".", "/", "~"))
            or name.count("/") > 1 or os.sep != "/" and os.sep in name)


def _is_local_name(name: str) -> bool:
    return name in BUNDLED or os.path.exists(os.path.expanduser(name))


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
    if _is_local_name(name):
        return SourceSpec(text, name, count=count)
    split = config = None
    if "@" in name:
        name, _, split = name.rpartition("@")
        if not split or not name:
            raise DataError(f"dataset {text!r}: write NAME@SPLIT, e.g. {name or 'NAME'}@test.")
        if _is_local_name(name):
            return SourceSpec(text, name, split=split, count=count)
    if ":" in name and not _looks_local(name):
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
    from .formats import check_columns

    check_columns(out)
    return out


# ----------------------------------------------------------------------- parts


@dataclass
class _Part:
    """One loaded source: its rows, and how to say where row r came from."""

    spec: SourceSpec
    dataset: Any
    split: str
    files: list[str] = field(default_factory=list)
    json_lines: bool = False
    skipped_lines: set = field(default_factory=set)  # (file, line) dropped as broken JSON
    n_bad_lines: int = 0
    n_bad_rows: int = 0
    bad_examples: list[str] = field(default_factory=list)
    _lines: list | None = None

    def line_of(self, row: int) -> tuple[str, int] | None:
        if not self.json_lines:
            return None
        if self._lines is None:
            self._lines = []
            for path in self.files:
                with open(path, encoding="utf-8", errors="replace") as f:
                    for number, line in enumerate(f, 1):
                        if line.strip() and (path, number) not in self.skipped_lines:
                            self._lines.append((path, number))
        return self._lines[row] if 0 <= row < len(self._lines) else None

    def where(self, row: int, alone: bool) -> str:
        text = f"row {row}" if alone else f"row {row} of {self.spec.label}"
        located = self.line_of(row)
        if located:
            path, number = located
            text += f" (line {number})" if alone or len(self.files) == 1 else f" (line {number} of {os.path.basename(path)})"
        return text


@dataclass
class LoadedData:
    """A loaded (possibly mixed, sampled and split) data set and where its rows came from."""

    dataset: Any
    parts: list[_Part]
    origins: list[tuple[int, int]] | None = None  # final row -> (part, row in part); None: identity
    notes: list[str] = field(default_factory=list)

    @property
    def n_bad_skipped(self) -> int:
        return sum(p.n_bad_rows + p.n_bad_lines for p in self.parts)

    def describe_row(self, index: int) -> str:
        if self.origins is not None:
            if not 0 <= index < len(self.origins):
                return f"row {index}"
            part, row = self.origins[index]
        else:
            part, row = 0, index
        return self.parts[part].where(row, alone=len(self.parts) == 1)

    def relabel(self, message: str) -> str:
        """Rewrite a leading ``row N`` (an index into `dataset`) as where that row came from."""
        return re.sub(r"^row (\d+)\b", lambda m: self.describe_row(int(m.group(1))), message, count=1)

    def skipped_summary(self) -> str | None:
        lines = sum(p.n_bad_lines for p in self.parts)
        rows = sum(p.n_bad_rows for p in self.parts)
        if not lines and not rows:
            return None
        parts = []
        if rows:
            parts.append(f"{rows} bad {'row' if rows == 1 else 'rows'}")
        if lines:
            parts.append(f"{lines} broken JSON {'line' if lines == 1 else 'lines'}")
        examples = [e for p in self.parts for e in p.bad_examples][:_N_SHOWN]
        text = f"dropped {' and '.join(parts)} (--skip_bad_rows)"
        if examples:
            text += "; first: " + examples[0]
        return text

    def select(self, indices: Sequence[int]) -> "LoadedData":
        indices = list(indices)
        origins = [self.origins[i] for i in indices] if self.origins is not None else [(0, i) for i in indices]
        return LoadedData(self.dataset.select(indices), self.parts, origins, list(self.notes))


# --------------------------------------------------------------------- loading


def _local_files(path: str) -> tuple[str, dict[str, list[str]]]:
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext not in _FILE_BUILDERS:
            raise DataError(f"dataset file {path!r} has extension {ext!r}; use .json, .jsonl, .csv or .parquet.")
        return _FILE_BUILDERS[ext], {"train": [path]}
    files: dict[str, list[str]] = {}
    builders = set()
    for name in sorted(os.listdir(path)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in _FILE_BUILDERS:
            builders.add(_FILE_BUILDERS[ext.lower()])
            files.setdefault(stem.split("-")[0], []).append(os.path.join(path, name))
    if not files:
        raise DataError(f"dataset folder {path!r} holds no .json, .jsonl, .csv or .parquet file.")
    if len(builders) > 1:
        raise DataError(f"dataset folder {path!r} mixes file types ({', '.join(sorted(builders))}); keep one type per folder.")
    return builders.pop(), files


def _resolve_local(name: str) -> str | None:
    if name in BUNDLED:
        from ..assets import tiny_dataset_path

        return tiny_dataset_path()
    path = os.path.expanduser(name)
    if os.path.exists(path):
        return path
    if _looks_local(name):
        raise DataError(f"dataset file {name!r} does not exist; check the path (relative paths start from {os.getcwd()}).")
    return None


def _scan_json_lines(path: str) -> list[tuple[int, str]]:
    """(line number, problem) for each non-blank line that is not one JSON object."""
    problems = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append((number, f"is not valid JSON ({err.msg} at column {err.colno})"))
                continue
            if not isinstance(value, dict):
                problems.append((number, f"holds a JSON {type(value).__name__}, not an object of column values"))
    return problems


def _is_json_array(path: str) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(4096).lstrip()
    return head.startswith("[")


def _load_json(files: list[str], skip_bad_rows: bool) -> tuple[Any, bool, set, int]:
    """Load JSON / JSONL files; broken lines are found and reported (or dropped) by number."""
    import datasets

    json_lines = not any(_is_json_array(p) for p in files)
    quiet = logging.getLogger("datasets.packaged_modules.json.json")
    was_disabled, quiet.disabled = quiet.disabled, True
    try:
        return datasets.load_dataset("json", data_files={"train": files}, split="train"), json_lines, set(), 0
    except Exception as err:  # noqa: BLE001 - any failure: find the line, or report the cause
        cause = err.__cause__ or err
    finally:
        quiet.disabled = was_disabled
    if not json_lines:
        for path in files:
            try:
                with open(path, encoding="utf-8") as f:
                    json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} is not valid JSON at line {e.lineno}, column {e.colno} ({e.msg}); fix the file (--skip_bad_rows can drop broken lines of JSON-lines files only).") from None
        raise DataError(f"could not read {', '.join(files)}: {_first_line(cause)}.")
    problems = {path: _scan_json_lines(path) for path in files}
    total = sum(len(p) for p in problems.values())
    if not total:
        raise DataError(f"could not read {', '.join(files)}: {_first_line(cause)}.")
    path, (number, what) = next((p, probs[0]) for p, probs in problems.items() if probs)
    if not skip_bad_rows:
        raise DataError(
            f"{path} line {number} {what}; fix it, or pass --skip_bad_rows to drop broken lines ({total} in all)."
        )
    bad = {(p, n) for p, probs in problems.items() for n, _ in probs}
    clean_dir = tempfile.mkdtemp(prefix="preftune-clean-")
    cleaned = []
    for i, p in enumerate(files):
        out = os.path.join(clean_dir, f"{i}.jsonl")
        with open(p, encoding="utf-8", errors="replace") as src, open(out, "w", encoding="utf-8") as dst:
            for n, line in enumerate(src, 1):
                if line.strip() and (p, n) not in bad:
                    dst.write(line.rstrip("\n") + "\n")
        cleaned.append(out)
    ds = datasets.load_dataset("json", data_files={"train": cleaned}, split="train")
    return ds, True, bad, total


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__).rstrip(".")


def _hub_error(name: str, split: str, err: Exception) -> DataError:
    if registry.lookup(name) is not None:
        hint = "; the registry loads it from the hub (or the hub cache), so connect once or pass a local copy of the files."
    else:
        near = [n for n in registry.suggest(name) if n.lower() != name.lower()]
        hint = f"; did you mean {' or '.join(near)}?" if near else "; check the name, or pass a local file or a registry name (preftune data list)."
    return DataError(f"could not load dataset {name!r} (split {split!r}): {_first_line(err)}{hint}")


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


def _load_part(spec: SourceSpec, split: str | None, *, config: str | None, columns, skip_bad_rows: bool) -> _Part:
    import datasets

    local = _resolve_local(spec.name)
    if local is not None:
        builder, files = _local_files(local)
        wanted = spec.split or split or "train"
        if wanted not in files:
            if os.path.isfile(local):
                raise DataError(f"dataset {spec.name!r} is a single file, so it has only the split 'train', not {wanted!r}; use a folder of split files (train.jsonl, test.jsonl) for more.")
            raise DataError(f"dataset {spec.name!r} has no {wanted!r} split; found: {', '.join(sorted(files))}.")
        paths = files[wanted]
        if builder == "json":
            ds, json_lines, skipped, n_bad_lines = _load_json(paths, skip_bad_rows)
        else:
            try:
                ds = datasets.load_dataset(builder, data_files={wanted: paths}, split=wanted)
            except Exception as err:  # noqa: BLE001
                raise DataError(f"could not read {', '.join(paths)}: {_first_line(err.__cause__ or err)}.") from None
            json_lines, skipped, n_bad_lines = False, set(), 0
        if columns:
            ds = _apply_columns(ds, columns, spec.name)
        return _Part(spec, ds, wanted, paths, json_lines, skipped, n_bad_lines)

    entry = registry.lookup(spec.name)
    if entry is not None:
        wanted = spec.split or split or entry.train_split
        kwargs = {"data_files": list(entry.data_files)} if entry.data_files else {}
        try:
            raw = datasets.load_dataset(entry.hub_id, spec.config or config or entry.config, split=wanted, **kwargs)
        except Exception as err:  # noqa: BLE001 - offline, unknown split, ...: one sentence
            raise _hub_error(entry.hub_id, wanted, err) from None
        ds = raw.map(entry.preprocess, remove_columns=raw.column_names, desc=f"preprocessing {entry.name}")
        return _Part(spec, ds, wanted)

    wanted = spec.split or split or "train"
    try:
        ds = datasets.load_dataset(spec.name, spec.config or config, split=wanted)
    except Exception as err:  # noqa: BLE001
        raise _hub_error(spec.name, wanted, err) from None
    if columns:
        ds = _apply_columns(ds, columns, spec.label)
    return _Part(spec, ds, wanted)


def _sample(part: _Part, count: int, seed: int) -> tuple[list[int], str | None]:
    import numpy as np

    n = len(part.dataset)
    if n == 0 or count == n:
        return list(range(n)), None
    rng = np.random.RandomState(seed)
    if count < n:
        return sorted(rng.permutation(n)[:count].tolist()), None
    idx = list(range(n)) * (count // n) + sorted(rng.permutation(n)[: count % n].tolist())
    return idx, f"{part.spec.label} has {n} rows, fewer than the {count} asked for, so rows repeat ({count // n} whole copies + {count % n} sampled)."


# ------------------------------------------------------------------ row checks


def _iter_rows(ds, batch_size: int = 1000):
    cols = [c for c in ds.column_names if c != "images"]  # never decode images just to check rows
    view = ds.select_columns(cols) if len(cols) < len(ds.column_names) else ds
    if view.format["type"] is not None:
        view = view.with_format(None)
    for batch in view.iter(batch_size=batch_size):
        keys = list(batch)
        n = len(batch[keys[0]]) if keys else 0
        for i in range(n):
            yield {k: batch[k][i] for k in keys}


def _check_rows(part: _Part, rows: Sequence[int] | None, alone: bool, skip_bad_rows: bool, keep_pairs: bool):
    """Check every row of a part (`rows`: which part rows, in order). Returns
    (kept positions into `rows`, pairs or None). Raises on a bad row unless skipping."""
    from .formats import to_preference_pair

    order = list(rows) if rows is not None else None
    source = part.dataset.select(order) if order is not None and order != list(range(len(part.dataset))) else part.dataset
    kept, pairs, bad = [], [], []
    for pos, row in enumerate(_iter_rows(source)):
        r = order[pos] if order is not None else pos
        try:
            pair = to_preference_pair(row, r)
        except DataError as err:
            bad.append((r, str(err)))
            continue
        kept.append(pos)
        if keep_pairs:
            pairs.append(pair)
    if bad:
        first = re.sub(r"^row (\d+)\b", lambda m: part.where(int(m.group(1)), alone), bad[0][1], count=1)
        if not skip_bad_rows:
            raise DataError(f"{first.rstrip('.')} ({len(bad)} of {len(source)} rows are bad; fix them, or pass --skip_bad_rows to drop them).")
        part.n_bad_rows += len(bad)
        part.bad_examples.append(first)
    return kept, (pairs if keep_pairs else None)


def _as_conversational(pair) -> dict:
    prompt = pair.prompt if isinstance(pair.prompt, list) else [{"role": "user", "content": pair.prompt}]
    chosen = pair.chosen if isinstance(pair.chosen, list) else [{"role": "assistant", "content": pair.chosen}]
    rejected = pair.rejected if isinstance(pair.rejected, list) else [{"role": "assistant", "content": pair.rejected}]
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


# ------------------------------------------------------------------------ entry


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
    if mapped and all(registry.lookup(s.name) and _resolve_local(s.name) is None for s in parsed):
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
    same = all(p.dataset.features == parts[0].dataset.features for p in parts[1:])
    pieces = []  # (part, rows kept in order (None: all of them), pairs or None)
    for part, sel in zip(parts, selections):
        rows, pairs = sel, None
        if check_rows:
            kept, pairs = _check_rows(part, sel, alone, skip_bad_rows, keep_pairs=not same)
            if len(kept) < (len(sel) if sel is not None else len(part.dataset)):
                rows = [sel[k] for k in kept] if sel is not None else kept
        pieces.append((part, rows, pairs))

    if same:
        chunks = [part.dataset if rows is None else part.dataset.select(rows) for part, rows, _ in pieces]
        dataset = chunks[0] if len(chunks) == 1 else datasets.concatenate_datasets(chunks)
    else:
        if not check_rows:
            raise ConfigError("data sets with different columns can only be mixed with their rows checked (check_rows=True).")
        all_pairs = [p for _, _, pairs in pieces for p in pairs]
        if any(p.images for p in all_pairs):
            raise ConfigError("mixing data sets with images is not supported; pass one data set with images at a time.")
        kinds = {p.is_conversational for p in all_pairs}
        if len(kinds) > 1:
            notes.append("some data sets hold plain-string pairs and others conversations, so the plain pairs become one user and one assistant message each and the whole mix uses the chat template.")
            rows_out = [_as_conversational(p) for p in all_pairs]
        else:
            rows_out = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in all_pairs]
        dataset = datasets.Dataset.from_list(rows_out)
    if alone and pieces[0][1] is None:
        return LoadedData(dataset, parts, None, notes)
    origins = [(i, r) for i, (part, rows, _) in enumerate(pieces)
               for r in (rows if rows is not None else range(len(part.dataset)))]
    return LoadedData(dataset, parts, origins, notes)


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
    local = _resolve_local(spec.name)
    if local is not None:
        return "test" if os.path.isdir(local) and "test" in _local_files(local)[1] else None
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
    kw = dict(config=config, columns=columns, seed=seed, skip_bad_rows=skip_bad_rows)
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
