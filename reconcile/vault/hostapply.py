"""The handlers for a host's identity: its token role, and this host's host token.

A host token is minted only by an admin run and written ahead like every mint
(its intent's user is `@host`): a run killed after the mint and before the
file write leaves a token the next admin run finds by its nonce and revokes
(reconcile.vault.plan.plan_pending). A file write that fails revokes the new
token at once. The host token renews itself in the hourly run.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Mapping

from reconcile.common.model import Action, Change, Kind
from reconcile.roster.durations import format_duration
from reconcile.vault.apply import VaultContext, revoke_order
from reconcile.vault.desired import NONCE_META
from reconcile.vault.hosts import DesiredHost, HostOrder, ObservedHostToken
from reconcile.vault.values import Secret, VaultDenied, VaultError, VaultInvalid

HOST_INTENT_USER = "@host"
"""The user of a host token's intent (no person is named so: roster names are POSIX names)."""
HostTokenWriter = Callable[[Secret], None]


def apply_role(change: Change, ctx: VaultContext) -> str:
    want = change.desired
    assert isinstance(want, DesiredHost)
    ctx.vault.write_role(want.role, want.role_fields())
    return "created" if change.action is Action.CREATE else "updated"


def apply_host_token(change: Change, ctx: VaultContext) -> str:
    if change.action is Action.DELETE:
        return revoke_order(change, ctx)
    order = change.desired
    assert isinstance(order, HostOrder)
    if order.renew:
        return _renew(change, ctx)
    return _mint_host_token(order, ctx)


def _renew(change: Change, ctx: VaultContext) -> str:
    if ctx.host_client is not None:
        renewed = ctx.host_client.renew_self()
    else:
        current = change.observed
        assert isinstance(current, ObservedHostToken) and current.token is not None
        renewed = ctx.vault.with_token(current.token).renew_self()
    return f"renewed (TTL {format_duration(renewed.ttl_seconds)})"


def _mint_host_token(order: HostOrder, ctx: VaultContext) -> str:
    if ctx.write_host_token is None:
        raise VaultError("this run cannot write the host token file")
    want = order.host
    meta = dict(want.meta)
    nonce = ctx.mint_log.intend(HOST_INTENT_USER) if ctx.mint_log is not None else None
    if nonce is not None:
        meta[NONCE_META] = nonce
    try:
        minted = ctx.vault.create_orphan_token(policies=[want.role], period=want.period,
                                               display_name=want.display_name, meta=meta)
    except (VaultDenied, VaultInvalid):
        if nonce is not None and ctx.mint_log is not None:
            ctx.mint_log.settle(nonce)
        raise
    try:
        ctx.write_host_token(minted.token)
    except Exception as exc:  # the file write failed: the new token must not outlive it
        detail = str(exc) or type(exc).__name__
        ctx.vault.revoke_accessor(minted.accessor)  # if this fails the intent stays: the next admin run
        if nonce is not None and ctx.mint_log is not None:
            ctx.mint_log.settle(nonce)
        raise VaultError(f"{detail}; the new host token was revoked") from None
    if nonce is not None and ctx.mint_log is not None:
        ctx.mint_log.settle(nonce)
    for accessor in order.revoke:
        try:
            ctx.vault.revoke_accessor(accessor)
        except VaultError as exc:
            ctx.outcomes.unrevoked.add(accessor)  # kept in pending_revoke: the next admin run revokes it
            raise VaultError(f"minted and written, but revoking the replaced host token failed ({exc}); "
                             "the next admin run retries") from None
        ctx.outcomes.revoked.add(accessor)
    return "minted and written" + (", replaced host token revoked" if order.revoke else "")


HOST_HANDLERS: Mapping[tuple[Kind, Action], Callable[[Change, VaultContext], str]] = MappingProxyType({
    (Kind.HOST_ROLE, Action.CREATE): apply_role,
    (Kind.HOST_ROLE, Action.UPDATE): apply_role,
    (Kind.HOST_TOKEN, Action.CREATE): apply_host_token,
    (Kind.HOST_TOKEN, Action.UPDATE): apply_host_token,
    (Kind.HOST_TOKEN, Action.DELETE): apply_host_token,
})
