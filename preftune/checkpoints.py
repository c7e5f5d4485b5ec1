"""Checkpoints that survive a kill: a completion marker, resume from the last complete one, safe rotation.

transformers writes `checkpoint-N/` file by file, so a run killed while saving leaves
a folder that looks like a checkpoint but lacks its RNG or trainer state (or half of
its optimizer). preftune writes `preftune_complete.json` into the folder last, after
every file of every process is on disk; only folders with that marker count:

- resume (`--resume_from_checkpoint true`) takes the newest complete checkpoint and
  sets incomplete newer ones aside (renamed `incomplete-checkpoint-N`, not deleted),
  saying so;
- rotation (`save_total_limit`) deletes only complete checkpoints, oldest first, and
  runs after the new one is marked, so the newest complete checkpoint always stays.

A checkpoint without the marker written by plain transformers or TRL can still be
resumed by passing its path; it is accepted when its trainer_state.json reads.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

from .errors import ConfigError

MARKER = "preftune_complete.json"
EXTRA_STATE = "preftune_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_TRUE = {"true", "yes", "1", "last", "latest"}
_FALSE = {"false", "no", "0", "none", ""}


def write_json_atomic(path: str, record) -> None:
    """Write JSON to a temporary file in the same folder, then rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def mark_complete(folder: str, step: int) -> None:
    write_json_atomic(os.path.join(folder, MARKER), {"step": step, "files": sorted(os.listdir(folder))})


def is_complete(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, MARKER))


def checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every `checkpoint-N` folder in run_dir, by step."""
    if not os.path.isdir(run_dir):
        return []
    found = []
    for name in os.listdir(run_dir):
        match = _CHECKPOINT.match(name)
        if match and os.path.isdir(os.path.join(run_dir, name)):
            found.append((int(match.group(1)), os.path.join(run_dir, name)))
    return sorted(found)


def last_complete(run_dir: str) -> tuple[str | None, list[str]]:
    """The newest complete checkpoint, and the incomplete ones newer than it."""
    incomplete = []
    for _, path in reversed(checkpoints(run_dir)):
        if is_complete(path):
            return path, incomplete
        incomplete.append(path)
    return None, incomplete


def resolve_resume(value, run_dir: str, say=print) -> str | None:
    """`resume_from_checkpoint` (True, "true", a path, None/False) -> the checkpoint folder to load, or None.

    With True, incomplete checkpoints newer than the one chosen are renamed
    `incomplete-checkpoint-N` so that neither this run nor a later one picks them up.
    """
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in _FALSE):
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in _TRUE):
        path, incomplete = last_complete(run_dir)
        if path is None:
            raise ConfigError(f"--resume_from_checkpoint: {run_dir!r} holds no complete checkpoint to resume from; "
                              "drop the flag to start afresh.")
        for folder in incomplete:
            aside = os.path.join(run_dir, "incomplete-" + os.path.basename(folder))
            if os.path.exists(aside):
                shutil.rmtree(aside)
            os.replace(folder, aside)
            say(f"preftune: {os.path.basename(folder)} is incomplete (the run stopped while saving it); "
                f"set aside as {os.path.basename(aside)}")
        say(f"preftune: resuming from {path}")
        return path
    path = os.path.expanduser(str(value))
    if not os.path.isdir(path):
        raise ConfigError(f"--resume_from_checkpoint: {path!r} is not a folder; pass a checkpoint folder or true.")
    if not is_complete(path) and not _state_reads(path):
        raise ConfigError(f"--resume_from_checkpoint: {path!r} is incomplete (no trainer_state.json); "
                          "pick an earlier checkpoint, or pass true to take the newest complete one.")
    return path


def _state_reads(path: str) -> bool:
    try:
        with open(os.path.join(path, "trainer_state.json")) as f:
            json.load(f)
        return True
    except (OSError, ValueError):
        return False


def rotate(run_dir: str, limit: int | None, keep: str | None = None) -> list[str]:
    """Delete the oldest complete checkpoints beyond `limit` (never `keep`, never the newest). Returns those deleted."""
    if not limit or limit <= 0:
        return []
    complete = [path for _, path in checkpoints(run_dir) if is_complete(path)]
    keep_path = os.path.abspath(keep) if keep else None
    excess = len(complete) - max(limit, 1)
    deleted = []
    for path in complete[:-1]:  # the newest is never deleted
        if excess <= 0:
            break
        if os.path.abspath(path) == keep_path:
            continue
        shutil.rmtree(path, ignore_errors=True)
        deleted.append(path)
        excess -= 1
    return deleted


def save_extra_state(folder: str, state: dict) -> None:
    write_json_atomic(os.path.join(folder, EXTRA_STATE), state)


def load_extra_state(folder: str) -> dict:
    path = os.path.join(folder, EXTRA_STATE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)
