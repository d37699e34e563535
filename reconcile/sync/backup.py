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
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from reconcile.sync.credentials import oauth_problem
from reconcile.vault import CasConflict

FIELD_OAUTH_JSON = "claude_ai_oauth_json"
FIELD_EXPIRES_AT = "credential_expires_at_ms"
FIELD_BACKED_UP_AT = "backed_up_at"
CAS_ATTEMPTS = 10
"""Reads plus CAS writes before giving up against a busy concurrent writer."""


class BackupError(Exception):
    """The backup could not be written or read; the message is safe to show."""


class KvStore(Protocol):
    """What backup needs from reconcile.vault.Vault (a fake fits it in unit tests)."""

    def kv_read(self, mount: str, path: str, *, consistent: bool = False) -> Any: ...

    def kv_write_cas(self, mount: str, path: str, data: Mapping[str, Any], cas: int) -> int: ...


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


def stored_oauth(data: Mapping[str, Any]) -> Any:
    """The object stored at the path (as parsed JSON), or None when there is none or it is unreadable."""
    value = data.get(FIELD_OAUTH_JSON)
    if isinstance(value, dict):  # tolerate a tool that stored the object itself
        return value
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


def backup_fields(oauth: Mapping[str, Any], backed_up_at: str) -> dict[str, Any]:
    return {
        FIELD_OAUTH_JSON: encode_oauth(oauth),
        FIELD_EXPIRES_AT: int(oauth["expiresAt"]),
        FIELD_BACKED_UP_AT: backed_up_at,
    }


def merged_document(stored: Mapping[str, Any], oauth: Mapping[str, Any], backed_up_at: str) -> dict[str, Any]:
    """Every key already at the path, with the three backup fields set."""
    document = dict(stored)
    document.update(backup_fields(oauth, backed_up_at))
    return document


def _pause(attempt: int) -> float:
    import random

    return random.uniform(0.01, min(0.5, 0.02 * (2 ** attempt)))


def back_up(store: KvStore, mount: str, path: str, oauth: Mapping[str, Any], backed_up_at: str,
            *, attempts: int = CAS_ATTEMPTS, sleep: Callable[[float], None] = time.sleep) -> BackupResult:
    """Make the path hold `oauth`, keeping every other key; write nothing when it already does.

    Vault errors (reconcile.vault.VaultError) pass through; running out of
    CAS attempts raises BackupError.
    """
    for attempt in range(1, attempts + 1):
        # The version this write's check-and-set names: read where it is current (the active node),
        # not on a standby that may lag behind another host's write.
        current = store.kv_read(mount, path, consistent=True)
        stored = dict(current.data) if current is not None else {}
        version = int(current.version) if current is not None else 0
        if stored_oauth(stored) == oauth:
            return BackupResult(written=False, version=version, attempts=attempt)
        try:
            new_version = store.kv_write_cas(mount, path, merged_document(stored, oauth, backed_up_at), cas=version)
        except CasConflict:
            if attempt < attempts:
                sleep(_pause(attempt))
            continue
        return BackupResult(written=True, version=new_version, attempts=attempt)
    raise BackupError(f"another writer kept changing {mount}/data/{path} ({attempts} check-and-set conflicts)")


@dataclass(frozen=True)
class LatestBackup:
    version: int
    oauth: Mapping[str, Any] | None
    """The stored object when usable; None otherwise (see `problem`)."""
    problem: str | None = None


def latest_backup(store: KvStore, mount: str, path: str) -> LatestBackup:
    """The latest version's object, validated; never an older version."""
    current = store.kv_read(mount, path)
    if current is None:
        return LatestBackup(version=0, oauth=None, problem=f"no backup at {mount}/data/{path}")
    data = dict(current.data)
    if FIELD_OAUTH_JSON not in data:
        return LatestBackup(version=current.version, oauth=None,
                            problem=f"the latest version of {mount}/data/{path} holds no {FIELD_OAUTH_JSON}")
    oauth = stored_oauth(data)
    if oauth is None:
        return LatestBackup(version=current.version, oauth=None,
                            problem=f"{FIELD_OAUTH_JSON} at {mount}/data/{path} is not JSON")
    problem = oauth_problem(oauth)
    if problem:
        return LatestBackup(version=current.version, oauth=None,
                            problem=f"the backup at {mount}/data/{path} is not usable ({problem})")
    return LatestBackup(version=current.version, oauth=oauth)
