"""The one module that talks to Vault (through hvac); nothing else imports hvac.

Every call returns plain typed values or raises a VaultError whose text never
holds a token: hvac's exceptions are translated here, with their chain cut
(`from None`) so no traceback carries request details further.

Every request goes through `Vault._call`, which applies the one retry policy
(reconcile.retry): transient failures are retried with backoff, each attempt
has a short timeout, and all requests of a run share one deadline. Once
retries run out the client (and every client made from it by `with_token`)
counts Vault as unreachable and sends nothing more: each later call raises
VaultUnreachable at once, so a run stops early instead of waiting on each
remaining change. Redirects are never followed: a standby's 307 may name a
leader that is gone, so it counts as transient and the same node is asked
again.

Answers are read defensively (`_BoundedAdapter`): at most MAX_ANSWER_BYTES,
nested at most MAX_ANSWER_DEPTH deep, and any answer that cannot be read or
has an unexpected shape is a VaultMalformed error, never a traceback. A
person controls the data at their own KV path; it must not break anyone
else's run.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

import hvac
import hvac.adapters
import hvac.exceptions
import hvac.utils
import requests
import urllib3.exceptions

from reconcile.retry import Deadline, GaveUp, RetryPolicy, Transience, call_with_retries

from reconcile import vault_pipeline
from reconcile.common import boundedjson


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


MAX_ANSWER_BYTES = 16 * 1024 * 1024
"""Above Vault's own 32 MiB request cap would be reachable only by a misbehaving server; real answers
(even every policy of thousands of users in one list) stay far below."""
MAX_ANSWER_DEPTH = 64
"""Vault's own envelopes nest 3 deep; what a person stores at their path gets the rest."""


class _Redirected(Exception):
    """A 3xx answer: a standby naming the leader. Never followed (the leader may be the node that died)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"redirected ({status})")
        self.status = status


class _Unreadable(Exception):
    """The answer cannot be read safely; the text says why and holds nothing from the answer."""


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def nesting_depth(raw: bytes) -> int:
    """How deep the JSON document `raw` nests arrays and objects (brackets inside strings ignored)."""
    steps = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS).translate(_BRACKET_STEPS)
    return max(accumulate(memoryview(steps).cast("b")), default=0)


def decode_answer(raw: bytes) -> Any:
    """Vault's JSON answer, bounded in size and depth; raises _Unreadable otherwise."""
    if len(raw) > MAX_ANSWER_BYTES:
        raise _Unreadable(f"it is larger than {MAX_ANSWER_BYTES // (1024 * 1024)} MiB")
    # Fewer brackets than the cap cannot nest deeper than it: most answers skip the scan.
    if raw.count(b"[") + raw.count(b"{") > MAX_ANSWER_DEPTH and nesting_depth(raw) > MAX_ANSWER_DEPTH:
        raise _Unreadable(f"it nests deeper than {MAX_ANSWER_DEPTH} levels")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise _Unreadable("it is not valid JSON") from None


class _BoundedAdapter(hvac.adapters.RawAdapter):  # type: ignore[misc]  # hvac has no type hints
    """hvac's JSON adapter, reading answers defensively and never following a redirect.

    As hvac's JSONAdapter: a 200 answer comes back decoded, any other success
    as the response, an error status as hvac's exception. `attempt_timeout` is
    set by Vault._call before each attempt; `on_request` counts requests.
    """

    attempt_timeout: float | None = None
    on_request: Callable[[str, str], None] | None = None

    def get_login_token(self, response: Any) -> Any:
        return response["auth"]["client_token"]

    def request(self, method: str, url: str, headers: Any = None, raise_exception: bool = True,
                **kwargs: Any) -> Any:
        if self.on_request is not None:
            self.on_request(method, url)
        if self.attempt_timeout is not None:
            kwargs["timeout"] = self.attempt_timeout
        kwargs["stream"] = True  # read below, up to the cap
        response = super().request(method, url, headers=headers, raise_exception=False, **kwargs)
        try:
            _read_bounded(response)
        finally:
            response.close()
        if 300 <= response.status_code < 400:
            raise _Redirected(response.status_code)
        if not response.ok:
            if raise_exception:
                self._raise_for_error(method, url, response)
            return response
        if response.status_code == 200:
            return decode_answer(response.content)
        return response


def _read_bounded(response: requests.Response) -> None:
    """Read the body into the response (as requests would without `stream`), refusing more than the cap."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise _Unreadable(f"it is larger than {MAX_ANSWER_BYTES // (1024 * 1024)} MiB")
        chunks.append(chunk)
    response._content = b"".join(chunks)  # what requests' own `.content` does, bounded


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


def _translate(exc: BaseException, what: str, address: str) -> VaultError:
    if isinstance(exc, _Unreadable):
        return VaultMalformed(f"Vault's answer cannot be read: {exc} ({what})")
    if isinstance(exc, _Redirected):
        return VaultUnreachable(f"Vault at VAULT_ADDR={address} redirected to another node ({what}); "
                                "its leader is not answering")
    if isinstance(exc, requests.exceptions.Timeout):
        return VaultUnreachable(f"Vault at VAULT_ADDR={address} did not answer in time ({what})")
    if isinstance(exc, requests.exceptions.ConnectionError):
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
    if isinstance(exc, hvac.exceptions.RateLimitExceeded):
        return VaultUnreachable(f"Vault at VAULT_ADDR={address} kept answering 429 too many requests ({what})")
    if isinstance(exc, hvac.exceptions.VaultError):
        return VaultError(f"Vault error ({what}): {type(exc).__name__}")
    return VaultError(f"Vault request failed ({what}): {type(exc).__name__}")


_STANDBY_500 = ("active cluster node not found", "local node not active", "node not active", "sealed",
                "leader")
"""Texts of a 500 from a standby that has no leader to forward to (an election): transient."""


def classify(exc: BaseException) -> Transience:
    """The one place that decides what a failed Vault request means for a retry (reconcile.retry)."""
    if isinstance(exc, _Redirected):
        return Transience.NOT_DONE  # a standby points at a leader; it did not act
    if isinstance(exc, requests.exceptions.ConnectTimeout) or _never_connected(exc):
        return Transience.NOT_DONE
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                        requests.exceptions.ChunkedEncodingError)):
        return Transience.MAYBE_DONE  # sent, then no (whole) answer
    if isinstance(exc, (hvac.exceptions.RateLimitExceeded, hvac.exceptions.VaultDown,
                        hvac.exceptions.BadGateway)):
        return Transience.NOT_DONE
    if isinstance(exc, hvac.exceptions.InternalServerError):
        # Vault's own error texts only: str(exc) ends with the URL, which names people and paths
        # (a person called `leader` must not make every 500 on their path look like an election).
        text = " ".join(str(error) for error in (exc.errors or [exc.message])).lower()
        if any(marker in text for marker in _STANDBY_500):
            return Transience.NOT_DONE
    return Transience.PERMANENT


def _never_connected(exc: BaseException) -> bool:
    """A connection error from before the request was sent (refused, no route): nothing reached Vault."""
    if not isinstance(exc, requests.exceptions.ConnectionError) or not exc.args:
        return False
    reason = getattr(exc.args[0], "reason", None)
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def _ask_leader(client: hvac.Client) -> dict[str, Any] | None:
    """`sys/leader` (no token needed): None when the node runs without HA; raises VaultDown (transient)
    while it knows no active node."""
    data = client.adapter.get("/v1/sys/leader")
    if not isinstance(data, dict) or not data.get("ha_enabled"):
        return None
    if not data.get("leader_address"):
        raise hvac.exceptions.VaultDown("no active node (election)")
    return data


@contextmanager
def _reading(what: str) -> Iterator[None]:
    """Shaping an answer into typed values: a field of the wrong type is a VaultMalformed error."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        raise VaultMalformed(f"Vault's answer ({what}) has an unexpected shape") from None


@dataclass
class _Link:
    """What every client of one run shares: the policy, the deadline, the count, whether Vault is down."""

    policy: RetryPolicy
    deadline: Deadline
    requests: Counter[str]
    down: str | None = None
    """Why Vault counts as unreachable for the rest of the run; None while it answers."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Guards `requests`: pooled clients (`twin`) count from several threads."""


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
    """Expired, revoked or unknown: the admin lookup answers 403 "bad token". Text that is no token
    at all (`b.!!!!`, whatever a person wrote into their file): 400 (OpenBao: "illegal base64 data")."""
    return ((isinstance(exc, hvac.exceptions.Forbidden) and "bad token" in str(exc))
            or isinstance(exc, hvac.exceptions.InvalidRequest))


def _is_forbidden(exc: Exception) -> bool:
    return isinstance(exc, hvac.exceptions.Forbidden)


def _is_unsupported(exc: Exception) -> bool:
    """HashiCorp Vault has no detailed policy list: 404, or 400 "unsupported path"."""
    return (isinstance(exc, (hvac.exceptions.InvalidPath, hvac.exceptions.UnsupportedOperation))
            or (isinstance(exc, hvac.exceptions.InvalidRequest) and "unsupported" in str(exc)))


def _is_invalid_accessor(exc: Exception) -> bool:
    """The accessor names no token. A standby may also say "invalid request" for one it has not yet
    replicated: lookups ask the active node again (Vault._on_active) before believing it."""
    text = str(exc)
    return isinstance(exc, hvac.exceptions.InvalidRequest) and ("invalid accessor" in text
                                                               or "invalid request" in text)


def _is_refused(exc: Exception) -> bool:
    """Any 400 or 403 to a token lookup. A standby that has not yet replicated a token answers one of
    "invalid accessor", "invalid request" or "permission denied" (OpenBao 2.7.2, seen here), so such an
    answer is only a reason to ask the active node, whose answer is then taken as it is."""
    return isinstance(exc, (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden))


def _is_revoked_already(exc: Exception) -> bool:
    """A revoke that lost a race with another revoke of the same accessor: 400 "token not found"
    (OpenBao 2.7.2, seen with two hosts revoking at once), or the accessor is already gone."""
    return _is_invalid_accessor(exc) or (isinstance(exc, hvac.exceptions.InvalidRequest)
                                         and "token not found" in str(exc))


def _quick_answer(answer: vault_pipeline.Answer | None) -> Any:
    """A pipelined 200 answer decoded as _BoundedAdapter would, or None (ask again the ordinary way)."""
    if answer is None or answer.status != 200:
        return None
    try:
        return decode_answer(answer.body)
    except _Unreadable:
        return None


def _quick_token_info(answer: vault_pipeline.Answer | None) -> TokenInfo | None:
    data = _quick_answer(answer)
    try:
        return TokenInfo.from_lookup(data["data"]) if data is not None else None
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        return None  # the ordinary lookup reads it again and says what is wrong (VaultMalformed)


def _kv_secret(data: Any) -> KvSecret:
    """A KV v2 data read's answer; raises KeyError, TypeError, ValueError or AttributeError on a bad shape."""
    inner = data.get("data") or {}
    metadata = inner.get("metadata") or {}
    version = int(metadata.get("version") or 0)
    if metadata.get("deletion_time") or metadata.get("destroyed"):
        return KvSecret(version=version, data=MappingProxyType({}))
    return KvSecret(version=version, data=MappingProxyType(dict(inner.get("data") or {})))


def _kv_metadata(data: Any) -> KvMetadata:
    """A KV v2 metadata read's answer; raises TypeError, ValueError or AttributeError on a bad shape."""
    inner = data.get("data") or {}
    return KvMetadata(current_version=int(inner.get("current_version") or 0),
                      updated_time=str(inner.get("updated_time") or ""))


def _quick_kv_secret(answer: vault_pipeline.Answer | None) -> KvSecret | None:
    data = _quick_answer(answer)
    try:
        return _kv_secret(data) if data is not None else None
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        return None


def _is_plain_not_found(answer: vault_pipeline.Answer) -> bool:
    """A 404 that names no deleted version (`{"errors":[]}`): nothing at the path, or destroyed."""
    try:
        data = decode_answer(answer.body)
    except _Unreadable:
        return False
    return isinstance(data, dict) and "data" not in data


def _quick_policy_text(answer: vault_pipeline.Answer | None) -> str | None:
    data = _quick_answer(answer)
    try:
        return str(data["data"]["policy"]) if data is not None else None
    except (KeyError, TypeError):
        return None


class Vault:
    """One hvac client for one token, with a count of the requests it made."""

    def __init__(self, address: str, token: Secret | None, *, cacert: str | None = None,
                 policy: RetryPolicy | None = None, _link: _Link | None = None) -> None:
        """Raises VaultError naming VAULT_ADDR when `address` is not a usable URL.

        `policy` defaults to RetryPolicy.from_env(); its deadline starts now.
        """
        check_address(address)
        self.address = address
        cacert = cacert or os.environ.get("VAULT_CACERT") or None
        self._cacert = cacert
        if _link is None:
            policy = policy or RetryPolicy.from_env()
            _link = _Link(policy=policy, deadline=Deadline(policy.deadline), requests=Counter())
        self._link = _link
        # requests reads the proxy and CA-bundle variables (and ~/.netrc) on every
        # request, about a fifth of a loopback lookup; read them once here instead.
        session = requests.Session()
        try:
            settings = session.merge_environment_settings(address, {}, None, cacert if cacert else True, None)
            session.proxies.update(settings["proxies"] or {})
            session.trust_env = False
            # hvac takes a given session's `verify` over its own argument: without this the CA of
            # VAULT_CACERT was never used (requests' default bundle was), found by the TLS test.
            session.verify = settings["verify"]
            self._verify: bool | str | None = settings["verify"]
            self._proxied = bool(settings["proxies"])
            self._client = hvac.Client(url=address, token=token.reveal() if token else None,
                                       verify=settings["verify"], timeout=_link.policy.request_timeout,
                                       session=session, allow_redirects=False, adapter=_BoundedAdapter)
        except ValueError as exc:  # a URL requests or hvac cannot parse; the text names no token
            raise VaultError(f"VAULT_ADDR={address!r} is not a valid Vault address ({exc})") from None
        if token is None:
            # hvac falls back to $VAULT_TOKEN or ~/.vault-token when given no token; a client meant
            # to be tokenless (the hourly run, a health check) must not quietly carry root's.
            self._client.token = None
        self._adapter: _BoundedAdapter = self._client.adapter
        counter, lock = _link.requests, _link.lock

        def count(method: str, url: str) -> None:
            with lock:
                counter[_count_key(method, url)] += 1

        self._adapter.on_request = count
        self._active: dict[str, Vault] = {}
        """Clients at the active node's address, for reads that must be answered there (_on_active)."""
        self._ssl_context: ssl.SSLContext | None = None

    @property
    def requests(self) -> Counter[str]:
        """Requests sent, by HTTP method (LIST counted as LIST; read-only POSTs such as token lookups
        as POST-READ); retries count each time. Shared by every client of the run."""
        return self._link.requests

    @property
    def writes(self) -> int:
        return sum(n for method, n in self.requests.items() if method not in _READ_METHODS)

    @property
    def unreachable(self) -> str | None:
        """Why Vault counts as unreachable for the rest of this run (no request is sent any more), or None."""
        return self._link.down

    def _call(self, what: str, fn: Any, *args: Any, _gone: Callable[[Exception], bool] | None = None,
              _idempotent: bool = True, **kwargs: Any) -> Any:
        """The one path of every request: the retry policy, then hvac's errors translated.

        `_gone`: a failure that only says the thing is not there answers None.
        `_idempotent=False`: a request that may have been carried out is not sent again.
        """
        link = self._link
        if link.down is not None:
            raise VaultUnreachable(f"not attempted ({what}): {link.down}")

        def attempt(timeout: float) -> Any:
            self._adapter.attempt_timeout = timeout
            return fn(*args, **kwargs)

        try:
            return call_with_retries(attempt, classify, policy=link.policy, deadline=link.deadline,
                                     idempotent=_idempotent)
        except GaveUp as exc:
            reason = _translate(exc.last, what, self.address) if exc.last is not None else None
            text = f"{reason} ({exc.why})" if reason is not None else (
                f"Vault at VAULT_ADDR={self.address}: {exc.why} ({what})")
            link.down = text
            raise VaultUnreachable(text) from None
        except Exception as exc:
            if _gone is not None and _gone(exc):
                return None
            if not _idempotent and classify(exc) is Transience.MAYBE_DONE:
                # Not sent again (reconcile.retry); but whether Vault is gone or only this answer was
                # lost decides whether the rest of the run should still try: ask it (retried as ever).
                self._check_alive()
            if isinstance(exc, (hvac.exceptions.VaultError, requests.exceptions.RequestException,
                                _Redirected, _Unreadable)):
                raise _translate(exc, what, self.address) from None
            raise

    def _check_alive(self) -> None:
        """After an answer lost on a request that is not retried: a health check under the retry policy,
        which marks Vault unreachable for the rest of the run when its retries run out."""
        try:
            self.is_reachable()
        except VaultError:
            pass  # marked down (or answered an error, which means it is there)

    def _call_or_none(self, what: str, gone: Callable[[Exception], bool], fn: Any, *args: Any,
                      **kwargs: Any) -> Any:
        """As _call, but None when the failure only says the thing is not there (`gone`)."""
        return self._call(what, fn, *args, _gone=gone, **kwargs)

    def with_token(self, token: Secret) -> "Vault":
        """A client for another token at the same address (shares nothing secret; shares the count,
        the deadline and whether Vault is down)."""
        return Vault(self.address, token, _link=self._link)

    def twin(self) -> "Vault":
        """Another client for this client's token, with a connection of its own, sharing the count,
        the deadline and whether Vault is down: one per worker of a pool (reconcile.vault_pool)."""
        token = self._client.token
        return Vault(self.address, Secret(token) if token else None, cacert=self._cacert, _link=self._link)

    # --- many independent requests at once (reconcile.vault_pipeline) ------------------

    def _pipelined(self, requests: list[vault_pipeline.Request], count_as: str) -> list[vault_pipeline.Answer | None]:
        """Requests that may be sent again, pipelined on a few connections; None for each one not
        answered whole, which the caller sends again through `_call` (the retry policy's path).

        Nothing is sent once Vault counts as unreachable, nor through an HTTP proxy (the fast path
        speaks to Vault directly). The time spent counts against the run's deadline.
        """
        link = self._link
        https = urlsplit(self.address).scheme == "https"
        context = self._pipeline_ssl() if https else None
        if not requests or link.down is not None or self._proxied or (https and context is None):
            return [None] * len(requests)
        with link.deadline.running():
            left = link.deadline.remaining()
            if left <= 0:
                return [None] * len(requests)
            result = vault_pipeline.exchange(self.address, requests, connections=vault_pipeline.connections(),
                                             timeout=link.policy.request_timeout, until=time.monotonic() + left,
                                             max_body=MAX_ANSWER_BYTES, ssl_context=context)
        with link.lock:
            link.requests[count_as] += result.sent_count
        return result.answers

    def _pipeline_ssl(self) -> ssl.SSLContext | None:
        """The TLS settings requests uses for this client (its CA bundle or folder); None if unusable."""
        if self._ssl_context is None:
            where = self._verify if isinstance(self._verify, str) else (
                requests.utils.DEFAULT_CA_BUNDLE_PATH if self._verify else None)
            if where is None:
                return None
            try:
                if os.path.isdir(where):
                    context = ssl.create_default_context(capath=where)
                else:
                    context = ssl.create_default_context(cafile=where)
                context.set_alpn_protocols(["http/1.1"])
            except (OSError, ValueError, ssl.SSLError):
                return None
            self._ssl_context = context
        return self._ssl_context

    def _headers(self, token: str | None, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        base = (("X-Vault-Request", "true"),) + ((("X-Vault-Token", token),) if token else ())
        return base + extra

    def lookup_tokens_pipelined(self, tokens: Sequence[Secret], *, own: bool) -> list[TokenInfo | None]:
        """Each token looked up through the admin API (`own`: each token's own lookup-self), pipelined.

        Its TokenInfo where Vault answered 200 with a readable answer (taken as
        lookup_token takes it, from whichever node answered); None where it did
        not: look that one up the ordinary way (lookup_token or
        lookup_token_self), which treats refusals, redirects, outages and
        malformed answers as it always has.
        """
        if own:
            wanted = [vault_pipeline.Request("GET", "/v1/auth/token/lookup-self",
                                             self._headers(token.reveal())) for token in tokens]
            count_as = "GET"
        else:
            admin = self._client.token
            if not admin:
                return [None] * len(tokens)
            headers = self._headers(admin, ("Content-Type", "application/json"))
            wanted = [vault_pipeline.Request("POST", "/v1/auth/token/lookup", headers,
                                             json.dumps({"token": token.reveal()}).encode())
                      for token in tokens]
            count_as = "POST-READ"
        return [_quick_token_info(answer) for answer in self._pipelined(wanted, count_as)]

    def kv_read_pipelined(self, mount: str, reads: Sequence[tuple[str, Secret | None]]) -> dict[int, KvSecret | None]:
        """kv_read of each (path, token), pipelined, each with its token (None: this client's own).

        By index into `reads`, what kv_read would answer (None: nothing at the path), for each read
        Vault answered plainly: a 200, or a 404 that the path's metadata (read pipelined in turn)
        explains as kv_read would explain it. An index left out was not answered so (refused,
        deleted, unreadable, not sent): read that one the ordinary way.
        """
        def request(kind: str, path: str, token: Secret | None) -> vault_pipeline.Request:
            url = hvac.utils.format_url("/v1/{mount}/" + kind + "/{path}", mount=mount, path=path)
            return vault_pipeline.Request("GET", url, self._headers(
                token.reveal() if token is not None else self._client.token))

        found: dict[int, KvSecret | None] = {}
        missing: list[int] = []
        for index, answer in enumerate(self._pipelined([request("data", path, token) for path, token in reads], "GET")):
            if answer is not None and answer.status == 404 and _is_plain_not_found(answer):
                missing.append(index)
            elif (secret := _quick_kv_secret(answer)) is not None:
                found[index] = secret
        metadata = self._pipelined([request("metadata", *reads[index]) for index in missing], "GET")
        for index, answer in zip(missing, metadata):
            if answer is not None and answer.status in (403, 404):
                found[index] = None  # kv_read: no metadata, or no right to read it, is "nothing there"
            elif (versions := _quick_answer(answer)) is not None:
                try:
                    current = _kv_metadata(versions).current_version
                except (AttributeError, TypeError, ValueError, OverflowError):
                    continue  # read again the ordinary way, which says what is wrong
                found[index] = KvSecret(version=current, data=MappingProxyType({})) if current > 0 else None
        return found

    def lookup_accessors_pipelined(self, accessors: Sequence[str]) -> list[TokenInfo | None]:
        """lookup_accessor of each accessor, pipelined: its TokenInfo where Vault answered 200 with a
        readable answer, else None (look that one up the ordinary way: only the active node may
        say an accessor is gone)."""
        headers = self._headers(self._client.token, ("Content-Type", "application/json"))
        wanted = [vault_pipeline.Request("POST", "/v1/auth/token/lookup-accessor", headers,
                                         json.dumps({"accessor": accessor}).encode()) for accessor in accessors]
        return [_quick_token_info(answer) for answer in self._pipelined(wanted, "POST-READ")]

    def write_policies_pipelined(self, policies: Sequence[tuple[str, str]]) -> list[bool]:
        """write_policy for each (name, text), pipelined: True where Vault answered with success,
        False where it did not (write that one the ordinary way)."""
        headers = self._headers(self._client.token, ("Content-Type", "application/json"))
        wanted = [vault_pipeline.Request("PUT", hvac.utils.format_url("/v1/sys/policies/acl/{name}", name=name),
                                         headers, json.dumps({"policy": text}).encode())
                  for name, text in policies]
        return [answer is not None and 200 <= answer.status < 300 for answer in self._pipelined(wanted, "PUT")]

    def read_policies_pipelined(self, names: Sequence[str]) -> list[str | None]:
        """read_policy for each name, pipelined: the text where Vault answered 200 with a readable
        answer, else None (read that one the ordinary way: it may also be "no such policy")."""
        headers = self._headers(self._client.token)
        wanted = [vault_pipeline.Request("GET", hvac.utils.format_url("/v1/sys/policies/acl/{name}", name=name),
                                         headers) for name in names]
        return [_quick_policy_text(answer) for answer in self._pipelined(wanted, "GET")]

    # --- reads the active node answers ------------------------------------------

    def _on_active(self, what: str, gone: Callable[[Exception], bool] | None,
                   read: Callable[[hvac.Client], Any]) -> Any:
        """`read` answered by the node that is active throughout it; None when `gone` says "not there".

        OpenBao (2.5+) answers reads on standbys from their own copy, which lags
        the active node (70-90 ms seen), and 2.7.2 has no request header that
        makes a standby forward a read (docs/design.md, "Reads on a standby").
        So: ask this node's `sys/leader` for the active node's address (its
        `api_addr`, which must be reachable from here); ask that node's
        `sys/leader` (it must say `is_self`, and gives `active_time`); read
        there; ask its `sys/leader` again. An unchanged `active_time` means the
        node was active during the read, so the read saw every committed write.
        A node without HA is its own active node. No leader (an election) or a
        changed leadership is a transient failure for the one retry policy,
        which starts the whole sequence over.
        """
        def attempt() -> Any:
            timeout = self._adapter.attempt_timeout
            target = self
            leader = _ask_leader(self._client)
            # Straight to the active node's own address even when this node says it is the one:
            # behind a load balancer the next request may reach another node.
            if leader is not None and str(leader.get("leader_address")).rstrip("/") != self.address.rstrip("/"):
                target = self._active_client(str(leader.get("leader_address")))
                target._adapter.attempt_timeout = timeout
                leader = _ask_leader(target._client)
            if leader is not None and not leader.get("is_self"):
                raise hvac.exceptions.VaultDown("the named leader is not active (election)")
            since = None if leader is None else leader.get("active_time")
            outcome: Any
            try:
                outcome = read(target._client)
            except Exception as exc:
                if gone is None or not gone(exc):
                    raise
                outcome = exc
            if leader is not None:
                after = _ask_leader(target._client)
                if after is None or not after.get("is_self") or after.get("active_time") != since:
                    raise hvac.exceptions.VaultDown("leadership changed during the read (election)")
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        return self._call(f"{what} on the active node", attempt, _gone=gone)

    def _active_client(self, address: str) -> "Vault":
        """A client for this token at the active node's address (kept per address for the run)."""
        cached = self._active.get(address)
        if cached is None:
            token = self._client.token
            cached = Vault(address, Secret(token) if token else None, _link=self._link)
            self._active[address] = cached
        return cached

    # --- any token: itself ---------------------------------------------------

    def lookup_self(self) -> TokenInfo:
        data = self._call("token lookup-self", self._client.auth.token.lookup_self)
        with _reading("token lookup-self"):
            return TokenInfo.from_lookup(data["data"])

    def renew_self(self) -> TokenInfo:
        data = self._call("token renew-self", self._client.auth.token.renew_self)
        with _reading("token renew-self"):
            auth = data.get("auth") or {}
            # renew-self answers with an auth block; reshape to lookup fields we need.
            return TokenInfo(
                accessor=str(auth.get("accessor") or ""), display_name="",
                policies=tuple(sorted(auth.get("token_policies") or auth.get("policies") or ())),
                orphan=bool(auth.get("orphan")), period_seconds=0,
                ttl_seconds=int(auth.get("lease_duration") or 0),
                meta=MappingProxyType(dict(auth.get("metadata") or {})),
            )

    # --- KV v2 -----------------------------------------------------------------

    def kv_read(self, mount: str, path: str, *, consistent: bool = False) -> KvSecret | None:
        """The latest version of a KV v2 secret, or None when the path has none.

        `consistent`: answered by the active node (`_on_active`), for the read
        that a check-and-set write depends on.

        A deleted or destroyed latest version N reads as KvSecret(N, {}): its
        data is gone, but a check-and-set write must still name N. The data
        read answers 404 (InvalidPath) for a destroyed version, as for a path
        that never existed; only then is the metadata read (one more request)
        to tell the two apart. Data at the path that cannot be read (nested too
        deep, too large, not a map) is a VaultMalformed error.
        """
        what = f"read {mount}/data/{path}"
        if consistent:
            data = self._on_active(what, _is_not_found, lambda client: client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=mount, raise_on_deleted_version=False))
        else:
            data = self._call_or_none(what, _is_not_found, self._client.secrets.kv.v2.read_secret_version,
                                      path=path, mount_point=mount, raise_on_deleted_version=False)
        if data is None:
            try:
                versions = self.kv_metadata(mount, path, consistent=consistent)
            except VaultDenied:  # a policy without metadata read: the path counts as new, as before
                return None
            if versions is None or versions.current_version <= 0:
                return None
            return KvSecret(version=versions.current_version, data=MappingProxyType({}))
        with _reading(what):
            return _kv_secret(data)

    def kv_write_cas(self, mount: str, path: str, data: Mapping[str, Any], cas: int) -> int:
        """Write the whole map only if the current version is `cas` (0: path is new). Returns the new version.

        Retried like a read after a lost answer: check-and-set makes a second
        copy impossible (a write that did land makes the retry a CasConflict).
        """
        what = f"write {mount}/data/{path}"
        result = self._call(what, self._client.secrets.kv.v2.create_or_update_secret,
                            path=path, secret=dict(data), cas=cas, mount_point=mount)
        with _reading(what):
            return int((result.get("data") or {}).get("version") or 0)

    def kv_metadata(self, mount: str, path: str, *, consistent: bool = False) -> KvMetadata | None:
        what = f"read {mount}/metadata/{path}"
        if consistent:
            data = self._on_active(what, _is_not_found, lambda client: client.secrets.kv.v2.read_secret_metadata(
                path=path, mount_point=mount))
        else:
            data = self._call_or_none(what, _is_not_found, self._client.secrets.kv.v2.read_secret_metadata,
                                      path=path, mount_point=mount)
        if data is None:
            return None
        with _reading(what):
            return _kv_metadata(data)

    # --- KV v2, undecoded (for data other people control) -----------------------
    # hvac decodes every answer with the stdlib json, which raises RecursionError on a
    # value nested a few thousand levels deep and holds a huge answer several times
    # over. These two read and write the map's values as JSON text instead; see
    # reconcile.common.boundedjson. Both go through _call like every other request.

    def kv_read_raw(self, mount: str, path: str, limit: int = KV_BODY_LIMIT, *,
                    consistent: bool = False) -> KvRawSecret | None:
        """As kv_read, but each value is its JSON text as Vault sent it (decoded by the caller).

        `consistent`: answered by the active node, as in kv_read (for the read a
        check-and-set write names the version of).

        The answer is streamed and refused (VaultError) past `limit` bytes;
        its structure is read without recursion. One request, or two (the
        metadata) for a destroyed latest version, as kv_read.
        """
        what = f"read {mount}/data/{path}"
        url = hvac.utils.format_url("/v1/{mount}/data/{path}", mount=mount, path=path)

        def fetch(client: hvac.Client) -> KvRawSecret | bytes | None:
            self.requests["GET"] += 1
            try:
                # RawAdapter's request, not the client's: hvac's JSON adapter would decode the answer.
                # So what _BoundedAdapter.request does for every other request is done here: this
                # attempt's timeout, and a standby's redirect raised (retried), never read as an answer.
                timeout = self._adapter.attempt_timeout
                response = hvac.adapters.RawAdapter.request(client.adapter, "GET", url, stream=True,
                                                            **({} if timeout is None else {"timeout": timeout}))
            except hvac.exceptions.InvalidPath as exc:  # 404: no data; a deleted version still names itself
                answer = exc.json if isinstance(exc.json, dict) else {}
                metadata = (answer.get("data") or {}).get("metadata")
                if isinstance(metadata, dict) and metadata.get("deletion_time"):
                    return KvRawSecret(version=int(metadata.get("version") or 0), fields=MappingProxyType({}))
                return None
            with response:
                if 300 <= response.status_code < 400:
                    raise _Redirected(response.status_code)
                return _read_limited(response, limit, what)

        if consistent:
            body = self._on_active(what, None, fetch)
        else:
            body = self._call(what, fetch, self._client)
        if isinstance(body, KvRawSecret):
            return body
        if body is None:
            try:
                versions = self.kv_metadata(mount, path, consistent=consistent)
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
        with _reading("capabilities-self"):
            inner = data.get("data") or data
            return {path: tuple(str(cap) for cap in inner.get(path) or ()) for path in paths}

    def is_reachable(self) -> None:
        """Raise VaultUnreachable unless /sys/health answers (no token needed)."""
        self._call("health check", self._client.sys.read_health_status, method="GET")

    def list_policies_detailed(self) -> dict[str, str] | None:
        """Every ACL policy name and text in one request (OpenBao); None where unsupported (HashiCorp Vault)."""
        what = "list sys/policies/detailed/acl"
        data = self._call_or_none(what, _is_unsupported, self._client.adapter.list, "/v1/sys/policies/detailed/acl")
        if data is None:
            return None
        with _reading(what):
            key_info = ((data or {}).get("data") or {}).get("key_info") or {}
            return {str(name): str((info or {}).get("policy") or "") for name, info in key_info.items()}

    def list_policy_names(self) -> list[str]:
        what = "list sys/policies/acl"
        data = self._call(what, self._client.adapter.list, "/v1/sys/policies/acl")
        with _reading(what):
            return [str(name) for name in ((data or {}).get("data") or {}).get("keys") or ()]

    def read_policy(self, name: str) -> str | None:
        """The policy text, or None when there is no such policy."""
        what = f"read policy {name}"
        data = self._call_or_none(what, _is_not_found, self._client.sys.read_acl_policy, name)
        if data is None:
            return None
        with _reading(what):
            return str(((data or {}).get("data") or {}).get("policy") or "")

    def write_policy(self, name: str, text: str) -> None:
        self._call(f"write policy {name}", self._client.sys.create_or_update_acl_policy, name=name, policy=text)

    def delete_policy(self, name: str) -> None:
        """Idempotent: deleting a missing policy succeeds."""
        self._call(f"delete policy {name}", self._client.sys.delete_acl_policy, name=name)

    def lookup_token(self, token: Secret) -> TokenInfo | None:
        """Look another token up (admin API, token in the POST body); None when it is expired, revoked,
        unknown, or not even shaped like a token (Vault answers 400 to text it cannot decode)."""
        data = self._call_or_none("token lookup", _is_refused, self._client.auth.token.lookup, token.reveal())
        if data is None:  # "gone" leads to a re-mint: only the active node may say so
            data = self._on_active("token lookup", _is_bad_token,
                                   lambda client: client.auth.token.lookup(token.reveal()))
        if data is None:
            return None
        with _reading("token lookup"):
            return TokenInfo.from_lookup(data["data"])

    def lookup_token_self(self, token: Secret) -> TokenInfo | None:
        """`lookup-self` with another token (needs no admin); None when Vault refuses it.

        A refusal means expired, revoked, unknown, or a policy without lookup-self.
        With a client that has no token of its own the request reuses this
        client's connection; otherwise it goes through `with_token`.
        """
        if self._client.adapter.token:
            try:
                return self.with_token(token).lookup_self()
            except VaultDenied:
                return None
        data = self._call_or_none("token lookup-self", _is_forbidden, self._client.adapter.get,
                                  "/v1/auth/token/lookup-self", headers={"X-Vault-Token": token.reveal()})
        if data is None:
            return None
        with _reading("token lookup-self"):
            return TokenInfo.from_lookup(data["data"])

    def lookup_accessor(self, accessor: str) -> TokenInfo | None:
        """The token behind an accessor; None when it no longer exists (as the active node says).

        A standby answers 400 or 403 for an accessor minted a moment ago
        (`_is_refused`); such an answer is asked again of the active node,
        whose word is final.
        """
        data = self._call_or_none("token lookup-accessor", _is_refused,
                                  self._client.auth.token.lookup_accessor, accessor)
        if data is None:  # "gone" makes a record forgotten: only the active node may say so
            data = self._on_active("token lookup-accessor", _is_invalid_accessor,
                                   lambda client: client.auth.token.lookup_accessor(accessor))
        if data is None:
            return None
        with _reading("token lookup-accessor"):
            return TokenInfo.from_lookup(data["data"])

    def list_accessors(self) -> list[str]:
        """Every token accessor Vault holds (admin, sudo on auth/token/accessors; one request)."""
        what = "list auth/token/accessors"
        data = self._call(what, self._client.adapter.list, "/v1/auth/token/accessors")
        with _reading(what):
            return [str(accessor) for accessor in ((data or {}).get("data") or {}).get("keys") or ()]

    def create_orphan_token(self, *, policies: list[str], period: str, display_name: str,
                            meta: Mapping[str, str]) -> MintedToken:
        """Mint an orphan, periodic token with exactly `policies` (no default policy).

        Never sent twice: an answer lost after sending may mean a token exists.
        The caller records an intent first (reconcile.local.statefile) so the next run
        finds such a token by its metadata.
        """
        data = self._call("token create-orphan", self._client.auth.token.create_orphan,
                          policies=list(policies), period=period, no_default_policy=True,
                          display_name=display_name, meta=dict(meta), renewable=True, _idempotent=False)
        with _reading("token create-orphan"):
            auth = data.get("auth") or {}
            return MintedToken(token=Secret(str(auth["client_token"])), accessor=str(auth["accessor"]))

    def revoke_accessor(self, accessor: str) -> None:
        """Revoke the token behind an accessor; an accessor that no longer exists is not an error."""
        self._call_or_none("token revoke-accessor", _is_revoked_already,
                           self._client.auth.token.revoke_accessor, accessor)
