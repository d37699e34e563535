"""The user's Vault backup of `claudeAiOauth`: compare, merge-write, read the latest.

The KV v2 path `<mount>/data/<path_prefix>/<user>` is shared with other
tools (for example a `vaultwarden_master_password`): a backup never replaces
the map, it merges three fields into what it read and writes with
check-and-set on the version it read (`cas=0` for a new path). A CAS
conflict means another writer got in between: read again and retry, a
bounded number of times, with a growing random pause.

Fields (the same the old shell tool wrote, so its backups are read too):
`claude_ai_oauth_json` (the object as compact JSON text, sorted keys),
`credential_expires_at_ms` (expiresAt as an int), `backed_up_at` (ISO 8601
UTC). Stored and local objects are compared parsed, so formatting does not
count; `backed_up_at` is not compared, so an unchanged login writes nothing.
Recovery reads only the latest version, never older ones (providers
invalidate rotated refresh tokens).

The path is read undecoded (Vault.kv_read_raw: each value as JSON text, the
answer capped at 64 MiB) because other tools and the person write there too:
only `claude_ai_oauth_json` is decoded, with a size cap (1 MiB) and a depth
cap, and every other key is written back as the very bytes Vault sent, even
one no decoder here could read. So hostile data never wedges a person: a
restore says `no usable backup: <why>`, and a working login is written over
it by check-and-set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from reconcile.common import boundedjson
from reconcile.common.pause import pause
from reconcile.sync.credentials import MAX_DEPTH, oauth_problem
from reconcile.sync.safefile import CREDENTIALS_LIMIT
from reconcile.vault.values import CasConflict, KvRawSecret

FIELD_OAUTH_JSON = "claude_ai_oauth_json"
FIELD_EXPIRES_AT = "credential_expires_at_ms"
FIELD_BACKED_UP_AT = "backed_up_at"
CAS_ATTEMPTS = 20
"""Reads plus CAS writes before giving up against a busy concurrent writer. Each attempt loses
only to a write that lands inside its one read-to-write round trip; against a writer that never
pauses (tests/test_sync_real.py, one merge every few ms) about half do, and on a loaded machine
10 attempts once all lost (1 run in about 10). The cost is paid only under contention."""
OAUTH_FIELD_LIMIT = CREDENTIALS_LIMIT
"""The stored object's JSON text is refused past this size (it has to fit in .credentials.json)."""


class BackupError(Exception):
    """The backup could not be written or read; the message is safe to show."""


class OlderThanBackup(BackupError):
    """The login offered is older (by expiresAt) than the one backed up: not written over it."""


class KvStore(Protocol):
    """What backup needs from reconcile.vault.client.Vault (a fake fits it in unit tests)."""

    def kv_read_raw(self, mount: str, path: str, *, consistent: bool = False) -> KvRawSecret | None: ...

    def kv_write_cas_raw(self, mount: str, path: str, fields: Mapping[str, bytes], cas: int) -> int: ...


@dataclass(frozen=True)
class BackupResult:
    written: bool
    """False when Vault already held an equal object (nothing written)."""
    version: int
    """The path's current version after the run."""
    attempts: int
    """Reads of the path (1 without any CAS conflict)."""


def encode_oauth(oauth: Mapping[str, Any]) -> str:
    return json.dumps(oauth, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def decode_stored_oauth(fields: Mapping[str, bytes]) -> tuple[Any, str | None]:
    """(the object stored at the path, None), (None, None) when there is none, or (None, why it is unreadable).

    The reason reads after the field's name: "is larger than 1 MiB".

    `fields` are the path's values as JSON text. The object is usually JSON
    text inside a JSON string; a tool that stored the object itself is
    tolerated. Size and depth are capped before anything is decoded.
    """
    raw = fields.get(FIELD_OAUTH_JSON)
    if raw is None:
        return None, None
    if len(raw) > OAUTH_FIELD_LIMIT:
        return None, f"is larger than {OAUTH_FIELD_LIMIT // (1024 * 1024)} MiB"
    try:
        value = boundedjson.loads(raw, MAX_DEPTH)
        if isinstance(value, str):
            if not value.strip():
                return None, "is empty"
            value = boundedjson.loads(value, MAX_DEPTH)
        elif not isinstance(value, dict):
            return None, f"is {_json_kind(value)}, not JSON text"
    except boundedjson.JsonProblem as exc:
        return None, f"is not usable JSON ({exc})"
    return value, None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    return "an object"


def json_fields(values: Mapping[str, Any]) -> dict[str, bytes]:
    """`values` as the JSON text merge_write and Vault.kv_write_cas_raw take."""
    return {key: json.dumps(value, ensure_ascii=False).encode("utf-8") for key, value in values.items()}


def backup_fields(oauth: Mapping[str, Any], backed_up_at: str) -> dict[str, bytes]:
    """The three fields a backup sets, as JSON text."""
    return json_fields({
        FIELD_OAUTH_JSON: encode_oauth(oauth),
        FIELD_EXPIRES_AT: int(oauth["expiresAt"]),
        FIELD_BACKED_UP_AT: backed_up_at,
    })


def _pause(attempt: int) -> float:
    import random

    return random.uniform(0.01, min(0.5, 0.02 * (2 ** attempt)))


def merge_write(store: KvStore, mount: str, path: str,
                updates: Callable[[Mapping[str, bytes]], Mapping[str, bytes] | None],
                *, attempts: int = CAS_ATTEMPTS, sleep: Callable[[float], None] = pause) -> BackupResult:
    """Merge `updates(stored)` into the map at the path with check-and-set, keeping every other key.

    The path is read undecoded (kv_read_raw): `updates` sees what is stored
    now, each value as the JSON text Vault sent, and returns the fields to
    set (JSON text too), or None when the path already holds what is wanted
    (nothing is written). Every other key is written back as the very bytes
    read. A CAS conflict reads again and retries. Vault errors pass through;
    running out of attempts raises BackupError. Used by the backup and by
    the setup-token store.
    """
    consistent = False
    for attempt in range(1, attempts + 1):
        current = store.kv_read_raw(mount, path, consistent=consistent)
        stored = dict(current.fields) if current is not None else {}
        version = int(current.version) if current is not None else 0
        fields = updates(stored)
        if fields is not None and not consistent:
            # The version this write's check-and-set names: read it where it is current (the active
            # node), not on a standby that may lag behind another host's write. Only a write needs
            # that: "already holds it" from any node writes nothing, so an unchanged sync costs no
            # sys/leader requests.
            consistent = True
            current = store.kv_read_raw(mount, path, consistent=True)
            stored = dict(current.fields) if current is not None else {}
            version = int(current.version) if current is not None else 0
            fields = updates(stored)
        if fields is None:
            return BackupResult(written=False, version=version, attempts=attempt)
        try:
            new_version = store.kv_write_cas_raw(mount, path, {**stored, **fields}, cas=version)
        except CasConflict:
            if attempt < attempts:
                sleep(_pause(attempt))
            continue
        return BackupResult(written=True, version=new_version, attempts=attempt)
    raise BackupError(f"another writer kept changing {mount}/data/{path} ({attempts} check-and-set conflicts)")


def back_up(store: KvStore, mount: str, path: str, oauth: Mapping[str, Any], backed_up_at: str,
            *, attempts: int = CAS_ATTEMPTS, sleep: Callable[[float], None] = pause,
            not_older: bool = False) -> BackupResult:
    """Make the path hold `oauth`, keeping every other key; write nothing when it already does.

    A stored object that cannot be read (too deep, too large, the wrong
    type) counts as different, so a working login heals the backup. Vault
    errors (reconcile.vault.values.VaultError) pass through; running out of CAS
    attempts raises BackupError. With `not_older` (a backup no probe has
    proven, `sync --backup-only`), a usable stored login whose expiresAt is
    later than `oauth`'s is kept: OlderThanBackup, nothing written.
    """
    def updates(stored: Mapping[str, bytes]) -> Mapping[str, bytes] | None:
        current = decode_stored_oauth(stored)[0]
        if current == oauth:
            return None
        if not_older and oauth_problem(current) is None and int(current["expiresAt"]) > int(oauth["expiresAt"]):
            raise OlderThanBackup("the login is older than the backup (by expiresAt); the backup is kept")
        return backup_fields(oauth, backed_up_at)

    return merge_write(store, mount, path, updates, attempts=attempts, sleep=sleep)


@dataclass(frozen=True)
class LatestBackup:
    version: int
    oauth: Mapping[str, Any] | None
    """The stored object when usable; None otherwise (see `problem`)."""
    problem: str | None = None


def latest_backup(store: KvStore, mount: str, path: str) -> LatestBackup:
    """The latest version's object, validated; never an older version."""
    current = store.kv_read_raw(mount, path)
    if current is None:
        return LatestBackup(version=0, oauth=None, problem=f"no backup at {mount}/data/{path}")
    oauth, problem = decode_stored_oauth(current.fields)
    if problem is not None:
        return LatestBackup(version=current.version, oauth=None,
                            problem=f"{FIELD_OAUTH_JSON} at {mount}/data/{path} {problem}")
    if oauth is None:
        return LatestBackup(version=current.version, oauth=None,
                            problem=f"the latest version of {mount}/data/{path} holds no {FIELD_OAUTH_JSON}")
    problem = oauth_problem(oauth)
    if problem:
        return LatestBackup(version=current.version, oauth=None,
                            problem=f"the backup at {mount}/data/{path} is not usable ({problem})")
    return LatestBackup(version=current.version, oauth=oauth)
