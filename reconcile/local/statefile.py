"""The root-only state file and the apply lock.

Owns `<root>/var/lib/claude-auth/` (folder 0700, owner root): `state.json`
(0600) and `lock` (0600). The state file holds accessors only, never a token,
so that `apply --prune` can find and revoke the token of a user who left the
roster, and so that a replaced token whose revocation failed is retried by
the next admin run. Everything else is re-read from the world on every run
(level-based); this file only remembers what the world cannot tell: which
tokens this tool minted.

It also holds the write-ahead log of mints: before each create-orphan call,
a random nonce and the user it is for are written (fsynced) to `intents`,
and the same nonce travels in the new token's metadata (`mint_nonce`). Once
the token is in the user's file the record replaces the intent. An intent
left by a crash is resolved by the next admin run (reconcile.vault.observe):
the token carrying its nonce is adopted when it is in the user's file, and
revoked otherwise. `Journal` keeps the file current while apply runs.

Format (version 3): {"version": 3, "tokens": {"<user>": {"accessor": "<accessor>"}},
"pending_revoke": ["<accessor>", ...], "intents": {"<nonce>": {"user": "<user>"}}}.
Versions 1 (no `pending_revoke`) and 2 (no `intents`) are still read. Written
atomically (temp file in the same folder, fsync, rename) and only when its
content changes.

`apply` holds an exclusive, non-blocking flock on `lock` for the whole run
(`apply_lock`), so the hourly timer and an admin run never apply at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from reconcile.common.atomicfile import make_folders, write_atomically


STATE_DIR = Path("var/lib/claude-auth")
STATE_FILE = STATE_DIR / "state.json"
LOCK_FILE = STATE_DIR / "lock"
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)


TWIN_SUFFIX = ".twin"


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
    intents: Mapping[str, str] = field(default_factory=dict)
    """Mint nonce -> user: a mint was (or was about to be) asked for and is not yet accounted for."""


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
        intent_map = document.get("intents", {}) if version >= 3 else {}
        if not isinstance(intent_map, dict):
            raise ValueError("intents must be a map")
        intents = {_accessor(nonce): _accessor(entry["user"]) for nonce, entry in intent_map.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise StateFileError(f"state file {path} is not valid (expected version {VERSION}, every accessor "
                             "a non-empty string); fix it or move it away") from None
    return State(records, pending, intents)


def render_state(state: State) -> bytes:
    document = {"version": VERSION,
                "tokens": {user: {"accessor": accessor} for user, accessor in sorted(state.records.items())},
                "pending_revoke": sorted(set(state.pending_revoke)),
                "intents": {nonce: {"user": user} for nonce, user in sorted(state.intents.items())}}
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")


def render_records(records: Mapping[str, str], pending_revoke: Iterable[str] = ()) -> bytes:
    return render_state(State(dict(records), tuple(sorted(set(pending_revoke)))))


def _normal(state: State) -> State:
    return State(dict(state.records), tuple(sorted(set(state.pending_revoke))), dict(state.intents))


def write_state(root: Path | str, state: State, *, durable: bool = True) -> bool:
    """Write the state if it differs from the file; return whether it was written.

    `durable=False` leaves out the fsyncs, for a change whose loss a later run
    heals anyway (an intent settled: the next run resolves it again).
    """
    path = state_path(root)
    state = _normal(state)
    try:
        unchanged = path.exists() and _normal(read_state(root)) == state
    except StateFileError:
        unchanged = False  # replaced below
    try:
        if unchanged:
            _ensure_modes(path)
            return False
        make_folders(path.parent, 0o700)
        _ensure_modes(path)
        write_atomically(path, render_state(state), 0o600, durable=durable)
    except OSError as exc:
        raise StateFileError(f"state file {path} cannot be written: {exc.strerror or exc}") from None
    return True


def write_records(root: Path | str, records: Mapping[str, str], pending_revoke: Iterable[str] = (),
                  intents: Mapping[str, str] | None = None) -> bool:
    """Write the records, the accessors still to revoke and the intents (kept as in the file when None)
    if they differ from the file; return whether it was written."""
    if intents is None:
        try:
            intents = read_state(root).intents
        except StateFileError:
            intents = {}
    return write_state(root, State(dict(records), tuple(pending_revoke), dict(intents)))


class Journal:
    """The state file kept current while apply runs: intents before mints, records as mints complete.

    `prepare` writes the nonces of every mint the run is about to ask for in
    one fsynced write (a thousand first mints need not wait for a thousand
    fsyncs); `intend` hands one out just before its create call (writing it
    first if it was not prepared). `settle` records a finished mint, writing
    at most once per SETTLE_INTERVAL seconds: a lost settle only leaves an
    intent the next run resolves. Raises StateFileError when a write fails:
    a mint must not be asked for when its intent is not on disk.
    """

    SETTLE_INTERVAL = 1.0

    def __init__(self, root: Path | str, state: State, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self._clock = clock
        self._records = dict(state.records)
        self._pending = tuple(state.pending_revoke)
        self._intents = dict(state.intents)
        """Every intent on disk (or about to be): the file's, and this run's."""
        self._unsent: dict[str, list[str]] = {}
        """By user, prepared nonces whose mint has not been asked for (yet)."""
        self._written_at: float | None = None

    @property
    def state(self) -> State:
        return State(dict(self._records), self._pending, dict(self._intents))

    def outstanding(self) -> dict[str, str]:
        """The intents a crash now would leave to resolve: the file's, and this run's mints that were
        asked for and not settled (a prepared mint never asked for minted nothing)."""
        unsent = {nonce for nonces in self._unsent.values() for nonce in nonces}
        return {nonce: user for nonce, user in self._intents.items() if nonce not in unsent}

    def prepare(self, users: Iterable[str]) -> None:
        fresh = {secrets.token_hex(16): user for user in users}
        if not fresh:
            return
        self._intents.update(fresh)
        for nonce, user in fresh.items():
            self._unsent.setdefault(user, []).append(nonce)
        self._write(durable=True)

    def intend(self, user: str) -> str:
        """The nonce for a mint for `user`, on disk before this returns."""
        if self._unsent.get(user):
            return self._unsent[user].pop()
        nonce = secrets.token_hex(16)
        self._intents[nonce] = user
        self._write(durable=True)
        return nonce

    def settle(self, nonce: str, user: str | None = None, accessor: str | None = None,
               replaced: Iterable[str] = ()) -> None:
        """The mint of `nonce` is accounted for: its token is now `user`'s record (when given) or none
        exists. `replaced`: the tokens the new one replaces, still to revoke; they join
        `pending_revoke` in the same write as the record, so a crash before their revocation leaves
        them findable (the record no longer names them)."""
        self._intents.pop(nonce, None)
        if user is not None and accessor is not None:
            self._records[user] = accessor
        fresh = set(replaced) - {accessor}
        if fresh:
            self._pending = tuple(sorted(set(self._pending) | fresh))
        if self._written_at is None or self._clock() - self._written_at >= self.SETTLE_INTERVAL:
            self._write(durable=False)

    def keep_twin(self, nonce: str, user: str) -> None:
        """The mint of `nonce` was sent twice and this run cannot look for a first copy (no admin token):
        an intent `<nonce>.twin` stays for the next admin run, which revokes any such copy not in use."""
        self._intents[nonce + TWIN_SUFFIX] = user
        self._write(durable=True)

    def replace_all(self, state: State) -> None:
        """The state at the end of the run (computed from what the run saw and did)."""
        self._records, self._pending, self._intents = dict(state.records), tuple(state.pending_revoke), \
            dict(state.intents)
        self._unsent = {}
        write_state(self.root, self.state)

    def _write(self, *, durable: bool) -> None:
        path = state_path(self.root)
        try:
            make_folders(path.parent, 0o700)
            _ensure_modes(path)
            write_atomically(path, render_state(self.state), 0o600, durable=durable)
        except OSError as exc:
            raise StateFileError(f"state file {path} cannot be written: {exc.strerror or exc}") from None
        self._written_at = self._clock()


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
        make_folders(folder, 0o700)
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
