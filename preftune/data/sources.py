"""Loading preference data by name: the bundled set, a local file or folder, or a hub id.

`name#N` keeps N rows, sampled with a fixed seed.
"""
from __future__ import annotations

import os

from ..errors import DataError

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
BUNDLED = ("tiny-prefs", "preftune/tiny-prefs")


def _split_count(spec: str) -> tuple[str, int | None]:
    if "#" in spec:
        name, _, count = spec.rpartition("#")
        if not count.isdigit() or int(count) < 1:
            raise DataError(f"dataset {spec!r}: the part after '#' must be a positive row count, e.g. {name}#1000.")
        return name, int(count)
    return spec, None


def _local_files(path: str) -> tuple[str, dict[str, list[str]]]:
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext not in _FILE_BUILDERS:
            raise DataError(f"dataset file {path!r} has extension {ext!r}; use .json, .jsonl, .csv or .parquet.")
        return _FILE_BUILDERS[ext], {"train": [path]}
    files: dict[str, list[str]] = {}
    builder = None
    for name in sorted(os.listdir(path)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in _FILE_BUILDERS:
            builder = builder or _FILE_BUILDERS[ext.lower()]
            files.setdefault(stem.split("-")[0], []).append(os.path.join(path, name))
    if not files:
        raise DataError(f"dataset folder {path!r} holds no .json, .jsonl, .csv or .parquet file.")
    return builder, files


def load_preference_data(spec: str, split: str = "train", seed: int = 42):
    """A `datasets.Dataset` for one split of a dataset spec (see module docstring)."""
    import datasets

    name, count = _split_count(spec)
    if name in BUNDLED:
        from ..assets import tiny_dataset_path

        name = tiny_dataset_path()
    if os.path.exists(name):
        builder, files = _local_files(name)
        if split not in files:
            raise DataError(f"dataset {name!r} has no {split!r} split; found: {', '.join(sorted(files))}.")
        ds = datasets.load_dataset(builder, data_files={split: files[split]}, split=split)
    else:
        try:
            ds = datasets.load_dataset(name, split=split)
        except (FileNotFoundError, ValueError, ConnectionError, OSError) as err:
            raise DataError(f"could not load dataset {name!r} (split {split!r}): {err}") from err
    if count is not None and count < len(ds):
        ds = ds.shuffle(seed=seed).select(range(count))
    return ds


def has_split(spec: str, split: str) -> bool:
    name, _ = _split_count(spec)
    if name in BUNDLED:
        return True
    if os.path.isdir(name):
        return split in _local_files(name)[1]
    return False
