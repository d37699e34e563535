"""Atomic replacement of a file in a folder root controls (never a home folder: see homefs).

A new temporary file next to the target (O_CREAT|O_EXCL|O_NOFOLLOW), its mode
set, the data written and fsynced, renamed over the target, and the folder
fsynced: a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int, *, durable: bool = True) -> None:
    """Raises OSError (its filename set to `path`) when the file cannot be written.

    With `durable=False` the fsyncs are left out: the caller flushes a whole batch
    of files at once (one os.sync()) before anything depends on them surviving a crash.
    """
    folder = path.parent
    temp = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    if not durable:
        return
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
