"""Token operations: a token's own lookup and renewal, and the admin's lookups, mints and revokes.

What `plan`/`apply` need of tokens (reconcile.vault.observe, apply) and what the
sync needs of its own token (lookup-self, renew-self). Read-only POSTs (token
lookups, capabilities-self) are counted as reads (transport.READ_ONLY_POSTS).
A mint is never sent twice (`create_orphan_token`): an answer lost after sending
may mean a token exists.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from reconcile.vault.connection import Connection
from reconcile.vault.transport import (is_bad_token, is_forbidden, is_invalid_accessor, is_refused,
                                       is_revoked_already, reading)
from reconcile.vault.values import MintedToken, Secret, TokenInfo, VaultDenied


class TokenOperations(Connection):
    """Lookups, renewals, capabilities, mints and revocations."""

    # --- any token: itself ---------------------------------------------------

    def lookup_self(self) -> TokenInfo:
        data = self._call("token lookup-self", self._client.auth.token.lookup_self)
        with reading("token lookup-self"):
            return TokenInfo.from_lookup(data["data"])

    def renew_self(self) -> TokenInfo:
        data = self._call("token renew-self", self._client.auth.token.renew_self)
        with reading("token renew-self"):
            auth = data.get("auth") or {}
            # renew-self answers with an auth block; reshape to lookup fields we need.
            return TokenInfo(
                accessor=str(auth.get("accessor") or ""), display_name="",
                policies=tuple(sorted(auth.get("token_policies") or auth.get("policies") or ())),
                orphan=bool(auth.get("orphan")), period_seconds=0,
                ttl_seconds=int(auth.get("lease_duration") or 0),
                meta=MappingProxyType(dict(auth.get("metadata") or {})),
            )

    def capabilities_self(self, paths: list[str]) -> dict[str, tuple[str, ...]]:
        """This token's capabilities on each path (one request; any valid token)."""
        data = self._call("capabilities-self", self._client.adapter.post, "/v1/sys/capabilities-self",
                          json={"paths": list(paths)})
        with reading("capabilities-self"):
            inner = data.get("data") or data
            return {path: tuple(str(cap) for cap in inner.get(path) or ()) for path in paths}

    def lookup_token(self, token: Secret) -> TokenInfo | None:
        """Look another token up (admin API, token in the POST body); None when it is expired, revoked,
        unknown, or not even shaped like a token (Vault answers 400 to text it cannot decode)."""
        data = self._call_or_none("token lookup", is_refused, self._client.auth.token.lookup, token.reveal())
        if data is None:  # "gone" leads to a re-mint: only the active node may say so
            data = self._on_active("token lookup", is_bad_token,
                                   lambda client: client.auth.token.lookup(token.reveal()))
        if data is None:
            return None
        with reading("token lookup"):
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
        data = self._call_or_none("token lookup-self", is_forbidden, self._client.adapter.get,
                                  "/v1/auth/token/lookup-self", headers={"X-Vault-Token": token.reveal()})
        if data is None:
            return None
        with reading("token lookup-self"):
            return TokenInfo.from_lookup(data["data"])

    def lookup_accessor(self, accessor: str) -> TokenInfo | None:
        """The token behind an accessor; None when it no longer exists (as the active node says).

        A standby answers 400 or 403 for an accessor minted a moment ago
        (`is_refused`); such an answer is asked again of the active node,
        whose word is final.
        """
        data = self._call_or_none("token lookup-accessor", is_refused,
                                  self._client.auth.token.lookup_accessor, accessor)
        if data is None:  # "gone" makes a record forgotten: only the active node may say so
            data = self._on_active("token lookup-accessor", is_invalid_accessor,
                                   lambda client: client.auth.token.lookup_accessor(accessor))
        if data is None:
            return None
        with reading("token lookup-accessor"):
            return TokenInfo.from_lookup(data["data"])

    def list_accessors(self) -> list[str]:
        """Every token accessor Vault holds (admin, sudo on auth/token/accessors; one request)."""
        what = "list auth/token/accessors"
        data = self._call(what, self._client.adapter.list, "/v1/auth/token/accessors")
        with reading(what):
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
        with reading("token create-orphan"):
            auth = data.get("auth") or {}
            return MintedToken(token=Secret(str(auth["client_token"])), accessor=str(auth["accessor"]))

    def revoke_accessor(self, accessor: str) -> None:
        """Revoke the token behind an accessor; an accessor that no longer exists is not an error."""
        self._call_or_none("token revoke-accessor", is_revoked_already,
                           self._client.auth.token.revoke_accessor, accessor)

    def revoke_self(self) -> None:
        """This client's token revokes itself. Raises VaultDenied when Vault refuses: the token is gone,
        or its policy predates `revoke-self` (see `revoke_token_self`)."""
        self._call("token revoke-self", self._client.adapter.post, "/v1/auth/token/revoke-self")

    def revoke_token_self(self, token: Secret) -> bool:
        """`token` revokes itself: True when it is gone now, False when it refused and still lives (a
        policy written before revoke-self was in the template; an admin run revokes it by accessor)."""
        client = self.with_token(token)
        try:
            client.revoke_self()
        except VaultDenied:
            return self.lookup_token_self(token) is None
        return True

    def proves(self, token: Secret) -> bool:
        """Whether `token` works: its own lookup-self succeeds. A refusal is asked again of the active
        node (a standby may not have the token a moment after its mint), whose word is final."""
        if self.lookup_token_self(token) is not None:
            return True
        data = self._on_active("token lookup-self", is_forbidden, lambda client: client.adapter.get(
            "/v1/auth/token/lookup-self", headers={"X-Vault-Token": token.reveal()}))
        return data is not None
