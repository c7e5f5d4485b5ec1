"""Writing files that must never be seen half-written, and saying in words why a write failed.

`atomic_write` is the one way preftune writes a file it leaves behind (metrics, curves, the
model card, checkpoint markers, cached reference log-probs): a temporary file next to the
target, then ``os.replace``, so a reader sees the old file or the new one, never a part.
`write_failure` turns an exception raised while writing (a full disk, a quota) into one
sentence, or None for anything that is not a failed write (a bug, which should raise as it is).
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile


def atomic_write(path: str, data: bytes | None = None, *, writer=None, fsync: bool = False) -> str:
    """Write `data` (or call `writer(tmp_path)`) into a temporary file next to `path`, then rename it over `path`.

    The folder is created when missing. With `fsync`, the file's bytes are flushed to disk before
    the rename, so the new file also survives a machine crash. On any failure the temporary file
    is removed and the error raised; `path` is left as it was. Returns `path`.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if data is not None:
                f.write(data)
        if writer is not None:
            writer(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


# ------------------------------------------------------------ failed writes

_NO_SPACE_WORDS = ("No space left", "os error 28", "StorageFull", "Disk quota exceeded", "os error 122")
# torch.save reports a short write from its C++ zip writer, not as an OSError.
_TORCH_WRITE_WORDS = ("PytorchStreamWriter", "inline_container", "file write failed")
_LOW_SPACE = 16 * 2**20  # bytes left on the device after a failed write that point to a full disk


def write_failure(err: BaseException, folder: str) -> str | None:
    """What went wrong, in words, when `err` was raised while writing into `folder`; None when it
    is not a failed write (a bug, which should raise as it is)."""
    text = str(err)
    is_write = isinstance(err, OSError) or type(err).__name__ == "SafetensorError" or (
        isinstance(err, RuntimeError) and any(w in text for w in _TORCH_WRITE_WORDS))
    if not is_write:
        return None
    device = f"no space left on the device of {os.path.dirname(os.path.abspath(folder)) or folder}"
    if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(w in text for w in _NO_SPACE_WORDS):
        return device
    try:
        if shutil.disk_usage(os.path.dirname(os.path.abspath(folder))).free < _LOW_SPACE:
            return device
    except OSError:
        pass
    if isinstance(err, OSError):
        return f"a write failed ({err.strerror or err})"
    return None
