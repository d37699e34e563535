"""Claude Code's own OAuth refresh lock, taken the way Claude takes it.

Claude Code, before it refreshes a login, takes two proper-lockfile locks
(read from the CLI; see docs/claude-cli.md): the folder
`~/.claude/.oauth_refresh.lock` and then the legacy folder
`<realpath of ~/.claude>.lock`. proper-lockfile's rules, kept here:

- taking a lock is `mkdir`; an existing folder means held;
- the holder touches the folder's mtime while it holds it (every 5 s in
  both supported versions);
- a lock whose mtime is older than its `stale` time is taken over: removed,
  then made again. 2.1.197 sets `stale` to 10 s, 2.1.332 to 60 s; this
  module uses 60 s, so it never takes over a lock that either still honours;
- releasing is `rmdir`.

2.1.332 also writes `~/.claude/.oauth_refresh.lock.owner` naming its process
(reconcile.sync.ownerrecord), and takes a fresh lock over early when that
record proves its holder gone. So does this module, by the same rules, and
it writes the same record for the locks it holds: a Claude can then take
over the lock of a sync that was killed without waiting 60 s.

Claude treats the legacy lock as best effort: if it cannot be made for any
reason other than being held (a read-only home, as under the sync unit's
ProtectHome=read-only), it goes on with the first lock alone. So does this.

A restore (and any other writer of `.credentials.json`: see
credentials.replace_oauth) and the backup's read of the file hold both, so
they never interleave with a refresh: a refresh rotates the refresh token,
and a backup taken or a restore made in the middle of one loses the login.

`held(claude_dir, wait)` waits at most `wait` seconds, polling, then raises
ClaudeRefreshing (the run says SKIP and writes nothing). The locks are
released on every way out of the `with` block, KeyboardInterrupt included.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from reconcile.common.pause import pause
from reconcile.sync import ownerrecord

LOCK_NAME = ".oauth_refresh.lock"
STALE_SECONDS = 60.0
"""The longest `stale` any supported Claude sets (2.1.332; 2.1.197: 10 s): an mtime older than this means
the holder died, whichever version it was."""
UPDATE_SECONDS = 5.0
"""How often a held lock's mtime is refreshed: well inside 2.1.197's 10 s `stale`, as Claude does."""
DEFAULT_WAIT_SECONDS = 15.0
"""How long a sync waits for Claude to finish a refresh (longer than one takes). A lock whose owner record
proves its holder dead is taken over at once; one without a record (2.1.197) only once it is 60 s stale,
so a sync that meets it sooner says SKIP and a later run takes it over."""
POLL_SECONDS = 0.25


class ClaudeRefreshing(Exception):
    """Claude held its refresh lock for the whole wait; the message says which lock (safe to show)."""


def lock_paths(claude_dir: Path) -> tuple[Path, Path]:
    """(the lock folder in ~/.claude, the legacy lock folder beside ~/.claude), as Claude names them."""
    try:
        real = Path(os.path.realpath(claude_dir))
    except OSError:
        real = claude_dir
    return claude_dir / LOCK_NAME, real.with_name(real.name + ".lock")


def _shown(path: Path, home: Path | None) -> str:
    if home is not None:
        try:
            return "~/" + str(path.relative_to(home))
        except ValueError:
            pass
    return str(path)


def _try_take(path: Path, now: Callable[[], float], legacy: Path | None = None) -> bool:
    """True when `path` was made (taken); False when held by a live holder. Takes a dead one's over:
    stale by its mtime, or (the main lock, given its `legacy` companion) proven dead by its owner record.

    OSError other than "exists" passes through.
    """
    try:
        os.mkdir(path, 0o700)
        return True
    except FileExistsError:
        pass
    try:
        mtime = os.lstat(path).st_mtime
    except FileNotFoundError:
        return _try_take_once(path)  # released meanwhile
    if mtime >= now() - STALE_SECONDS:
        if legacy is None or not ownerrecord.holder_gone(path):
            return False
        _take_over_from_dead_holder(path, legacy)
        return _try_take_once(path)
    try:  # stale: its holder died; proper-lockfile removes it and makes it again
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except NotADirectoryError:
        os.unlink(path)
    return _try_take_once(path)


def _take_over_from_dead_holder(main: Path, legacy: Path) -> None:
    """As Claude 2.1.332 does: the legacy lock first when the record says it was the holder's, then the lock."""
    record = ownerrecord.read(main) or {}
    legacy_born = ownerrecord.birthtime_ms(legacy)
    if legacy_born is not None and legacy_born == record.get("legacyLockBirthtimeMs"):
        _release(legacy)
    _release(main)
    ownerrecord.remove(main)


def _try_take_once(path: Path) -> bool:
    try:
        os.mkdir(path, 0o700)
        return True
    except FileExistsError:  # another process took it over first
        return False


def _release(path: Path) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass  # already gone (taken over as stale, or removed by hand): nothing of ours is left


class _Toucher:
    """Keeps the held locks' mtime fresh from a daemon thread, as proper-lockfile's `update` does."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = paths
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="claude-refresh-lock", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(UPDATE_SECONDS):
            for path in self._paths:
                try:
                    os.utime(path)
                except OSError:
                    pass

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


@contextmanager
def held(claude_dir: Path, wait: float = DEFAULT_WAIT_SECONDS, *, home: Path | None = None,
         clock: Callable[[], float] = time.monotonic, now: Callable[[], float] = time.time,
         sleep: Callable[[float], None] = pause) -> Iterator[None]:
    """Hold Claude's refresh lock (and its legacy lock, where it can be made) for the `with` block.

    Raises ClaudeRefreshing when a live holder keeps either lock for `wait`
    seconds. `claude_dir` must exist (the caller makes it first). `home`
    only shortens the paths shown in messages.
    """
    main, legacy = lock_paths(claude_dir)
    taken: list[Path] = []
    born: float | None = None
    deadline = clock() + wait
    try:
        while True:
            if not taken and _try_take(main, now, legacy):
                taken.append(main)
            if taken:
                try:
                    if _try_take(legacy, now):
                        taken.append(legacy)
                        break
                except OSError as exc:
                    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and not _is_live(legacy, now):
                        break  # cannot be made here (read-only home) and nobody holds it: as Claude does
                    raise
                # Legacy lock held: let go of the first one too while waiting (as Claude does),
                # so the two are never held crosswise.
                _release(taken.pop())
                blocker = legacy
            else:
                blocker = main
            if clock() >= deadline:
                raise ClaudeRefreshing(f"{_shown(blocker, home)} held for more than {wait:g} s")
            sleep(POLL_SECONDS)
        born = ownerrecord.write(main, legacy if legacy in taken else None)
        toucher = _Toucher(list(taken))
        toucher.start()
        try:
            yield
        finally:
            toucher.stop()
    finally:
        if taken:
            ownerrecord.remove_if_ours(main, born)
        for path in reversed(taken):
            _release(path)


def _is_live(path: Path, now: Callable[[], float]) -> bool:
    try:
        return os.lstat(path).st_mtime >= now() - STALE_SECONDS
    except OSError:
        return False
