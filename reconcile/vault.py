"""The one module that talks to Vault (through hvac); nothing else imports hvac.

Every call returns plain typed values or raises a VaultError whose text never
holds a token: hvac's exceptions are translated here, with their chain cut
(`from None`) so no traceback carries request details further.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import hvac
import hvac.adapters
import hvac.exceptions
import hvac.utils
import requests

from reconcile import boundedjson


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


def _read_limited(response: requests.Response, limit: int, what: str) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise VaultError(f"the answer to {what} is larger than {limit // (1024 * 1024)} MiB; not read")
    body = bytearray()
    for chunk in response.iter_content(chunk_size=1024 * 1024):
        body += chunk
        if len(body) > limit:
            raise VaultError(f"the answer to {what} is larger than {limit // (1024 * 1024)} MiB; not read")
    return bytes(body)


def _raw_secret(body: bytes) -> KvRawSecret:
    """The version and the undecoded values of a KV v2 read answer."""
    outer = boundedjson.object_members(body)
    data = boundedjson.object_members(body, outer["data"][0])
    metadata = boundedjson.object_members(body, data["metadata"][0])

    def scalar(name: str) -> Any:
        span = metadata.get(name)
        return boundedjson.loads(body[span[0]:span[1]], max_depth=4) if span else None

    version = int(scalar("version") or 0)
    if scalar("deletion_time") or scalar("destroyed") or "data" not in data:
        return KvRawSecret(version=version, fields=MappingProxyType({}))
    d_start, d_end = data["data"]
    if body[d_start:d_end] == b"null":
        return KvRawSecret(version=version, fields=MappingProxyType({}))
    fields = {key: body[a:b] for key, (a, b) in boundedjson.object_members(body, d_start).items()}
    return KvRawSecret(version=version, fields=MappingProxyType(fields))


@dataclass(frozen=True)
class KvMetadata:
    current_version: int
    updated_time: str


@dataclass(frozen=True)
class MintedToken:
    token: Secret
    accessor: str


def resolve_address(configured: str | None) -> str | None:
    """The roster's vault.address, else $VAULT_ADDR; None when neither is set.

    Raises VaultError (naming where the address came from) when it is not an
    http:// or https:// URL with a host.
    """
    address = configured or os.environ.get("VAULT_ADDR") or None
    if address is not None:
        check_address(address, source="vault.address in the roster" if configured else "VAULT_ADDR")
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
    """$VAULT_TOKEN, else ~/.vault-token, as the Vault CLI does."""
    value = os.environ.get("VAULT_TOKEN")
    if not value:
        token_file = (home or Path.home()) / ".vault-token"
        try:
            value = token_file.read_text().strip()
        except OSError:
            value = ""
    return Secret(value) if value else None


def _translate(exc: Exception, what: str, address: str) -> VaultError:
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return VaultUnreachable(f"Vault at VAULT_ADDR={address} is unreachable ({what})")
    if isinstance(exc, hvac.exceptions.Forbidden):
        return VaultDenied(f"permission denied ({what}); the token is invalid, expired or lacks the capability")
    if isinstance(exc, hvac.exceptions.InvalidRequest):
        text = str(exc)
        if "check-and-set" in text:
            return CasConflict(f"check-and-set conflict ({what})")
        return VaultInvalid(f"request rejected ({what})")
    if isinstance(exc, hvac.exceptions.VaultDown):
        return VaultUnreachable(f"Vault at VAULT_ADDR={address} is sealed or down ({what})")
    if isinstance(exc, hvac.exceptions.VaultError):
        return VaultError(f"Vault error ({what}): {type(exc).__name__}")
    return VaultError(f"Vault request failed ({what}): {type(exc).__name__}")


_READ_ONLY_POSTS = ("/v1/auth/token/lookup", "/v1/auth/token/lookup-accessor", "/v1/sys/capabilities-self")
"""POST endpoints that change nothing: token lookups carry the token in the body, never in a URL."""
_READ_METHODS = ("GET", "LIST", "HEAD", "POST-READ")


def _count_key(method: str, url: str) -> str:
    method = method.upper()
    if method == "POST" and url.split("?", 1)[0].rstrip("/").endswith(_READ_ONLY_POSTS):
        return "POST-READ"
    return method


def _is_not_found(exc: Exception) -> bool:
    return isinstance(exc, hvac.exceptions.InvalidPath)


def _is_bad_token(exc: Exception) -> bool:
    """Expired, revoked or unknown: the admin lookup answers 403 "bad token"."""
    return isinstance(exc, hvac.exceptions.Forbidden) and "bad token" in str(exc)


def _is_invalid_accessor(exc: Exception) -> bool:
    return isinstance(exc, hvac.exceptions.InvalidRequest) and "invalid accessor" in str(exc)


class Vault:
    """One hvac client for one token, with a count of the requests it made."""

    def __init__(self, address: str, token: Secret | None, *, cacert: str | None = None,
                 timeout: float = 10.0) -> None:
        """Raises VaultError naming VAULT_ADDR when `address` is not a usable URL."""
        check_address(address)
        self.address = address
        cacert = cacert or os.environ.get("VAULT_CACERT") or None
        # requests reads the proxy and CA-bundle variables (and ~/.netrc) on every
        # request, about a fifth of a loopback lookup; read them once here instead.
        session = requests.Session()
        try:
            settings = session.merge_environment_settings(address, {}, None, cacert if cacert else True, None)
            session.proxies.update(settings["proxies"] or {})
            session.trust_env = False
            self._client = hvac.Client(url=address, token=token.reveal() if token else None,
                                       verify=settings["verify"], timeout=timeout, session=session)
        except ValueError as exc:  # a URL requests or hvac cannot parse; the text names no token
            raise VaultError(f"VAULT_ADDR={address!r} is not a valid Vault address ({exc})") from None
        self.requests: Counter[str] = Counter()
        """Requests made, by HTTP method (LIST counted as LIST; read-only POSTs such as token lookups as POST-READ)."""
        adapter = self._client.adapter
        original = adapter.request

        def counted(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            self.requests[_count_key(method, url)] += 1
            return original(method, url, *args, **kwargs)

        adapter.request = counted

    @property
    def writes(self) -> int:
        return sum(n for method, n in self.requests.items() if method not in _READ_METHODS)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
            raise _translate(exc, what, self.address) from None

    def _call_or_none(self, what: str, gone: Callable[[Exception], bool], fn: Any, *args: Any,
                      **kwargs: Any) -> Any:
        """As _call, but None when the failure only says the thing is not there (`gone`)."""
        try:
            return fn(*args, **kwargs)
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
            if gone(exc):
                return None
            raise _translate(exc, what, self.address) from None

    def with_token(self, token: Secret) -> "Vault":
        """A client for another token at the same address (shares nothing secret)."""
        other = Vault(self.address, token)
        other.requests = self.requests  # one count for the whole run
        return other

    # --- any token: itself ---------------------------------------------------

    def lookup_self(self) -> TokenInfo:
        data = self._call("token lookup-self", self._client.auth.token.lookup_self)
        return TokenInfo.from_lookup(data["data"])

    def renew_self(self) -> TokenInfo:
        data = self._call("token renew-self", self._client.auth.token.renew_self)
        auth = data.get("auth") or {}
        # renew-self answers with an auth block; reshape to lookup fields we need.
        return TokenInfo(
            accessor=str(auth.get("accessor") or ""), display_name="",
            policies=tuple(sorted(auth.get("token_policies") or auth.get("policies") or ())),
            orphan=bool(auth.get("orphan")), period_seconds=0,
            ttl_seconds=int(auth.get("lease_duration") or 0), meta=MappingProxyType(dict(auth.get("metadata") or {})),
        )

    # --- KV v2 -----------------------------------------------------------------

    def kv_read(self, mount: str, path: str) -> KvSecret | None:
        """The latest version of a KV v2 secret, or None when the path has none.

        A deleted or destroyed latest version N reads as KvSecret(N, {}): its
        data is gone, but a check-and-set write must still name N. The data
        read answers 404 (InvalidPath) for a destroyed version, as for a path
        that never existed; only then is the metadata read (one more request)
        to tell the two apart.
        """
        data = self._call_or_none(f"read {mount}/data/{path}", _is_not_found,
                                  self._client.secrets.kv.v2.read_secret_version,
                                  path=path, mount_point=mount, raise_on_deleted_version=False)
        if data is None:
            try:
                versions = self.kv_metadata(mount, path)
            except VaultDenied:  # a policy without metadata read: the path counts as new, as before
                return None
            if versions is None or versions.current_version <= 0:
                return None
            return KvSecret(version=versions.current_version, data=MappingProxyType({}))
        inner = data.get("data") or {}
        metadata = inner.get("metadata") or {}
        if metadata.get("deletion_time") or metadata.get("destroyed"):
            return KvSecret(version=int(metadata.get("version") or 0), data=MappingProxyType({}))
        return KvSecret(version=int(metadata.get("version") or 0),
                        data=MappingProxyType(dict(inner.get("data") or {})))

    def kv_write_cas(self, mount: str, path: str, data: Mapping[str, Any], cas: int) -> int:
        """Write the whole map only if the current version is `cas` (0: path is new). Returns the new version."""
        result = self._call(f"write {mount}/data/{path}", self._client.secrets.kv.v2.create_or_update_secret,
                            path=path, secret=dict(data), cas=cas, mount_point=mount)
        return int((result.get("data") or {}).get("version") or 0)

    def kv_metadata(self, mount: str, path: str) -> KvMetadata | None:
        data = self._call_or_none(f"read {mount}/metadata/{path}", _is_not_found,
                                  self._client.secrets.kv.v2.read_secret_metadata, path=path, mount_point=mount)
        if data is None:
            return None
        inner = data.get("data") or {}
        return KvMetadata(current_version=int(inner.get("current_version") or 0),
                          updated_time=str(inner.get("updated_time") or ""))

    # --- KV v2, undecoded (for data other people control) -----------------------
    # hvac decodes every answer with the stdlib json, which raises RecursionError on a
    # value nested a few thousand levels deep and holds a huge answer several times
    # over. These two read and write the map's values as JSON text instead; see
    # reconcile.boundedjson. Both go through _call like every other request.

    def kv_read_raw(self, mount: str, path: str, limit: int = KV_BODY_LIMIT) -> KvRawSecret | None:
        """As kv_read, but each value is its JSON text as Vault sent it (decoded by the caller).

        The answer is streamed and refused (VaultError) past `limit` bytes;
        its structure is read without recursion. One request, or two (the
        metadata) for a destroyed latest version, as kv_read.
        """
        what = f"read {mount}/data/{path}"
        url = hvac.utils.format_url("/v1/{mount}/data/{path}", mount=mount, path=path)

        def fetch() -> KvRawSecret | bytes | None:
            self.requests["GET"] += 1
            try:
                # RawAdapter's request, not the client's: hvac's JSON adapter would decode the answer.
                response = hvac.adapters.RawAdapter.request(self._client.adapter, "GET", url, stream=True)
            except hvac.exceptions.InvalidPath as exc:  # 404: no data; a deleted version still names itself
                answer = exc.json if isinstance(exc.json, dict) else {}
                metadata = (answer.get("data") or {}).get("metadata")
                if isinstance(metadata, dict) and metadata.get("deletion_time"):
                    return KvRawSecret(version=int(metadata.get("version") or 0), fields=MappingProxyType({}))
                return None
            with response:
                return _read_limited(response, limit, what)

        body = self._call(what, fetch)
        if isinstance(body, KvRawSecret):
            return body
        if body is None:
            try:
                versions = self.kv_metadata(mount, path)
            except VaultDenied:  # a policy without metadata read: the path counts as new, as in kv_read
                return None
            if versions is None or versions.current_version <= 0:
                return None
            return KvRawSecret(version=versions.current_version, fields=MappingProxyType({}))
        try:
            return _raw_secret(body)
        except (boundedjson.JsonProblem, ValueError, TypeError, KeyError):
            raise VaultError(f"unexpected answer to {what} (not a KV v2 secret)") from None

    def kv_write_cas_raw(self, mount: str, path: str, fields: Mapping[str, bytes], cas: int) -> int:
        """kv_write_cas with each value given as JSON text (written as is). Returns the new version."""
        members = b",".join(json.dumps(key).encode() + b":" + value for key, value in fields.items())
        body = b'{"options":{"cas":%d},"data":{%s}}' % (int(cas), members)
        url = hvac.utils.format_url("/v1/{mount}/data/{path}", mount=mount, path=path)
        result = self._call(f"write {mount}/data/{path}", self._client.adapter.post, url, data=body,
                            headers={"Content-Type": "application/json"})
        return int(((result or {}).get("data") or {}).get("version") or 0)

    # --- admin: policies and tokens (needs an admin token unless noted) --------
    # Added for `plan`/`apply` (reconcile.vault_state). Read-only POSTs (token
    # lookups, capabilities-self) are counted as reads: see _READ_ONLY_POSTS.

    def capabilities_self(self, paths: list[str]) -> dict[str, tuple[str, ...]]:
        """This token's capabilities on each path (one request; any valid token)."""
        data = self._call("capabilities-self", self._client.adapter.post, "/v1/sys/capabilities-self",
                          json={"paths": list(paths)})
        inner = data.get("data") or data
        return {path: tuple(inner.get(path) or ()) for path in paths}

    def is_reachable(self) -> None:
        """Raise VaultUnreachable unless /sys/health answers (no token needed)."""
        self._call("health check", self._client.sys.read_health_status, method="GET")

    def list_policies_detailed(self) -> dict[str, str] | None:
        """Every ACL policy name and text in one request (OpenBao); None where unsupported (HashiCorp Vault)."""
        try:
            data = self._client.adapter.list("/v1/sys/policies/detailed/acl")
        except (hvac.exceptions.InvalidPath, hvac.exceptions.UnsupportedOperation):
            return None
        except hvac.exceptions.InvalidRequest as exc:
            if "unsupported" in str(exc):
                return None
            raise _translate(exc, "list sys/policies/detailed/acl", self.address) from None
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
            raise _translate(exc, "list sys/policies/detailed/acl", self.address) from None
        key_info = ((data or {}).get("data") or {}).get("key_info") or {}
        return {str(name): str((info or {}).get("policy") or "") for name, info in key_info.items()}

    def list_policy_names(self) -> list[str]:
        data = self._call("list sys/policies/acl", self._client.adapter.list, "/v1/sys/policies/acl")
        return [str(name) for name in ((data or {}).get("data") or {}).get("keys") or ()]

    def read_policy(self, name: str) -> str | None:
        """The policy text, or None when there is no such policy."""
        data = self._call_or_none(f"read policy {name}", _is_not_found, self._client.sys.read_acl_policy, name)
        if data is None:
            return None
        return str(((data or {}).get("data") or {}).get("policy") or "")

    def write_policy(self, name: str, text: str) -> None:
        self._call(f"write policy {name}", self._client.sys.create_or_update_acl_policy, name=name, policy=text)

    def delete_policy(self, name: str) -> None:
        """Idempotent: deleting a missing policy succeeds."""
        self._call(f"delete policy {name}", self._client.sys.delete_acl_policy, name=name)

    def lookup_token(self, token: Secret) -> TokenInfo | None:
        """Look another token up (admin API, token in the POST body); None when it is expired, revoked or unknown."""
        data = self._call_or_none("token lookup", _is_bad_token, self._client.auth.token.lookup, token.reveal())
        if data is None:
            return None
        return TokenInfo.from_lookup(data["data"])

    def lookup_token_self(self, token: Secret) -> TokenInfo | None:
        """`lookup-self` with another token (needs no admin); None when Vault refuses it.

        A refusal means expired, revoked, unknown, or a policy without lookup-self.
        With a client that has no token of its own the request reuses this
        client's connection; otherwise it goes through `with_token`.
        """
        try:
            if self._client.adapter.token:
                return self.with_token(token).lookup_self()
            data = self._client.adapter.get("/v1/auth/token/lookup-self",
                                            headers={"X-Vault-Token": token.reveal()})
        except VaultDenied:
            return None
        except hvac.exceptions.Forbidden:
            return None
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
            raise _translate(exc, "token lookup-self", self.address) from None
        return TokenInfo.from_lookup(data["data"])

    def lookup_accessor(self, accessor: str) -> TokenInfo | None:
        """The token behind an accessor; None when it no longer exists."""
        data = self._call_or_none("token lookup-accessor", _is_invalid_accessor,
                                  self._client.auth.token.lookup_accessor, accessor)
        if data is None:
            return None
        return TokenInfo.from_lookup(data["data"])

    def create_orphan_token(self, *, policies: list[str], period: str, display_name: str,
                            meta: Mapping[str, str]) -> MintedToken:
        """Mint an orphan, periodic token with exactly `policies` (no default policy)."""
        data = self._call("token create-orphan", self._client.auth.token.create_orphan,
                          policies=list(policies), period=period, no_default_policy=True,
                          display_name=display_name, meta=dict(meta), renewable=True)
        auth = data.get("auth") or {}
        return MintedToken(token=Secret(str(auth["client_token"])), accessor=str(auth["accessor"]))

    def revoke_accessor(self, accessor: str) -> None:
        """Revoke the token behind an accessor; an accessor that no longer exists is not an error."""
        try:
            self._client.auth.token.revoke_accessor(accessor)
        except hvac.exceptions.InvalidRequest as exc:
            if "invalid accessor" in str(exc):
                return
            raise _translate(exc, "token revoke-accessor", self.address) from None
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
            raise _translate(exc, "token revoke-accessor", self.address) from None
