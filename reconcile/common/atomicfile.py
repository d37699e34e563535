"""Atomic replacement of a file in a folder root controls (never a home folder: see homefs).

A new temporary file next to the target (O_CREAT|O_EXCL|O_NOFOLLOW), its mode
set, the data written and fsynced, renamed over the target, and the folder
fsynced: a reader sees the old file or the new one, never half of one.
A writer killed before its rename leaves its temporary file behind;
`remove_stale_temps` clears them on the next run.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections import defaultdict
from pathlib import Path
from typing import Iterable

TEMP_SUFFIX = re.compile(r"\.[0-9a-f]{12}\.tmp")
"""After `.<target name>`: the random part of this module's temporary names."""


def temp_name(path: Path) -> str:
    return f".{path.name}.{secrets.token_hex(6)}.tmp"


def is_temp_of(name: str, target: str) -> bool:
    """Whether `name` is one of this module's temporary names for a file named `target`."""
    prefix = f".{target}"
    return name.startswith(prefix) and TEMP_SUFFIX.fullmatch(name[len(prefix):]) is not None


def remove_stale_temps(targets: Iterable[Path]) -> list[Path]:
    """Remove the temporary files a killed writer left next to each target; return those removed.

    Only names this module makes for these very targets, and only regular
    files (a link is removed as a name, never followed). Call it only while no
    writer of these targets runs (apply holds its lock). A folder that cannot
    be read is skipped: nothing of ours can be in it.
    """
    by_folder: dict[Path, set[str]] = defaultdict(set)
    for target in targets:
        by_folder[target.parent].add(target.name)
    removed: list[Path] = []
    for folder, names in sorted(by_folder.items()):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if not entry.name.endswith(".tmp") or not any(is_temp_of(entry.name, name) for name in names):
                continue
            try:
                if stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError:
                continue
    return removed


PARENT_FOLDER_MODE = 0o755
"""Mode of a missing folder on the way to one of root's own files (as mkdir -p under umask 022)."""


def make_folders(folder: Path, mode: int, *, parent_mode: int = PARENT_FOLDER_MODE) -> None:
    """`mkdir -p` whose modes never depend on the caller's umask: each folder this call creates
    gets its mode set explicitly (`folder` itself `mode`, the ones above it `parent_mode`).
    Folders that exist keep theirs. Raises OSError."""
    folder = Path(folder)
    missing: list[Path] = []
    probe = folder
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not path.is_dir():
                raise
            continue  # made by someone else meanwhile: theirs to keep
        os.chmod(path, mode if path == folder else parent_mode, follow_symlinks=False)


def write_atomically(path: Path, data: bytes, mode: int, *, durable: bool = True) -> None:
    """Raises OSError (its filename set to `path`) when the file cannot be written.

    With `durable=False` the fsyncs are left out: the caller flushes a whole batch
    of files at once (one os.sync()) before anything depends on them surviving a crash.
    """
    folder = path.parent
    temp = folder / temp_name(path)
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
