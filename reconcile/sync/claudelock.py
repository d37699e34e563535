"""Claude Code's own OAuth refresh lock, taken the way Claude takes it.

Claude Code 2.1.197, before it refreshes a login, takes two proper-lockfile
locks (read from the CLI; see FACTS.md): the folder
`~/.claude/.oauth_refresh.lock` and then the legacy folder
`<realpath of ~/.claude>.lock`. proper-lockfile's rules, kept here:

- taking a lock is `mkdir`; an existing folder means held;
- the holder touches the folder's mtime while it holds it (every 5 s, half
  of the stale time);
- a lock whose mtime is older than 10 s is stale (its holder died) and is
  taken over: removed, then made again;
- releasing is `rmdir`.

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

LOCK_NAME = ".oauth_refresh.lock"
STALE_SECONDS = 10.0
"""proper-lockfile's `stale` as Claude sets it: an mtime older than this means the holder died."""
UPDATE_SECONDS = STALE_SECONDS / 2
"""How often a held lock's mtime is refreshed (proper-lockfile's default `update`)."""
DEFAULT_WAIT_SECONDS = 15.0
"""How long a sync waits for Claude to finish a refresh: longer than STALE_SECONDS, so a lock left by a
dead process is always taken over within one wait, and longer than a refresh takes."""
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


def _try_take(path: Path, now: Callable[[], float]) -> bool:
    """True when `path` was made (taken); False when held by a live holder. Takes a stale lock over.

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
        return False
    try:  # stale: its holder died; proper-lockfile removes it and makes it again
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except NotADirectoryError:
        os.unlink(path)
    return _try_take_once(path)


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
         sleep: Callable[[float], None] = time.sleep) -> Iterator[None]:
    """Hold Claude's refresh lock (and its legacy lock, where it can be made) for the `with` block.

    Raises ClaudeRefreshing when a live holder keeps either lock for `wait`
    seconds. `claude_dir` must exist (the caller makes it first). `home`
    only shortens the paths shown in messages.
    """
    main, legacy = lock_paths(claude_dir)
    taken: list[Path] = []
    deadline = clock() + wait
    try:
        while True:
            if not taken and _try_take(main, now):
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
        toucher = _Toucher(list(taken))
        toucher.start()
        try:
            yield
        finally:
            toucher.stop()
    finally:
        for path in reversed(taken):
            _release(path)


def _is_live(path: Path, now: Callable[[], float]) -> bool:
    try:
        return os.lstat(path).st_mtime >= now() - STALE_SECONDS
    except OSError:
        return False
