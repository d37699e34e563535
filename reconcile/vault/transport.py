"""Below the client's methods: hvac's adapter with bounded answers, and what a failure means.

`BoundedAdapter` reads every answer with a cap (MAX_ANSWER_BYTES, nested at most
MAX_ANSWER_DEPTH) and raises VaultMalformed for one it cannot read; `classify` is
the one place that decides what is transient for the retry policy; `translate`
turns hvac's and requests' exceptions into VaultErrors that never carry a token;
the `is_*` predicates say what a failure means ("not there", "refused"); the
`quick_*` functions read a pipelined answer into the same typed values, or None.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import accumulate
from types import MappingProxyType
from typing import Any, Callable, Iterator

import hvac
import hvac.adapters
import hvac.exceptions
import hvac.utils
import requests
import urllib3.exceptions

from reconcile.vault.retry import Deadline, RetryPolicy, Transience

from reconcile.vault import pipeline as vault_pipeline
from reconcile.common import boundedjson
from reconcile.vault.values import (CasConflict, KvMetadata, KvRawSecret, KvSecret, TokenInfo, VaultDenied,
                                    VaultError, VaultInvalid, VaultMalformed, VaultUnreachable)


MAX_ANSWER_BYTES = 16 * 1024 * 1024
"""Any answer but the policy listing: a person can store up to Vault's own 32 MiB request cap at
their path, and such a value fails only their row."""
MAX_LISTING_BYTES = 128 * 1024 * 1024
"""The policy listing (sys/policies/detailed/acl, admin only: nothing in it is a person's to write)
holds every policy's text: about 1.7 KiB per person, so 17 MiB at 10,000 people (seen by `make
bench`, where 16 MiB refused it); this bound is reached at about 75,000."""
MAX_ANSWER_DEPTH = 64
"""Vault's own envelopes nest 3 deep; what a person stores at their path gets the rest."""


class Redirected(Exception):
    """A 3xx answer: a standby naming the leader. Never followed (the leader may be the node that died)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"redirected ({status})")
        self.status = status


class Unreadable(Exception):
    """The answer cannot be read safely; the text says why and holds nothing from the answer."""


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def nesting_depth(raw: bytes) -> int:
    """How deep the JSON document `raw` nests arrays and objects (brackets inside strings ignored)."""
    steps = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS).translate(_BRACKET_STEPS)
    return max(accumulate(memoryview(steps).cast("b")), default=0)


def decode_answer(raw: bytes, cap: int = MAX_ANSWER_BYTES) -> Any:
    """Vault's JSON answer, bounded in size and depth; raises Unreadable otherwise."""
    if len(raw) > cap:
        raise Unreadable(f"it is larger than {cap // (1024 * 1024)} MiB")
    # Fewer brackets than the cap cannot nest deeper than it: most answers skip the scan.
    if raw.count(b"[") + raw.count(b"{") > MAX_ANSWER_DEPTH and nesting_depth(raw) > MAX_ANSWER_DEPTH:
        raise Unreadable(f"it nests deeper than {MAX_ANSWER_DEPTH} levels")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise Unreadable("it is not valid JSON") from None


class BoundedAdapter(hvac.adapters.RawAdapter):  # type: ignore[misc]  # hvac has no type hints
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
                answer_cap: int = MAX_ANSWER_BYTES, **kwargs: Any) -> Any:
        """`answer_cap`: the most this answer may be (MAX_LISTING_BYTES for the policy listing only)."""
        if self.on_request is not None:
            self.on_request(method, url)
        if self.attempt_timeout is not None:
            kwargs["timeout"] = self.attempt_timeout
        kwargs["stream"] = True  # read below, up to the cap
        response = super().request(method, url, headers=headers, raise_exception=False, **kwargs)
        try:
            read_bounded(response, answer_cap)
        finally:
            response.close()
        if 300 <= response.status_code < 400:
            raise Redirected(response.status_code)
        if not response.ok:
            if raise_exception:
                self._raise_for_error(method, url, response)
            return response
        if response.status_code == 200:
            return decode_answer(response.content, answer_cap)
        return response


def read_bounded(response: requests.Response, cap: int = MAX_ANSWER_BYTES) -> None:
    """Read the body into the response (as requests would without `stream`), refusing more than the cap."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > cap:
            raise Unreadable(f"it is larger than {cap // (1024 * 1024)} MiB")
        chunks.append(chunk)
    response._content = b"".join(chunks)  # what requests' own `.content` does, bounded


def read_limited(response: requests.Response, limit: int, what: str) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise VaultError(f"the answer to {what} is larger than {limit // (1024 * 1024)} MiB; not read")
    body = bytearray()
    for chunk in response.iter_content(chunk_size=1024 * 1024):
        body += chunk
        if len(body) > limit:
            raise VaultError(f"the answer to {what} is larger than {limit // (1024 * 1024)} MiB; not read")
    return bytes(body)


def raw_secret(body: bytes) -> KvRawSecret:
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


def translate(exc: BaseException, what: str, address: str) -> VaultError:
    if isinstance(exc, Unreadable):
        return VaultMalformed(f"Vault's answer cannot be read: {exc} ({what})")
    if isinstance(exc, Redirected):
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
    """The one place that decides what a failed Vault request means for a retry (reconcile.vault.retry)."""
    if isinstance(exc, Redirected):
        return Transience.NOT_DONE  # a standby points at a leader; it did not act
    if isinstance(exc, requests.exceptions.ConnectTimeout) or never_connected(exc):
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


def never_connected(exc: BaseException) -> bool:
    """A connection error from before the request was sent (refused, no route): nothing reached Vault."""
    if not isinstance(exc, requests.exceptions.ConnectionError) or not exc.args:
        return False
    reason = getattr(exc.args[0], "reason", None)
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def ask_leader(client: hvac.Client) -> dict[str, Any] | None:
    """`sys/leader` (no token needed): None when the node runs without HA; raises VaultDown (transient)
    while it knows no active node."""
    data = client.adapter.get("/v1/sys/leader")
    if not isinstance(data, dict) or not data.get("ha_enabled"):
        return None
    if not data.get("leader_address"):
        raise hvac.exceptions.VaultDown("no active node (election)")
    return data


@contextmanager
def reading(what: str) -> Iterator[None]:
    """Shaping an answer into typed values: a field of the wrong type is a VaultMalformed error."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        raise VaultMalformed(f"Vault's answer ({what}) has an unexpected shape") from None


@dataclass
class Link:
    """What every client of one run shares: the policy, the deadline, the count, whether Vault is down."""

    policy: RetryPolicy
    deadline: Deadline
    requests: Counter[str]
    down: str | None = None
    """Why Vault counts as unreachable for the rest of the run; None while it answers."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Guards `requests`: pooled clients (`twin`) count from several threads."""


READ_ONLY_POSTS = ("/v1/auth/token/lookup", "/v1/auth/token/lookup-accessor", "/v1/sys/capabilities-self")
"""POST endpoints that change nothing: token lookups carry the token in the body, never in a URL."""
READ_METHODS = ("GET", "LIST", "HEAD", "POST-READ")


def count_key(method: str, url: str) -> str:
    method = method.upper()
    if method == "POST" and url.split("?", 1)[0].rstrip("/").endswith(READ_ONLY_POSTS):
        return "POST-READ"
    return method


def is_not_found(exc: Exception) -> bool:
    return isinstance(exc, hvac.exceptions.InvalidPath)


def is_bad_token(exc: Exception) -> bool:
    """Expired, revoked or unknown: the admin lookup answers 403 "bad token". Text that is no token
    at all (`b.!!!!`, whatever a person wrote into their file): 400 (OpenBao: "illegal base64 data")."""
    return ((isinstance(exc, hvac.exceptions.Forbidden) and "bad token" in str(exc))
            or isinstance(exc, hvac.exceptions.InvalidRequest))


def is_forbidden(exc: Exception) -> bool:
    return isinstance(exc, hvac.exceptions.Forbidden)


def is_unsupported(exc: Exception) -> bool:
    """HashiCorp Vault has no detailed policy list: 404, or 400 "unsupported path"."""
    return (isinstance(exc, (hvac.exceptions.InvalidPath, hvac.exceptions.UnsupportedOperation))
            or (isinstance(exc, hvac.exceptions.InvalidRequest) and "unsupported" in str(exc)))


def is_invalid_accessor(exc: Exception) -> bool:
    """The accessor names no token. A standby may also say "invalid request" for one it has not yet
    replicated: lookups ask the active node again (Vault._on_active) before believing it."""
    text = str(exc)
    return isinstance(exc, hvac.exceptions.InvalidRequest) and ("invalid accessor" in text
                                                               or "invalid request" in text)


def is_refused(exc: Exception) -> bool:
    """Any 400 or 403 to a token lookup. A standby that has not yet replicated a token answers one of
    "invalid accessor", "invalid request" or "permission denied" (OpenBao 2.7.2, seen here), so such an
    answer is only a reason to ask the active node, whose answer is then taken as it is."""
    return isinstance(exc, (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden))


def is_revoked_already(exc: Exception) -> bool:
    """A revoke that lost a race with another revoke of the same accessor: 400 "token not found"
    (OpenBao 2.7.2, seen with two hosts revoking at once), or the accessor is already gone."""
    return is_invalid_accessor(exc) or (isinstance(exc, hvac.exceptions.InvalidRequest)
                                         and "token not found" in str(exc))


def quick_answer(answer: vault_pipeline.Answer | None) -> Any:
    """A pipelined 200 answer decoded as BoundedAdapter would, or None (ask again the ordinary way)."""
    if answer is None or answer.status != 200:
        return None
    try:
        return decode_answer(answer.body)
    except Unreadable:
        return None


def quick_token_info(answer: vault_pipeline.Answer | None) -> TokenInfo | None:
    data = quick_answer(answer)
    try:
        return TokenInfo.from_lookup(data["data"]) if data is not None else None
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        return None  # the ordinary lookup reads it again and says what is wrong (VaultMalformed)


def decode_kv_secret(data: Any) -> KvSecret:
    """A KV v2 data read's answer; raises KeyError, TypeError, ValueError or AttributeError on a bad shape."""
    inner = data.get("data") or {}
    metadata = inner.get("metadata") or {}
    version = int(metadata.get("version") or 0)
    if metadata.get("deletion_time") or metadata.get("destroyed"):
        return KvSecret(version=version, data=MappingProxyType({}))
    return KvSecret(version=version, data=MappingProxyType(dict(inner.get("data") or {})))


def decode_kv_metadata(data: Any) -> KvMetadata:
    """A KV v2 metadata read's answer; raises TypeError, ValueError or AttributeError on a bad shape."""
    inner = data.get("data") or {}
    return KvMetadata(current_version=int(inner.get("current_version") or 0),
                      updated_time=str(inner.get("updated_time") or ""))


def quick_kv_secret(answer: vault_pipeline.Answer | None) -> KvSecret | None:
    data = quick_answer(answer)
    try:
        return decode_kv_secret(data) if data is not None else None
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        return None


def is_plain_not_found(answer: vault_pipeline.Answer) -> bool:
    """A 404 that names no deleted version (`{"errors":[]}`): nothing at the path, or destroyed."""
    try:
        data = decode_answer(answer.body)
    except Unreadable:
        return False
    return isinstance(data, dict) and "data" not in data


def quick_policy_text(answer: vault_pipeline.Answer | None) -> str | None:
    data = quick_answer(answer)
    try:
        return str(data["data"]["policy"]) if data is not None else None
    except (KeyError, TypeError):
        return None
