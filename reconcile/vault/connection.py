"""One connection to Vault for one token, and the one path every request takes (`_call`).

Every request goes through `Connection._call`, which applies the one retry policy
(reconcile.vault.retry): transient failures are retried with backoff, each attempt
has a short timeout, and all requests of a run share one deadline. Once retries
run out the client (and every client made from it by `with_token`) counts Vault
as unreachable and sends nothing more: each later call raises VaultUnreachable at
once, so a run stops early instead of waiting on each remaining change. Redirects
are never followed: a standby's 307 may name a leader that is gone, so it counts
as transient and the same node is asked again. `_on_active` answers a read on
the active node (docs/design.md, "Reads on a standby").

What callers do with a connection is in the operation classes over it
(reconcile.vault.tokens, kv, policies, fastpath), joined in reconcile.vault.client.
"""

from __future__ import annotations

import os
import ssl
from collections import Counter
from typing import Any, Callable, Self

import hvac
import hvac.adapters
import hvac.exceptions
import hvac.utils
import requests
import requests.adapters

from reconcile.vault.retry import Deadline, GaveUp, RetryPolicy, Transience, call_with_retries
from reconcile.vault.transport import (READ_METHODS, BoundedAdapter, Link, Redirected, Unreadable, ask_leader,
                                       classify, count_key, translate)
from reconcile.vault.values import (Secret, VaultError, VaultUnreachable, check_address, client_setting,
                                    setting_name)


class ServerNameAdapter(requests.adapters.HTTPAdapter):
    """VAULT_TLS_SERVER_NAME: the name sent in SNI and checked in the server's certificate, when it is
    not the host of the address (a Vault reached by IP, or through a tunnel)."""

    def __init__(self, server_name: str) -> None:
        self.server_name = server_name
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["server_hostname"] = self.server_name
        kwargs["assert_hostname"] = self.server_name
        super().init_poolmanager(*args, **kwargs)


class Connection:
    """One hvac client for one token, with a count of the requests it made (shared by every client
    of the run made from it)."""

    def __init__(self, address: str, token: Secret | None, *, cacert: str | None = None,
                 policy: RetryPolicy | None = None, _link: Link | None = None) -> None:
        """Raises VaultError naming VAULT_ADDR when `address` is not a usable URL.

        `policy` defaults to RetryPolicy.from_env(); its deadline starts now.
        """
        check_address(address)
        self.address = address
        # The client variables an admin sets for the Vault CLI, read the way OpenBao's client reads
        # them (values.client_setting: BAO_<name> over VAULT_<name>).
        cacert = cacert or client_setting("CACERT") or client_setting("CAPATH")
        self._cacert = cacert
        self.namespace = client_setting("NAMESPACE")
        certificate, key = client_setting("CLIENT_CERT"), client_setting("CLIENT_KEY")
        if (certificate is None) != (key is None):
            raise VaultError(f"{setting_name('CLIENT_CERT')} and {setting_name('CLIENT_KEY')} must be set together "
                             "(a client certificate and its key)")
        self._client_cert = (certificate, key) if certificate and key else None
        self._server_name = client_setting("TLS_SERVER_NAME")
        if _link is None:
            policy = policy or RetryPolicy.from_env()
            _link = Link(policy=policy, deadline=Deadline(policy.deadline), requests=Counter())
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
            if self._client_cert is not None:
                session.cert = self._client_cert
            if self._server_name is not None:
                session.mount("https://", ServerNameAdapter(self._server_name))
            self._verify: bool | str | None = settings["verify"]
            self._proxied = bool(settings["proxies"])
            self._client = hvac.Client(url=address, token=token.reveal() if token else None,
                                       verify=settings["verify"], timeout=_link.policy.request_timeout,
                                       session=session, allow_redirects=False, adapter=BoundedAdapter,
                                       cert=self._client_cert, namespace=self.namespace)
        except ValueError as exc:  # a URL requests or hvac cannot parse; the text names no token
            raise VaultError(f"VAULT_ADDR={address!r} is not a valid Vault address ({exc})") from None
        if token is None:
            # hvac falls back to $VAULT_TOKEN or ~/.vault-token when given no token; a client meant
            # to be tokenless (the hourly run, a health check) must not quietly carry root's.
            self._client.token = None
        self._adapter: BoundedAdapter = self._client.adapter
        counter, lock = _link.requests, _link.lock

        def count(method: str, url: str) -> None:
            with lock:
                counter[count_key(method, url)] += 1

        self._adapter.on_request = count
        self._active: dict[str, Self] = {}
        """Clients at the active node's address, for reads that must be answered there (_on_active)."""
        self._ssl_context: ssl.SSLContext | None = None

    @property
    def requests(self) -> Counter[str]:
        """Requests sent, by HTTP method (LIST counted as LIST; read-only POSTs such as token lookups
        as POST-READ); retries count each time. Shared by every client of the run."""
        return self._link.requests

    @property
    def writes(self) -> int:
        return sum(n for method, n in self.requests.items() if method not in READ_METHODS)

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
            reason = translate(exc.last, what, self.address) if exc.last is not None else None
            text = f"{reason} ({exc.why})" if reason is not None else (
                f"Vault at VAULT_ADDR={self.address}: {exc.why} ({what})")
            link.down = text
            raise VaultUnreachable(text) from None
        except Exception as exc:
            if _gone is not None and _gone(exc):
                return None
            if not _idempotent and classify(exc) is Transience.MAYBE_DONE:
                # Not sent again (reconcile.vault.retry); but whether Vault is gone or only this answer was
                # lost decides whether the rest of the run should still try: ask it (retried as ever).
                self._check_alive()
            if isinstance(exc, (hvac.exceptions.VaultError, requests.exceptions.RequestException,
                                Redirected, Unreadable)):
                raise translate(exc, what, self.address) from None
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

    def with_token(self, token: Secret) -> Self:
        """A client for another token at the same address (shares nothing secret; shares the count,
        the deadline and whether Vault is down)."""
        return type(self)(self.address, token, _link=self._link)

    def twin(self) -> Self:
        """Another client for this client's token, with a connection of its own, sharing the count,
        the deadline and whether Vault is down: one per worker of a pool (reconcile.vault.pool)."""
        token = self._client.token
        return type(self)(self.address, Secret(token) if token else None, cacert=self._cacert, _link=self._link)

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
            leader = ask_leader(self._client)
            # Straight to the active node's own address even when this node says it is the one:
            # behind a load balancer the next request may reach another node.
            if leader is not None and str(leader.get("leader_address")).rstrip("/") != self.address.rstrip("/"):
                target = self._active_client(str(leader.get("leader_address")))
                target._adapter.attempt_timeout = timeout
                leader = ask_leader(target._client)
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
                after = ask_leader(target._client)
                if after is None or not after.get("is_self") or after.get("active_time") != since:
                    raise hvac.exceptions.VaultDown("leadership changed during the read (election)")
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        return self._call(f"{what} on the active node", attempt, _gone=gone)

    def _active_client(self, address: str) -> Self:
        """A client for this token at the active node's address (kept per address for the run)."""
        cached = self._active.get(address)
        if cached is None:
            token = self._client.token
            cached = type(self)(address, Secret(token) if token else None, _link=self._link)
            self._active[address] = cached
        return cached

    def is_reachable(self) -> None:
        """Raise VaultUnreachable unless /sys/health answers (no token needed)."""
        self._call("health check", self._client.sys.read_health_status, method="GET")
