"""The fast path: many independent requests pipelined on a few connections (reconcile.vault.pipeline).

Only requests that may be sent twice (reads, lookups, policy writes). Each method
answers what a plain success gave, and None (or leaves the index out) for every
other request, which the caller sends again the ordinary way, through `_call`
and the retry policy (docs/design.md, "Pipelined requests"). Nothing is sent once
Vault counts as down, nor through an HTTP proxy.
"""

from __future__ import annotations

import json
import os
import ssl
import time
from types import MappingProxyType
from typing import Sequence
from urllib.parse import urlsplit

import hvac
import hvac.adapters
import hvac.exceptions
import hvac.utils
import requests

from reconcile.vault import pipeline as vault_pipeline
from reconcile.vault.connection import Connection
from reconcile.vault.transport import (MAX_ANSWER_BYTES, decode_kv_metadata, is_plain_not_found, quick_answer,
                                       quick_kv_secret, quick_policy_text, quick_token_info)
from reconcile.vault.values import KvSecret, Secret, TokenInfo


class FastPath(Connection):
    """Pipelined lookups, KV reads and policy reads and writes."""

    # --- many independent requests at once (reconcile.vault.pipeline) ------------------

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
                                             max_body=MAX_ANSWER_BYTES, ssl_context=context,
                                             server_name=self._server_name)
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
                if self._client_cert is not None:
                    context.load_cert_chain(*self._client_cert)
            except (OSError, ValueError, ssl.SSLError):
                return None
            self._ssl_context = context
        return self._ssl_context

    def _headers(self, token: str | None, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        base = (("X-Vault-Request", "true"),) + ((("X-Vault-Token", token),) if token else ())
        if self.namespace:
            base += (("X-Vault-Namespace", self.namespace),)
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
        return [quick_token_info(answer) for answer in self._pipelined(wanted, count_as)]

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
            if answer is not None and answer.status == 404 and is_plain_not_found(answer):
                missing.append(index)
            elif (secret := quick_kv_secret(answer)) is not None:
                found[index] = secret
        metadata = self._pipelined([request("metadata", *reads[index]) for index in missing], "GET")
        for index, answer in zip(missing, metadata):
            if answer is not None and answer.status in (403, 404):
                found[index] = None  # kv_read: no metadata, or no right to read it, is "nothing there"
            elif (versions := quick_answer(answer)) is not None:
                try:
                    current = decode_kv_metadata(versions).current_version
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
        return [quick_token_info(answer) for answer in self._pipelined(wanted, "POST-READ")]

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
        return [quick_policy_text(answer) for answer in self._pipelined(wanted, "GET")]
