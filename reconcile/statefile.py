"""The root-only state file: which token accessor each user's scoped token has.

Owns `<root>/var/lib/claude-auth/state.json` (folder 0700, file 0600, owner
root). It holds accessors only, never a token, so that `apply --prune` can
find and revoke the token of a user who left the roster. Everything else is
re-read from the world on every run (level-based); this file only remembers
what the world cannot tell: which tokens this tool minted.

Format: {"version": 1, "tokens": {"<user>": {"accessor": "<accessor>"}}}.
Written atomically (temp file in the same folder, fsync, rename) and only
when its content changes.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Mapping

from reconcile.atomicfile import write_atomically

STATE_DIR = Path("var/lib/claude-auth")
STATE_FILE = STATE_DIR / "state.json"
VERSION = 1


class StateFileError(Exception):
    """The state file cannot be read or written; the message names it."""


def state_path(root: Path | str) -> Path:
    return Path(root) / STATE_FILE


def read_records(root: Path | str) -> dict[str, str]:
    """user -> token accessor; empty when there is no state file yet."""
    path = state_path(root)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
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
        if document.get("version") != VERSION or not isinstance(tokens, dict):
            raise ValueError("unexpected layout")
        records = {str(user): str(entry["accessor"]) for user, entry in tokens.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise StateFileError(f"state file {path} is not valid (expected version {VERSION}); "
                             "fix it or move it away") from None
    return records


def render_records(records: Mapping[str, str]) -> bytes:
    document = {"version": VERSION,
                "tokens": {user: {"accessor": accessor} for user, accessor in sorted(records.items())}}
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_records(root: Path | str, records: Mapping[str, str]) -> bool:
    """Write the records if they differ from the file; return whether it was written."""
    path = state_path(root)
    data = render_records(records)
    try:
        unchanged = path.exists() and read_records(root) == dict(records)
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
