"""The one lock root takes in a home: `mint.lock`, and the run's allowance for waiting on it.

Part of the trust boundary of reconcile.local.homefs (the file is reached and
created the same way: openat, O_NOFOLLOW, checked on the descriptor). A person
may hold their own lock forever, so waiting is bounded by one allowance for the
whole run (LockAllowance), not granted per person (docs/design.md, "Locks a
person can hold").
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time

from reconcile.common.pause import pause
from reconcile.local.accounts import Account
from reconcile.local.homefs import HomeFsError, UnsafePath, fix_descriptor, require_plain_file, split_path, walk, shown


MINT_LOCK_FILE = ".config/claude-auth-sync/mint.lock"
"""Serialises token mints for one person across hosts that share the home folder (docs/design.md, "Fleet")."""

LOCK_WAIT_ALLOWANCE = 3.0
"""Seconds one whole run may spend waiting on locks in homes, all people together."""


class LockHeld(HomeFsError):
    """A lock in a home is held by someone else beyond what this run may wait: that person's row is skipped."""


class LockAllowance:
    """One run's allowance of waiting on locks that people can hold (their mint locks).

    A person owns the lock file in her home and may hold it forever. Waiting per person
    would let a few people stall everyone's run, so the waiting is shared: every wait
    draws on one allowance of `seconds` for the run, and once it is spent each lock is
    only tried, never waited for. Another host's mint over a shared home holds the lock
    for milliseconds, well within it. Thread-safe.
    """

    def __init__(self, seconds: float = LOCK_WAIT_ALLOWANCE) -> None:
        self._left = seconds
        self.total = seconds
        self._guard = threading.Lock()

    def left(self) -> float:
        with self._guard:
            return max(0.0, self._left)

    def spend(self, seconds: float) -> None:
        with self._guard:
            self._left -= seconds


def _open_lock_file(parent: int, leaf: str, account: Account, display: str) -> int:
    """The lock file, created by root (and given to the person) or the person's own, never another's."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    for _ in range(3):  # created and removed by others in between: try a few times
        try:
            fd = os.open(leaf, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=parent)
        except FileExistsError:
            pass
        except OSError as exc:
            raise HomeFsError(f"cannot create {display}: {exc.strerror}") from None
        else:
            try:
                os.fchown(fd, account.uid, account.gid)
                os.fchmod(fd, 0o600)
            except OSError as exc:
                os.close(fd)
                raise HomeFsError(f"cannot set owner and mode of {display}: {exc.strerror}") from None
            return fd
        try:
            fd = os.open(leaf, flags, dir_fd=parent)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePath(f"{display} is a symbolic link; refusing to follow it") from None
            if exc.errno in (errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP, errno.EISDIR):
                raise UnsafePath(f"{display} is not a regular file; refusing to use it") from None
            raise HomeFsError(f"cannot open {display}: {exc.strerror}") from None
        try:
            require_plain_file(fd, account, display, "use", half_made_ok=True)
            fix_descriptor(fd, account, 0o600, display)
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise UnsafePath(f"{display} keeps appearing and disappearing; refusing to use it")


def lock_private_file(account: Account, rel_path: str, *, timeout: float,
                      allowance: LockAllowance | None = None) -> int:
    """An exclusive flock on ~/rel_path (created empty, 0600, owner the user); returns the descriptor.

    The lock is dropped by closing the descriptor. The file is opened as every
    other file here: parents walked without following links, the leaf created
    by root with O_EXCL (and given to the person) or else opened with
    O_NOFOLLOW and refused unless it is a regular file with one link that the
    person already owns. A holder (another host's apply over a shared home, or
    the person) is waited for at most `timeout` seconds and never beyond what
    is left of the run's `allowance` (none given: the timeout alone); then LockHeld.
    """
    allowance = allowance if allowance is not None else LockAllowance(timeout)
    parts = split_path(rel_path)
    display = shown(rel_path)
    parent = walk(account, parts[:-1], create=True)
    assert parent is not None
    try:
        fd = _open_lock_file(parent, parts[-1], account, display)
    finally:
        os.close(parent)
    try:
        started = time.monotonic()
        ends = started + min(timeout, allowance.left())
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return fd
                except BlockingIOError:
                    if time.monotonic() >= ends:
                        raise LockHeld(f"{display} is held by another process (this run waits on "
                                       f"such locks for {allowance.total:g} s in all)") from None
                    pause(0.02)
                except OSError as exc:
                    raise HomeFsError(f"cannot lock {display}: {exc.strerror}") from None
        finally:
            allowance.spend(time.monotonic() - started)
    except BaseException:
        os.close(fd)
        raise
