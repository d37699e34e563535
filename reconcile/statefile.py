"""The root-only state file and the apply lock.

Owns `<root>/var/lib/claude-auth/` (folder 0700, owner root): `state.json`
(0600) and `lock` (0600). The state file holds accessors only, never a token,
so that `apply --prune` can find and revoke the token of a user who left the
roster, and so that a replaced token whose revocation failed is retried by
the next admin run. Everything else is re-read from the world on every run
(level-based); this file only remembers what the world cannot tell: which
tokens this tool minted.

Format (version 2): {"version": 2, "tokens": {"<user>": {"accessor": "<accessor>"}},
"pending_revoke": ["<accessor>", ...]}. Version 1 (no `pending_revoke`) is
still read. Written atomically (temp file in the same folder, fsync, rename)
and only when its content changes.

`apply` holds an exclusive, non-blocking flock on `lock` for the whole run
(`apply_lock`), so the hourly timer and an admin run never apply at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from reconcile.atomicfile import write_atomically

STATE_DIR = Path("var/lib/claude-auth")
STATE_FILE = STATE_DIR / "state.json"
LOCK_FILE = STATE_DIR / "lock"
VERSION = 2
READABLE_VERSIONS = (1, 2)


class StateFileError(Exception):
    """The state file cannot be read or written; the message names it."""


class LockHeld(Exception):
    """Another apply holds the lock; the message names the lock file."""


@dataclass(frozen=True)
class State:
    records: dict[str, str] = field(default_factory=dict)
    """user -> accessor of the token this tool minted for that user."""
    pending_revoke: tuple[str, ...] = ()
    """Accessors of replaced tokens still to revoke (sorted, no duplicates)."""


def state_path(root: Path | str) -> Path:
    return Path(root) / STATE_FILE


def lock_path(root: Path | str) -> Path:
    return Path(root) / LOCK_FILE


def read_records(root: Path | str) -> dict[str, str]:
    """user -> token accessor; empty when there is no state file yet."""
    return read_state(root).records


def _accessor(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("an accessor must be a non-empty string")
    return value


def read_state(root: Path | str) -> State:
    """The records and the accessors still to revoke; empty when there is no state file yet."""
    path = state_path(root)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return State()
    except OSError as exc:
        raise StateFileError(f"state file {path} cannot be opened: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StateFileError(f"state file {path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read()
    finally:
        os.close(fd)
    try:
        document = json.loads(raw.decode("utf-8"))
        tokens = document["tokens"]
        version = document.get("version")
        if type(version) is not int or version not in READABLE_VERSIONS or not isinstance(tokens, dict):
            raise ValueError("unexpected layout")
        records = {str(user): _accessor(entry["accessor"]) for user, entry in tokens.items()}
        pending_list = document.get("pending_revoke", []) if version >= 2 else []
        if not isinstance(pending_list, list):
            raise ValueError("pending_revoke must be a list")
        pending = tuple(sorted({_accessor(accessor) for accessor in pending_list}))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise StateFileError(f"state file {path} is not valid (expected version {VERSION}, every accessor "
                             "a non-empty string); fix it or move it away") from None
    return State(records, pending)


def render_records(records: Mapping[str, str], pending_revoke: Iterable[str] = ()) -> bytes:
    document = {"version": VERSION,
                "tokens": {user: {"accessor": accessor} for user, accessor in sorted(records.items())},
                "pending_revoke": sorted(set(pending_revoke))}
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_records(root: Path | str, records: Mapping[str, str], pending_revoke: Iterable[str] = ()) -> bool:
    """Write the records and the accessors still to revoke if they differ from the file; return whether
    it was written."""
    path = state_path(root)
    pending = tuple(sorted(set(pending_revoke)))
    data = render_records(records, pending)
    try:
        unchanged = path.exists() and read_state(root) == State(dict(records), pending)
    except StateFileError:
        unchanged = False  # replaced below
    try:
        if unchanged:
            _ensure_modes(path)
            return False
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _ensure_modes(path)
        write_atomically(path, data, 0o600)
    except OSError as exc:
        raise StateFileError(f"state file {path} cannot be written: {exc.strerror or exc}") from None
    return True


def _ensure_modes(path: Path) -> None:
    folder = path.parent
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise OSError(20, "its folder is not a real folder")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(folder, 0o700)
    if path.exists() and not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) != 0o600:
        os.chmod(path, 0o600)


class ApplyLock:
    """The exclusive apply lock, held until `release` (or process exit)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> "ApplyLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def apply_lock(root: Path | str) -> ApplyLock:
    """Take `<root>/var/lib/claude-auth/lock` without waiting.

    The folder is created 0700 (and must be a real folder, not a link); the
    file is opened relative to it without following a link, created 0600, and
    must be a regular file. Raises LockHeld when another process holds the
    lock, StateFileError when it cannot be taken.
    """
    path = lock_path(root)
    folder = path.parent
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StateFileError(f"lock {path} cannot be taken: its folder: {exc.strerror or exc}") from None
    try:
        if stat.S_IMODE(os.fstat(dir_fd).st_mode) != 0o700:
            os.fchmod(dir_fd, 0o700)
        fd = os.open(path.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        raise StateFileError(f"lock {path} cannot be taken: {exc.strerror or exc}") from None
    finally:
        os.close(dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateFileError(f"lock {path} is not a regular file")
        if stat.S_IMODE(info.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockHeld(f"another claude-auth apply is running (lock {path})") from None
    except OSError as exc:
        os.close(fd)
        raise StateFileError(f"lock {path} cannot be taken: {exc.strerror or exc}") from None
    except StateFileError:
        os.close(fd)
        raise
    return ApplyLock(path, fd)
