"""What one sync run says, and where: status lines, the capped log, the lock.

Every run ends with exactly one status line (`OK`, `RECOVERED`, `SKIP` or
`FAIL` plus a reason) on stdout and appended to `sync.log` with an ISO 8601
UTC timestamp; `WARN` lines go the same way before it. Every line passes
through `Redactor` first, so a secret the run has seen cannot reach stdout or
the log even if a reason were to quote it. The log is rotated at 1 MiB,
keeping one old file (`sync.log.1`). The log and the lock file are opened
through safefile (non-blocking, never through a link, a regular file only):
a FIFO planted there must not hang the run.
"""

from __future__ import annotations

import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import IO, Iterable

from reconcile.common.atomicfile import make_folders
from reconcile.common.pause import pause
from reconcile.sync.safefile import UnsafeFile, open_checked

LOG_LIMIT_BYTES = 1024 * 1024
REDACTED = "<redacted>"
_MIN_SECRET_LENGTH = 6
"""Shorter values are not redacted (they would blank ordinary words); real tokens are far longer."""


class Status(str, Enum):
    OK = "OK"
    RECOVERED = "RECOVERED"
    SKIP = "SKIP"
    FAIL = "FAIL"
    WARN = "WARN"

    @property
    def is_success(self) -> bool:
        return self is not Status.FAIL


def utc_timestamp(now: float | None = None) -> str:
    """ISO 8601 in UTC with a `Z`, to the second: 2025-01-31T12:00:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))


def status_line(status: Status, user: str, reason: str) -> str:
    """`<STATUS> <user>: <reason>` on one line."""
    flat = " ".join(reason.split())
    return f"{status.value} {user}: {flat}"


class Redactor:
    """Replaces every secret value it was told about with `<redacted>`."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, *values: object) -> None:
        for value in values:
            if isinstance(value, str) and len(value) >= _MIN_SECRET_LENGTH:
                self._secrets.add(value)

    def __call__(self, text: str) -> str:
        # Longest first, so a secret that contains another is removed whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


def rotate_if_needed(path: Path, incoming: int, limit: int = LOG_LIMIT_BYTES) -> bool:
    """Move `path` to `path.1` (replacing it) when adding `incoming` bytes would pass `limit`."""
    try:
        size = path.lstat().st_size
    except FileNotFoundError:
        return False
    if size == 0 or size + incoming <= limit:
        return False
    os.replace(path, path.with_name(path.name + ".1"))
    return True


def _open_log(path: Path, shown: str | None = None) -> int:
    fd = open_checked(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, shown or str(path), follow_symlinks=False)
    assert fd is not None  # O_CREAT: never missing
    return fd


def log_problem(path: Path, shown: str) -> UnsafeFile | None:
    """Why the log cannot be appended to safely (a FIFO, a link, ...), or None. Creates it when missing."""
    try:
        os.close(_open_log(path, shown))
    except UnsafeFile as exc:
        return exc
    return None


def append_log(path: Path, lines: Iterable[str], now: float | None = None,
               limit: int = LOG_LIMIT_BYTES) -> None:
    """Append `<timestamp> <line>` for each line (one write, O_APPEND, mode 0600).

    UnsafeFile when the log is not a regular file (never followed through a link).
    """
    stamp = utc_timestamp(now)
    data = "".join(f"{stamp} {line}\n" for line in lines).encode("utf-8", errors="replace")
    if not data:
        return
    rotate_if_needed(path, len(data), limit)
    fd = _open_log(path)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) with mode 0700 when missing; an existing folder is left as it is."""
    if not path.is_dir():
        make_folders(path, 0o700, parent_mode=0o700)


class Lock:
    """An exclusive, non-blocking flock on the state folder's `lock` file, held until release."""

    def __init__(self, path: Path, shown: str | None = None) -> None:
        self.path = path
        self.shown = shown or str(path)
        self._fd: int | None = None

    def acquire(self) -> bool:
        """True when taken; False when another run holds it. UnsafeFile when it is not a regular file."""
        import fcntl

        fd = open_checked(self.path, os.O_RDWR | os.O_CREAT, self.shown, follow_symlinks=False)
        assert fd is not None  # O_CREAT: never missing
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def acquire_within(self, seconds: float, poll: float = 0.2) -> bool:
        """acquire, retried for up to `seconds` (a backup on change waits out a running sync)."""
        deadline = time.monotonic() + seconds
        while not self.acquire():
            if time.monotonic() >= deadline:
                return False
            pause(poll)
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


class Reporter:
    """Prints WARN lines as they come and the one final status line; logs them all."""

    def __init__(self, user: str, log_path: Path | None, redact: Redactor,
                 out: IO[str] | None = None) -> None:
        self.user = user
        self.log_path = log_path
        self.redact = redact
        self._out = out
        self.lines: list[str] = []
        """Every line printed this run (already redacted)."""

    def _print(self, line: str) -> None:
        out = self._out or sys.stdout
        out.write(line + "\n")
        out.flush()

    def _emit(self, status: Status, reason: str) -> str:
        line = self.redact(status_line(status, self.user, reason))
        self.lines.append(line)
        if self.log_path is not None:
            try:
                append_log(self.log_path, [line])
            except (OSError, UnsafeFile) as exc:
                self.log_path = None  # say it once, then keep to stdout
                why = str(exc) if isinstance(exc, UnsafeFile) else exc.strerror or type(exc).__name__
                self._print(self.redact(status_line(Status.WARN, self.user, f"cannot append to the sync log: {why}")))
        self._print(line)
        return line

    def warn(self, reason: str) -> None:
        self._emit(Status.WARN, reason)

    def finish(self, status: Status, reason: str) -> str:
        return self._emit(status, reason)
