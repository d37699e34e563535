"""The user's `~/.claude/.credentials.json`: read, validate, merge atomically, keep copies.

Claude Code keeps its login there as `{"claudeAiOauth": {...}, "mcpOAuth":
{...}, ...}`. Sync only ever replaces the `claudeAiOauth` value; every other
key keeps its value. A file that is not a JSON object, or whose
`claudeAiOauth` is not an object, is corrupt and is never overwritten; a
`claudeAiOauth` object of a broken shape (oauth_problem) is a broken login,
which the sync replaces with the backup.
The replacement is atomic (temp file in the same folder, 0600, fsync,
rename) and starts over when the file changed on disk in between. Before a
replacement, the replaced object is kept in the state folder (0600, the last
three kept) so a restore can be undone.

The file is read through safefile (non-blocking, a regular file only, at
most CREDENTIALS_LIMIT, 1 MiB; a link to a regular file is followed, since
the person may keep the file elsewhere) and decoded with a depth cap
(boundedjson). Every replacement holds Claude's own refresh lock
(claudelock) from its read to its rename, so anything that installs a login
through replace_oauth cannot race a refresh. A linked file is replaced by a
regular file (the rename replaces the link, never writes through it).

Error messages name files and problems, never a value from the file.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from reconcile.common import boundedjson
from reconcile.common.atomicfile import make_folders
from reconcile.sync import claudelock, safefile
from reconcile.sync.safefile import CREDENTIALS_LIMIT

OAUTH_KEY = "claudeAiOauth"
KEEP_PREFIX = "credentials-backup-"
KEEP_COUNT = 3
MERGE_ATTEMPTS = 5
MAX_DEPTH = boundedjson.DEFAULT_MAX_DEPTH
"""Deepest nesting accepted in the file (a login nests 3 levels)."""
_UNCHECKED: Any = object()


class CredentialsError(Exception):
    """The credentials file cannot be used or written; the message is safe to show."""


class LoginChanged(CredentialsError):
    """The file no longer holds the login the caller decided on (Claude refreshed it meanwhile)."""


@dataclass(frozen=True)
class LocalCredentials:
    """One read of the credentials file."""

    raw: bytes | None
    """The bytes read; None when the file does not exist."""
    document: Mapping[str, Any]
    """The parsed top-level object ({} when the file does not exist)."""

    @property
    def exists(self) -> bool:
        return self.raw is not None

    @property
    def oauth(self) -> Mapping[str, Any] | None:
        value = self.document.get(OAUTH_KEY)
        return value if isinstance(value, dict) else None

    def broken(self, now_ms: int | None = None) -> str | None:
        """Why the login in the file is of a shape Claude cannot use (local_oauth_problem), or
        None: also None when there is no login at all (nothing to repair, only to log in)."""
        return None if self.oauth is None else local_oauth_problem(self.oauth, now_ms)


INFERENCE_SCOPE = "user:inference"
"""The scope every login the probe can prove carries (a setup token has only this one)."""


def _token_problem(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        return f"{OAUTH_KEY}.{key} is missing or empty"
    return None


def _expiry_problem(obj: Mapping[str, Any]) -> str | None:
    try:
        expires = boundedjson.bounded_int(obj.get("expiresAt"), low=0, high=boundedjson.EPOCH_MS_MAX,
                                          what=f"{OAUTH_KEY}.expiresAt")
    except boundedjson.OutOfRange as exc:
        return str(exc)
    return f"{OAUTH_KEY}.expiresAt is 0" if expires == 0 else None


def _scope_problem(obj: Mapping[str, Any]) -> str | None:
    scopes = obj.get("scopes")
    if not isinstance(scopes, list):
        return f"{OAUTH_KEY}.scopes is missing or not a list"
    if INFERENCE_SCOPE not in scopes:
        return f"{OAUTH_KEY}.scopes lacks {INFERENCE_SCOPE}"
    return None


def oauth_problem(obj: object) -> str | None:
    """Why `obj` is not a refreshable login that can be backed up and restored, or None.

    Healthy: a JSON object with non-empty string `accessToken` and
    `refreshToken`, a positive finite `expiresAt` (ms since the epoch; in the
    past is fine, Claude refreshes it) and `scopes` holding `user:inference`.
    Each shape refused here has been seen in the field (anthropics/claude-code
    #76561: a losing refresh racer writes a logged-out stub with empty tokens
    and `expiresAt` 0; #85262: a refresh rewrote the file without `expiresAt`
    and `scopes`, which then failed with oauth_no_inference_scope; #83464:
    tokens blanked), so the backup only ever holds a login worth restoring.
    """
    if not isinstance(obj, dict):
        return f"{OAUTH_KEY} is not a JSON object"
    return (_token_problem(obj, "accessToken") or _token_problem(obj, "refreshToken")
            or _expiry_problem(obj) or _scope_problem(obj))


def is_setup_token_object(obj: object) -> bool:
    """A claudeAiOauth object with an access token and no refresh token key at all: a setup token
    installed in setup-token mode (reconcile.sync.setup_token), never a refreshable login, which
    always has one. An empty or blanked refresh token is a broken login, not a setup token."""
    return (isinstance(obj, dict) and obj.get("refreshToken") is None
            and isinstance(obj.get("accessToken"), str) and bool(obj.get("accessToken")))


def local_oauth_problem(obj: object, now_ms: int | None = None) -> str | None:
    """Why the local file's login is broken (Claude cannot use it, and a probe need not be spent
    to find out), or None. As oauth_problem, but a setup-token object is usable too while its
    `expiresAt` lies ahead: without a refresh token, a past expiry can never be renewed."""
    if not is_setup_token_object(obj):
        return oauth_problem(obj)
    assert isinstance(obj, dict)
    problem = _expiry_problem(obj) or _scope_problem(obj)
    if problem:
        return problem
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if int(obj["expiresAt"]) <= now:
        return f"{OAUTH_KEY}.expiresAt lies in the past and there is no refresh token"
    return None


def parse(raw: bytes, where: str) -> dict[str, Any]:
    """The top-level object of a credentials file, or CredentialsError (corrupt)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialsError(f"{where} is not UTF-8 text") from None
    problem = boundedjson.depth_problem(raw, MAX_DEPTH)
    if problem is not None and "nested deeper" in problem:
        raise CredentialsError(f"{where} is not usable JSON ({problem})")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        # Position only: the message must not quote the file.
        raise CredentialsError(f"{where} is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:  # a guard only: the depth scan above refuses such text first
        raise CredentialsError(f"{where} is not usable JSON (nested too deeply)") from None
    if not isinstance(document, dict):
        raise CredentialsError(f"{where} is not a JSON object")
    # A claudeAiOauth that is an object of a broken shape is a broken login, not a corrupt file:
    # the sync restores the backup over it (LocalCredentials.broken); anything else is never
    # overwritten.
    if OAUTH_KEY in document and not isinstance(document[OAUTH_KEY], dict):
        raise CredentialsError(f"{where}: {OAUTH_KEY} is not a JSON object")
    return document


def read_raw(path: Path, shown: str | None = None) -> bytes | None:
    """The file's bytes (None when missing); safefile.UnsafeFile for a FIFO, a device, a file over the cap."""
    found = safefile.read_capped(path, CREDENTIALS_LIMIT, shown or str(path), follow_symlinks=True)
    return found.data if found is not None else None


def read(path: Path, shown: str | None = None) -> LocalCredentials:
    """Read and validate the file; a missing file is an empty document (no login).

    Raises safefile.UnsafeFile (not a regular file, over the cap) or CredentialsError (corrupt).
    """
    raw = read_raw(path, shown)
    if raw is None:
        return LocalCredentials(raw=None, document={})
    return LocalCredentials(raw=raw, document=parse(raw, shown or str(path)))


def merged(document: Mapping[str, Any], oauth: Mapping[str, Any]) -> dict[str, Any]:
    """`document` with its claudeAiOauth replaced; every other key (and the key order) kept."""
    result = dict(document)
    result[OAUTH_KEY] = dict(oauth)
    return result


def encode(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_temp(path: Path, data: bytes) -> Path:
    """A new file beside `path` (0600) holding `data`, fsynced; the caller renames or removes it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    return tmp


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def replace_oauth(path: Path, oauth: Mapping[str, Any],
                  keep: Callable[[Mapping[str, Any]], None] | None = None,
                  attempts: int = MERGE_ATTEMPTS, *, expected: Mapping[str, Any] | None = _UNCHECKED,
                  lock_wait: float = claudelock.DEFAULT_WAIT_SECONDS, shown: str | None = None,
                  home: Path | None = None) -> LocalCredentials:
    """Install `oauth` as the file's login, atomically, under Claude's refresh lock; returns what was replaced.

    The lock (claudelock.held on the file's folder) is held from the first
    read to the rename; ClaudeRefreshing when Claude holds it for
    `lock_wait` seconds (nothing written). With `expected`, the file must
    still hold that login (None: no login) once the lock is held, else
    LoginChanged: Claude refreshed it after the caller decided.

    Each attempt reads the file, merges, writes a temp file (0600, fsync) and
    renames it over the file only if the file still holds the bytes read;
    otherwise it reads and merges again. `keep` is called with the object
    about to be replaced (once per distinct object) before the rename. A
    corrupt or unsafe file is never overwritten (CredentialsError, safefile.UnsafeFile).
    """
    shown = shown or str(path)
    make_folders(path.parent, 0o700, parent_mode=0o700)
    with claudelock.held(path.parent, lock_wait, home=home):
        kept: list[Mapping[str, Any]] = []
        for _ in range(attempts):
            current = read(path, shown)
            previous = current.oauth
            if expected is not _UNCHECKED and previous != expected:
                raise LoginChanged(f"{shown} changed since it was checked (claude refreshed the login?); "
                                   "left as is")
            if keep is not None and previous is not None and previous not in kept:
                keep(previous)
                kept.append(previous)
            data = encode(merged(current.document, oauth))
            tmp = _write_temp(path, data)
            try:
                if read_raw(path, shown) != current.raw:
                    _unlink_quietly(tmp)
                    continue  # changed on disk since we read it: read and merge again
                os.rename(tmp, path)
            except BaseException:
                _unlink_quietly(tmp)
                raise
            _fsync_dir(path.parent)
            return current
    raise CredentialsError(f"{shown} kept changing while the backup was merged in ({attempts} attempts); left as is")


def keep_previous(state_dir: Path, oauth: Mapping[str, Any], stamp: str, count: int = KEEP_COUNT) -> Path:
    """Save `{"claudeAiOauth": oauth}` as state_dir/credentials-backup-<stamp>.json (0600); keep the last `count`."""
    make_folders(state_dir, 0o700, parent_mode=0o700)
    data = json.dumps({OAUTH_KEY: dict(oauth)}, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"
    for suffix in [""] + [f"-{n}" for n in range(1, 100)]:
        target = state_dir / f"{KEEP_PREFIX}{stamp}{suffix}.json"
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        break
    else:
        raise CredentialsError(f"cannot name a new copy of the replaced login in {state_dir}")
    prune_kept(state_dir, count)
    return target


def kept_copies(state_dir: Path) -> list[Path]:
    """The kept copies, oldest first (their names sort by time)."""
    try:
        names = [p for p in state_dir.iterdir() if p.name.startswith(KEEP_PREFIX) and p.name.endswith(".json")]
    except FileNotFoundError:
        return []

    def age(p: Path) -> tuple[int, str]:
        try:  # lstat: a planted link to a FIFO or device is only ever looked at, never followed
            return (p.lstat().st_mtime_ns, p.name)
        except FileNotFoundError:
            return (0, p.name)

    return sorted(names, key=age)


def prune_kept(state_dir: Path, count: int = KEEP_COUNT) -> None:
    copies = kept_copies(state_dir)
    for old in copies[:-count] if count > 0 else copies:
        try:
            old.unlink()
        except FileNotFoundError:
            pass
