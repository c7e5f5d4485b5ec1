"""Local data files: finding them, reading them, and the JSON-lines checks.

A local spec is a ``.json`` / ``.jsonl`` / ``.csv`` / ``.parquet`` file (one split,
``train``) or a folder of such files named by split (``train.jsonl``,
``test-0001.parquet``: the split is the name up to the first ``-``); ``tiny-prefs``
is the bundled demo folder. A folder holds one file type.

A JSONL line that is not one JSON object is reported by its file and line number
before the datasets library fails on it obscurely; with ``skip_bad_rows`` the broken
lines are dropped (the rest is read from a cleaned copy) and returned, so that
`preftune.data.rows` can still give each remaining row its line number. A JSON
array file that fails to parse is reported by line and column and cannot be
repaired by skipping. A line that is not UTF-8 text is a broken line too (the
datasets library reads it without a word and fails only when the row is used), and
an empty file is reported as such.

For `preftune.data.sources` and `preftune.data.specs`: `resolve_local` (a spec's name
-> a path, or None for a hub name), `looks_local` / `is_local_name`, `local_splits`
(a file or folder -> its splits and their files), `read_local` (one split, read and
checked: `LocalRead`) and `first_line` (an exception in one line, for messages).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from preftune.errors import DataError

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
BUNDLED = ("tiny-prefs", "preftune/tiny-prefs")


def looks_local(name: str) -> bool:
    """Whether a name is meant as a path (a data file extension, ./ ~ or /, or more than one '/')."""
    return (os.path.splitext(name)[1].lower() in _FILE_BUILDERS or name.startswith((".", "/", "~"))
            or name.count("/") > 1 or os.sep != "/" and os.sep in name)


def is_local_name(name: str) -> bool:
    """Whether a name is the bundled set or a path that exists."""
    return name in BUNDLED or os.path.exists(os.path.expanduser(name))


@dataclass(frozen=True)
class LocalFiles:
    """A local file or folder: the datasets builder that reads it, and its files by split."""

    builder: str  # json, csv or parquet
    splits: dict[str, list[str]]


def local_splits(path: str) -> LocalFiles:
    """The splits of a local file (``train``) or folder (by file name up to the first ``-``)."""
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext not in _FILE_BUILDERS:
            raise DataError(f"dataset file {path!r} has extension {ext!r}; use .json, .jsonl, .csv or .parquet.")
        return LocalFiles(_FILE_BUILDERS[ext], {"train": [path]})
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
    return LocalFiles(builders.pop(), files)


def resolve_local(name: str) -> str | None:
    """The path a spec's name stands for (the bundled set's folder included), or None for a hub name;
    DataError for a name meant as a path that does not exist."""
    if name in BUNDLED:
        from preftune.assets import tiny_dataset_path

        return tiny_dataset_path()
    path = os.path.expanduser(name)
    if os.path.exists(path):
        return path
    if looks_local(name):
        raise DataError(f"dataset file {name!r} does not exist; check the path (relative paths start from {os.getcwd()}).")
    return None


@dataclass
class LocalRead:
    """One split of a local data set, read: its rows, its files, and the JSON lines dropped as broken."""

    dataset: Any
    split: str
    files: list[str]
    json_lines: bool = False  # row r is the r-th non-blank, unbroken line of `files`
    skipped_lines: set = field(default_factory=set)  # (file, line number) dropped as broken JSON
    n_bad_lines: int = 0


def read_local(name: str, path: str, split: str, skip_bad_rows: bool) -> LocalRead:
    """Read split `split` of the local data set `name` (at `path`); broken JSON lines are reported by
    number, or dropped and counted with `skip_bad_rows`."""
    import datasets

    found = local_splits(path)
    if split not in found.splits:
        if os.path.isfile(path):
            raise DataError(f"dataset {name!r} is a single file, so it has only the split 'train', not {split!r}; use a folder of split files (train.jsonl, test.jsonl) for more.")
        raise DataError(f"dataset {name!r} has no {split!r} split; found: {', '.join(sorted(found.splits))}.")
    paths = found.splits[split]
    if found.builder == "json":
        ds, json_lines, skipped, n_bad_lines = _load_json(paths, skip_bad_rows)
        return LocalRead(ds, split, paths, json_lines, skipped, n_bad_lines)
    try:
        ds = datasets.load_dataset(found.builder, data_files={split: paths}, split=split)
    except Exception as err:  # noqa: BLE001
        raise DataError(f"could not read {', '.join(paths)}: {first_line(err.__cause__ or err)}.") from None
    return LocalRead(ds, split, paths)


# -------------------------------------------------------------------- JSON lines


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


def _is_utf8(path: str, chunk: int = 1 << 20) -> bool:
    """Whether the whole file decodes as UTF-8 (read in chunks; the datasets library does not check,
    and a stray byte would only fail later, when a row is read)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                decoder.decode(block)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _utf8_problems(path: str) -> list[tuple[int, str]]:
    """(line number, problem) for each line that is not UTF-8 text."""
    problems = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                problems.append((number, f"is not UTF-8 text (byte {raw[err.start]:#04x} at column {err.start + 1})"))
    return problems


def _line_problems(path: str) -> list[tuple[int, str]]:
    """One fast pass over a JSON-lines file: lines that are not UTF-8, or cannot be a JSON object
    (they do not start with '{'). Such lines must never reach the datasets library: a leading
    `null` line makes its JSON reader crash the process (datasets 5.2, pyarrow 26)."""
    problems = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                problems.append((number, f"is not UTF-8 text (byte {raw[err.start]:#04x} at column {err.start + 1})"))
                continue
            if not line.startswith(b"{"):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as err:
                    problems.append((number, f"is not valid JSON ({err.msg} at column {err.colno})"))
                else:
                    problems.append((number, f"holds a JSON {type(value).__name__}, not an object of column values"))
    return problems


def _is_json_array(path: str) -> bool:
    """A .json file holding one JSON array (a .jsonl file is JSON lines, whatever its first line holds)."""
    if path.lower().endswith(".jsonl"):
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(4096).lstrip()
    return head.startswith("[")


def _load_json(files: list[str], skip_bad_rows: bool) -> tuple[Any, bool, set, int]:
    """Load JSON / JSONL files; broken lines are found and reported (or dropped) by number."""
    import datasets

    json_lines = not any(_is_json_array(p) for p in files)
    if json_lines:
        suspect = {p: _line_problems(p) for p in files}
    else:
        suspect = {p: _utf8_problems(p) for p in files if not _is_utf8(p)}
    suspect = {p: problems for p, problems in suspect.items() if problems}
    cause = None
    if not suspect:
        quiet = logging.getLogger("datasets.packaged_modules.json.json")
        was_disabled, quiet.disabled = quiet.disabled, True
        try:
            return datasets.load_dataset("json", data_files={"train": files}, split="train"), json_lines, set(), 0
        except Exception as err:  # noqa: BLE001 - any failure: find the line, or report the cause
            cause = err.__cause__ or err
        finally:
            quiet.disabled = was_disabled
    if suspect and not json_lines:
        path, [(number, what), *_] = next(iter(suspect.items()))
        raise DataError(f"{path} line {number} {what}; save the file as UTF-8.")
    if all(_holds_nothing(p) for p in files):
        raise DataError(f"{', '.join(files)} {'holds' if len(files) == 1 else 'hold'} no rows (empty); check the file, or the split it was taken for.")
    if not json_lines:
        for path in files:
            try:
                with open(path, encoding="utf-8") as f:
                    json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} is not valid JSON at line {e.lineno}, column {e.colno} ({e.msg}); fix the file (--skip_bad_rows can drop broken lines of JSON-lines files only).") from None
        raise DataError(f"could not read {', '.join(files)}: {first_line(cause)}.")
    problems = {}
    for path in files:  # a line that is not UTF-8 is reported as such, whatever else is wrong with it
        by_line = dict(_scan_json_lines(path))
        by_line.update(suspect.get(path, []))
        problems[path] = sorted(by_line.items())
    total = sum(len(p) for p in problems.values())
    if not total:
        raise DataError(f"could not read {', '.join(files)}: {first_line(cause)}.")
    path, (number, what) = next((p, probs[0]) for p, probs in problems.items() if probs)
    if not skip_bad_rows:
        raise DataError(
            f"{path} line {number} {what}; fix it, or pass --skip_bad_rows to drop broken lines ({total} in all)."
        )
    bad = {(p, n) for p, probs in problems.items() for n, _ in probs}
    clean_dir = tempfile.mkdtemp(prefix="preftune-clean-")
    cleaned, kept = [], 0
    for i, p in enumerate(files):
        out = os.path.join(clean_dir, f"{i}.jsonl")
        with open(p, encoding="utf-8", errors="replace") as src, open(out, "w", encoding="utf-8") as dst:
            for n, line in enumerate(src, 1):
                if line.strip() and (p, n) not in bad:
                    dst.write(line.rstrip("\n") + "\n")
                    kept += 1
        cleaned.append(out)
    if not kept:  # the datasets library cannot read a file without rows (it raises StopIteration)
        raise DataError(f"{', '.join(files)} holds no readable row: all {total} non-blank lines are broken "
                        f"(first: line {number} {what}); fix the file.")
    try:
        ds = datasets.load_dataset("json", data_files={"train": cleaned}, split="train")
    except Exception as err:  # noqa: BLE001 - the remaining lines are JSON objects, yet unreadable together
        raise DataError(f"could not read {', '.join(files)}: {first_line(err.__cause__ or err)}.") from None
    return ds, True, bad, total


def _holds_nothing(path: str) -> bool:
    """An empty or blank file, or one JSON value with nothing in it ([] or {}). Read only after a failed load."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if not text.strip():
        return True
    try:
        return json.loads(text) in ([], {})
    except ValueError:
        return False


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), without a final period."""
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__).rstrip(".")
