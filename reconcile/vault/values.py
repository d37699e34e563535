"""What the Vault client answers and raises: plain values, no hvac.

The errors (VaultError and its kinds: their text never holds a token), Secret
(a string whose repr never shows it), the token and KV records, and where the
address and the token come from (VAULT_ADDR or the roster, VAULT_TOKEN or
~/.vault-token). Standard library only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping
from urllib.parse import urlsplit


class VaultError(Exception):
    """A Vault request failed; the message is safe to show (no secrets)."""


class VaultUnreachable(VaultError):
    pass


class VaultDenied(VaultError):
    """403: the token is invalid, expired, revoked, or lacks the capability."""


class VaultInvalid(VaultError):
    """400: the request was rejected (for example an unknown accessor)."""


class CasConflict(VaultError):
    """A check-and-set write lost against a concurrent writer."""


class VaultMalformed(VaultError):
    """Vault answered, but the answer cannot be read (too large, too deep, not JSON, wrong shape)."""


class Secret:
    """A secret string whose repr and str never show the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class TokenInfo:
    """The essence of a token's lookup, never its value."""

    accessor: str
    display_name: str
    policies: tuple[str, ...]
    orphan: bool
    period_seconds: int
    ttl_seconds: int
    meta: Mapping[str, str] = field(default_factory=dict)
    creation_time: int = 0
    """Seconds since the epoch."""
    role: str = ""
    """The token role it was created through (a host's role), empty for none."""

    @classmethod
    def from_lookup(cls, data: Mapping[str, Any]) -> "TokenInfo":
        return cls(
            accessor=str(data.get("accessor") or ""),
            display_name=str(data.get("display_name") or ""),
            policies=tuple(sorted(data.get("policies") or ())),
            orphan=bool(data.get("orphan")),
            period_seconds=int(data.get("period") or 0),
            ttl_seconds=int(data.get("ttl") or 0),
            meta=MappingProxyType(dict(data.get("meta") or {})),
            creation_time=int(data.get("creation_time") or 0),
            role=str(data.get("role") or ""),
        )


@dataclass(frozen=True)
class KvSecret:
    version: int
    data: Mapping[str, Any]


@dataclass(frozen=True)
class KvRawSecret:
    version: int
    fields: Mapping[str, bytes]
    """Each key's value as the JSON text Vault sent (empty for a deleted or destroyed version)."""


KV_BODY_LIMIT = 64 * 1024 * 1024
"""Largest KV answer read (Vault's default max_request_size is 32 MiB; its answer escapes some bytes)."""


@dataclass(frozen=True)
class KvMetadata:
    current_version: int
    updated_time: str


@dataclass(frozen=True)
class MintedToken:
    token: Secret
    accessor: str


CLIENT_SETTINGS = ("ADDR", "TOKEN", "CACERT", "CAPATH", "CLIENT_CERT", "CLIENT_KEY", "TLS_SERVER_NAME",
                   "NAMESPACE")
"""The client variables read, each as BAO_<name> or VAULT_<name> (client_setting)."""


def client_setting(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """A client variable as OpenBao's own client reads it (openbao/openbao api/env.go): BAO_<name>
    when it is set at all, even empty (a set BAO_TOKEN hides VAULT_TOKEN), else VAULT_<name>.
    None when the value is empty or neither is set."""
    environ = os.environ if environ is None else environ
    bao = f"BAO_{name}"
    value = environ[bao] if bao in environ else environ.get(f"VAULT_{name}", "")
    return value or None


def setting_name(name: str, environ: Mapping[str, str] | None = None) -> str:
    """Which variable client_setting(name) read, for messages: BAO_<name> or VAULT_<name>."""
    environ = os.environ if environ is None else environ
    return f"BAO_{name}" if f"BAO_{name}" in environ else f"VAULT_{name}"


def resolve_address(configured: str | None) -> str | None:
    """The roster's vault.address, else $BAO_ADDR or $VAULT_ADDR (client_setting); None when none is set.

    Raises VaultError (naming where the address came from) when it is not an
    http:// or https:// URL with a host.
    """
    address = configured or client_setting("ADDR")
    if address is not None:
        check_address(address, source="vault.address in the roster" if configured else setting_name("ADDR"))
    return address


def address_problem(address: str) -> str | None:
    """Why `address` is not a usable Vault URL, or None."""
    expected = "expected an http:// or https:// URL such as https://vault.example.org:8200"
    try:
        parts = urlsplit(address)
        parts.port  # noqa: B018 - the property raises on a bad port
    except ValueError as exc:
        return f"{expected} ({exc})"
    if parts.scheme not in ("http", "https") or any(char.isspace() for char in address):
        return expected
    if not parts.hostname:
        return f"{expected}; it has no host"
    return None


def check_address(address: str, *, source: str = "VAULT_ADDR") -> None:
    problem = address_problem(address)
    if problem is not None:
        raise VaultError(f"{source}={address!r} is not a valid Vault address: {problem}")


def resolve_token(home: Path | None = None) -> Secret | None:
    """$BAO_TOKEN or $VAULT_TOKEN (client_setting), else ~/.vault-token, as the CLI does."""
    value = client_setting("TOKEN")
    if not value:
        token_file = (home or Path.home()) / ".vault-token"
        try:
            value = token_file.read_text().strip()
        except OSError:
            value = ""
    return Secret(value) if value else None
