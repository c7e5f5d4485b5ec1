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
resumed by passing its path; it is accepted when its trainer_state.json reads. A
folder that preftune was writing when the run stopped (it holds preftune's own state,
or its sibling checkpoints are marked) is refused even by path.

The marker is written after the checkpoint's files are flushed to disk (fsync), so
it also means "complete" after a machine crash, not only after a killed process. A
folder set aside keeps its files; a name already taken gets -2, -3, ...
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil

from preftune.errors import ConfigError, UserError
from preftune.files import atomic_write, write_failure

MARKER = "preftune_complete.json"
EXTRA_STATE = "preftune_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_TRUE = {"true", "yes", "1", "last", "latest"}
_FALSE = {"false", "no", "0", "none", ""}


def write_json_atomic(path: str, record) -> None:
    """Write JSON to a temporary file in the same folder, flushed to disk, then rename it over `path`."""
    atomic_write(path, json.dumps(record, indent=2, sort_keys=True, default=str).encode("utf-8"), fsync=True)


def mark_complete(folder: str, step: int) -> None:
    """Flush every file of the checkpoint to disk, then write the marker: a marker that
    survives a machine crash means the files it lists survived too."""
    files = sorted(os.listdir(folder))
    for name in files:
        _fsync(os.path.join(folder, name))
    _fsync(folder)
    write_json_atomic(os.path.join(folder, MARKER), {"step": step, "files": files})
    _fsync(folder)


def unmark(folder: str) -> None:
    """Remove a checkpoint's marker (before its files are written again, or before it is deleted)."""
    try:
        os.remove(os.path.join(folder, MARKER))
    except FileNotFoundError:
        pass


def _fsync(path: str) -> None:
    """fsync a regular file or a folder (best effort: some filesystems refuse folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        if os.path.isfile(path) or os.path.isdir(path):
            os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    path = check_resume(value, run_dir)
    if path is None or not _is_last(value):
        return path
    for folder in last_complete(run_dir)[1]:
        aside = _set_aside(folder)
        if aside is not None:
            say(f"preftune: {os.path.basename(folder)} is incomplete (the run stopped while saving it); "
                f"set aside as {os.path.basename(aside)}")
    say(f"preftune: resuming from {path}")
    return path


def check_resume(value, run_dir: str) -> str | None:
    """The checkpoint `resolve_resume` would take, or its ConfigError, with nothing renamed or said:
    for a command line to refuse a resume with nothing to resume from before it loads anything."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in _FALSE):
        return None
    if _is_last(value):
        path = last_complete(run_dir)[0]
        if path is None:
            raise ConfigError(f"--resume_from_checkpoint: {run_dir!r} holds no complete checkpoint to resume from; "
                              "drop the flag to start afresh.")
        return path
    path = os.path.expanduser(str(value))
    if not os.path.isdir(path):
        raise ConfigError(f"--resume_from_checkpoint: {path!r} is not a folder; pass a checkpoint folder or true.")
    if is_complete(path):
        return path
    if not _state_reads(path):
        hint = (" (it is a run folder: pass one of its checkpoint-N folders, or true for the newest complete one)"
                if checkpoints(path) else "")
        raise ConfigError(f"--resume_from_checkpoint: {path!r} is incomplete (no trainer_state.json){hint}; "
                          "pick an earlier checkpoint, or pass true to take the newest complete one.")
    if _written_by_preftune(path):
        raise ConfigError(f"--resume_from_checkpoint: {path!r} is incomplete (the run stopped while saving it, before "
                          f"{MARKER} was written); pick an earlier checkpoint, or pass true to take the newest complete one.")
    return path  # a plain transformers / TRL checkpoint: no marker to expect


def _is_last(value) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in _TRUE)


def set_aside_previous(run_dir: str, say=print) -> list[str]:
    """For a run that starts afresh in a folder holding another run's checkpoints (--overwrite_output_dir):
    rename each `checkpoint-N` to `previous-checkpoint-N`, so that rotation cannot delete the new run's
    checkpoints to keep the old ones, and resuming later cannot pick an old one. Returns the new names."""
    moved = []
    for _, folder in checkpoints(run_dir):
        aside = _set_aside(folder, "previous-")
        if aside is not None:
            moved.append(aside)
    if moved:
        say(f"preftune: {run_dir} held {len(moved)} checkpoint(s) of an earlier run; set aside as previous-checkpoint-N")
    return moved


def _set_aside(folder: str, prefix: str = "incomplete-") -> str | None:
    """Rename `folder` to <prefix><name> (-2, -3, ... when taken; nothing is deleted).
    None when it is already gone (another process of the same run moved it first)."""
    base = os.path.join(os.path.dirname(folder), prefix + os.path.basename(folder))
    aside, n = base, 1
    while os.path.exists(aside):
        n += 1
        aside = f"{base}-{n}"
    try:
        os.rename(folder, aside)
    except FileNotFoundError:
        return None
    return aside


def _written_by_preftune(folder: str) -> bool:
    """A checkpoint folder of a preftune run: it holds preftune's own state, or a sibling checkpoint is marked."""
    if os.path.exists(os.path.join(folder, EXTRA_STATE)):
        return True
    parent = os.path.dirname(os.path.abspath(folder))
    return any(is_complete(p) for _, p in checkpoints(parent) if os.path.abspath(p) != os.path.abspath(folder))


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
        unmark(path)  # first: a deletion cut short leaves an incomplete folder, never a "complete" half
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


# ------------------------------------------------------------ failed writes

class SaveError(UserError):
    """A checkpoint or the final model could not be written (a full disk, ...). Whatever was
    complete before is untouched: `last_complete` is the newest checkpoint to resume from."""

    def __init__(self, folder: str, reason: str, last_complete: str | None):
        self.folder, self.reason, self.last_complete = folder, reason, last_complete
        where = (f"the last complete checkpoint is {last_complete}" if last_complete
                 else "there is no complete checkpoint to resume from yet")
        super().__init__(f"{reason} while writing {folder}; {where}")


@contextlib.contextmanager
def writing(folder: str, run_dir: str):
    """Turn a failed write into `folder` into a SaveError naming the last complete checkpoint of `run_dir`."""
    try:
        yield
    except Exception as err:
        reason = write_failure(err, folder)
        if reason is None:
            raise
        raise SaveError(folder, reason, last_complete(run_dir)[0]) from err
