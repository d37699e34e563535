"""The handlers the executor calls for Vault kinds, and the state file's token bookkeeping.

`HANDLERS` maps (kind, action) to a handler over a VaultContext: policy writes
(also pipelined: `apply_policies_pipelined`), mints under the person's mint lock
(written ahead in the MintLog, adopted when another host just wrote a valid
token), revocations and renewals. `next_records` and `next_pending` (pure) say
what the state file records after the run: the accessor the tool minted for each
person, and replaced tokens still to revoke.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, ContextManager, Iterable, Mapping, Protocol, Sequence

from reconcile.roster.durations import format_duration
from reconcile.common.model import Action, Change, Kind
from reconcile.vault.client import Vault
from reconcile.vault.values import MintedToken, Secret, TokenInfo, VaultDenied, VaultError, VaultInvalid
from reconcile.vault.desired import (NONCE_META, DesiredPolicy, DesiredToken, DesiredVault, is_host_token,
                                     is_minted_for, is_ours_to_revoke, minted_for_whom)
from reconcile.vault.hosts import DesiredHost
from reconcile.vault.observe import (ObservedToken, ObservedVault, TokenFileUnreadable, TokenReader,
                                     TokenState, parse_token_file, scan_tokens)
from reconcile.vault.plan import MintOrder, RevokeOrder, token_drift


TokenWriter = Callable[[str, bytes, bool], None]
"""Writes a user's token file (0600, owner the user, no link followed); raises on failure."""


@dataclass
class TokenOutcomes:
    """What the executor did to tokens this run, for the state file."""

    minted: dict[str, str] = field(default_factory=dict)
    """user -> accessor of the token now in the user's file."""
    revoked: set[str] = field(default_factory=set)
    """Accessors revoked."""
    unrevoked: set[str] = field(default_factory=set)
    """Accessors of replaced tokens whose revocation failed after a mint: kept to retry."""


MintLock = Callable[[str], ContextManager[None]]
"""Holds a user's mint lock (homelock.MINT_LOCK_FILE) for the `with` block; raises when it cannot."""


class MintLog(Protocol):
    """The write-ahead log of mints (reconcile.local.statefile.Journal)."""

    def intend(self, user: str) -> str:
        """A nonce for a mint for `user`, on disk before this returns; raises when it cannot be."""

    def settle(self, nonce: str, user: str | None = None, accessor: str | None = None,
               replaced: Iterable[str] = ()) -> None:
        """The mint is accounted for: `user`'s token is now `accessor` (replacing `replaced`, still to
        revoke), or no token exists."""

    def keep_twin(self, nonce: str, user: str) -> None:
        """A first copy of the mint of `nonce` may exist that this run cannot look for: keep looking."""


@dataclass
class VaultContext:
    vault: Vault
    """The admin client (admin runs), else a client without a token."""
    admin: bool
    write_token: TokenWriter
    outcomes: TokenOutcomes = field(default_factory=TokenOutcomes)
    mint_log: MintLog | None = None
    """Where each mint is written ahead; None only in tests of pure handlers."""
    read_token: TokenReader | None = None
    """Re-reads a user's token file under the mint lock (None: no lock, no re-read)."""
    mint_lock: MintLock | None = None
    host_client: Vault | None = None
    """The hourly run with a host token: the client that holds it (mints go through `host_role`)."""
    host_role: str = ""
    write_host_token: Callable[[Secret], None] | None = None
    """Writes this host's host token file (admin runs on a host; None elsewhere)."""

    def minting_client(self) -> Vault | None:
        """Who mints: the admin client, the host token's, or None (this run may not mint)."""
        if self.admin:
            return self.vault
        return self.host_client


class TokenFileWriteFailed(Exception):
    def __init__(self, message: str, *, revoked: bool) -> None:
        super().__init__(message)
        self.revoked = revoked
        """Whether the new token was revoked again (else it may live: its intent stays)."""


def apply_policy(change: Change, ctx: VaultContext) -> str:
    if change.action is Action.DELETE:
        ctx.vault.delete_policy(change.name)
        return "deleted"
    want = change.desired
    if isinstance(want, DesiredHost):
        ctx.vault.write_policy(want.role, want.policy_text)
        return "created" if change.action is Action.CREATE else "updated"
    assert isinstance(want, DesiredPolicy)
    ctx.vault.write_policy(want.name, want.text)
    return "created" if change.action is Action.CREATE else "updated"


def apply_policies_pipelined(changes: Sequence[Change], ctx: VaultContext) -> list[str | None]:
    """apply_policy's outcome for each policy write, sent pipelined (Vault.write_policies_pipelined);
    None for every change that is not a write or was not answered with success: apply_policy runs it.

    Policy writes set a whole text, so one sent again (after a lost answer) is harmless.
    """
    writes = [(index, change.desired) for index, change in enumerate(changes)
              if change.kind is Kind.POLICY and change.action in (Action.CREATE, Action.UPDATE)
              and isinstance(change.desired, DesiredPolicy)]
    done = ctx.vault.write_policies_pipelined([(want.name, want.text) for _, want in writes])
    outcomes: list[str | None] = [None] * len(changes)
    for (index, _), written in zip(writes, done):
        if written:
            outcomes[index] = "created" if changes[index].action is Action.CREATE else "updated"
    return outcomes


def revoke_order(change: Change, ctx: VaultContext) -> str:
    """Revoke the token a RevokeOrder names by its accessor (a person's or a host's)."""
    order = change.desired
    assert isinstance(order, RevokeOrder)
    ctx.vault.revoke_accessor(order.accessor)
    ctx.outcomes.revoked.add(order.accessor)
    return "revoked"


def apply_token(change: Change, ctx: VaultContext) -> str:
    if change.action in (Action.DELETE, Action.COLLECT):
        return revoke_order(change, ctx)
    mint = change.desired
    assert isinstance(mint, MintOrder)
    if ctx.mint_lock is None:
        return _mint(mint, ctx)
    with ctx.mint_lock(mint.token.user):
        adopted = _adoptable(mint, ctx)
        if adopted is not None:
            ctx.outcomes.minted[mint.token.user] = adopted.accessor
            return "adopted the valid token another host just wrote (shared home)"
        return _mint(mint, ctx)


def _adoptable(mint: MintOrder, ctx: VaultContext) -> TokenInfo | None:
    """The token now in the user's file, when it is one this tool minted for them with no drift and not
    one this mint replaces (a rotation replaces a token without drift).

    Read under the mint lock: where hosts share a home, another host may have
    minted and written one since this run observed the file; every host then
    uses that one token instead of minting its own (docs/design.md, "Fleet").
    """
    want = mint.token
    if ctx.read_token is None:
        return None
    try:
        raw = ctx.read_token(want.user)
    except TokenFileUnreadable:
        return None
    secret = parse_token_file(raw) if raw is not None else None
    if secret is None:
        return None
    info = ctx.vault.lookup_token(secret) if ctx.admin else ctx.vault.lookup_token_self(secret)
    if info is None or not is_minted_for(info, want.user) or token_drift(want, info) or info.accessor in mint.revoke:
        return None
    return info


def _mint(mint: MintOrder, ctx: VaultContext) -> str:
    want = mint.token
    meta = dict(want.meta)
    nonce = ctx.mint_log.intend(want.user) if ctx.mint_log is not None else None
    if nonce is not None:
        meta[NONCE_META] = nonce
    sent = ctx.vault.requests["POST"]
    try:
        if ctx.admin:
            minted = ctx.vault.create_orphan_token(policies=[want.policy], period=want.period,
                                                   display_name=want.display_name, meta=meta)
        else:
            assert ctx.host_client is not None, "a mint without an admin or host token"
            minted = ctx.host_client.create_role_token(ctx.host_role, policy=want.policy,
                                                       display_name=want.display_name, meta=meta)
    except (VaultDenied, VaultInvalid):
        if nonce is not None and ctx.mint_log is not None:
            ctx.mint_log.settle(nonce)  # refused outright: no token exists
        raise
    # Any other failure may have minted a token: the intent stays for the next run to resolve.
    # Only a file that replaces a token about to be revoked must be on disk before
    # the revocation; first mints are flushed together at the end of the run.
    try:
        _write_or_revoke(ctx, want.user, minted, durable=bool(mint.revoke))
    except TokenFileWriteFailed as exc:
        if exc.revoked and nonce is not None and ctx.mint_log is not None:
            ctx.mint_log.settle(nonce)
        raise
    if nonce is not None and ctx.mint_log is not None:
        ctx.mint_log.settle(nonce, want.user, minted.accessor, mint.revoke)
    ctx.outcomes.minted[want.user] = minted.accessor
    if nonce is not None and ctx.vault.requests["POST"] - sent > 1:
        if ctx.admin:
            _revoke_twins(ctx, nonce, minted.accessor)
        elif ctx.mint_log is not None:
            ctx.mint_log.keep_twin(nonce, want.user)
    if mint.revoke and not ctx.vault.proves(minted.token):
        # The new token is in the file but does not work: the old one stays, for the next run to see.
        ctx.outcomes.unrevoked.update(mint.revoke)
        raise VaultError("minted and written, but the new token fails its own lookup-self; the replaced "
                         "token is kept until the next run")
    failed = _revoke_replaced(mint, ctx)
    if failed is not None:
        raise VaultError(f"minted and written, but revoking the replaced token failed ({failed}); "
                         "the next admin run retries") from None
    if mint.revoke:
        return "minted, written, replaced token revoked"
    return "minted and written"


def _revoke_replaced(mint: MintOrder, ctx: VaultContext) -> VaultError | None:
    """Revoke the tokens a new one replaced: by accessor with an admin token; without one, the token that
    was in the file revokes itself (revoke-self) and any other is left for the next admin run."""
    failed: VaultError | None = None
    # plan_token puts the accessor of the token in the file first, and hands its token only then.
    own = mint.revoke[0] if mint.revoke and mint.old_token is not None else None
    for accessor in mint.revoke:
        try:
            if ctx.admin:
                ctx.vault.revoke_accessor(accessor)
            elif accessor == own and mint.old_token is not None:
                if not ctx.vault.revoke_token_self(mint.old_token):
                    raise VaultError("the replaced token refused to revoke itself (its policy predates "
                                     "revoke-self)")
            else:
                ctx.outcomes.unrevoked.add(accessor)  # only an admin can revoke it by accessor
                continue
        except VaultError as exc:
            ctx.outcomes.unrevoked.add(accessor)  # the state file keeps it; the next admin run retries
            failed = failed or exc
        else:
            ctx.outcomes.revoked.add(accessor)
    return failed


def _revoke_twins(ctx: VaultContext, nonce: str, keep: str) -> None:
    """Revoke every token but `keep` that carries this mint's nonce.

    Only for a mint that was sent more than once. During a leader election a
    standby that forwarded the mint and lost the leader's answer replies 307,
    which the retry policy counts as "not done" and sends again; but the
    leader may have committed the first one. Both carry the same nonce, and
    the intent is settled by the second, so nothing else would find the first.
    Costs one lookup per token in Vault, only on this rare path.
    """
    try:
        others = [accessor for accessor in ctx.vault.list_accessors() if accessor != keep]
        for accessor, info in scan_tokens(ctx.vault, others, decides=lambda info: info.meta.get(NONCE_META) == nonce):
            if info.meta.get(NONCE_META) == nonce:
                ctx.vault.revoke_accessor(accessor)
                ctx.outcomes.revoked.add(accessor)
    except VaultError as exc:
        raise VaultError(f"minted and written after a retried request, but the search for a first copy "
                         f"of it failed ({exc}); `apply --prune` finds it") from None


def _write_or_revoke(ctx: VaultContext, user: str, minted: MintedToken, *, durable: bool) -> None:
    """Write the new token into the user's file; when that fails, revoke it (and settle its intent)."""
    try:
        ctx.write_token(user, minted.token.reveal().encode("ascii"), durable)
    except Exception as exc:  # the file write failed: the new token must not outlive it
        detail = str(exc) or type(exc).__name__
        try:
            if ctx.admin:
                ctx.vault.revoke_accessor(minted.accessor)
            elif not ctx.vault.revoke_token_self(minted.token):
                raise VaultError("it refused to revoke itself")
        except VaultError as revoke_exc:  # its intent stays: the next admin run finds and revokes it
            raise TokenFileWriteFailed(
                f"writing the token file failed ({detail}); revoking the new token failed too: {revoke_exc}",
                revoked=False) from None
        raise TokenFileWriteFailed(f"writing the token file failed ({detail}); the new token was revoked",
                                   revoked=True) from None


def apply_renewal(change: Change, ctx: VaultContext) -> str:
    current = change.observed
    assert isinstance(current, ObservedToken) and current.token is not None
    renewed = ctx.vault.with_token(current.token).renew_self()
    return f"renewed (TTL {format_duration(renewed.ttl_seconds)})"


HANDLERS: Mapping[tuple[Kind, Action], Callable[[Change, VaultContext], str]] = MappingProxyType({
    (Kind.POLICY, Action.CREATE): apply_policy,
    (Kind.POLICY, Action.UPDATE): apply_policy,
    (Kind.POLICY, Action.DELETE): apply_policy,
    (Kind.TOKEN, Action.CREATE): apply_token,
    (Kind.TOKEN, Action.UPDATE): apply_token,
    (Kind.TOKEN, Action.DELETE): apply_token,
    (Kind.TOKEN, Action.COLLECT): apply_token,
    (Kind.TOKEN_RENEWAL, Action.UPDATE): apply_renewal,
})


# --- bookkeeping (pure) ---------------------------------------------------------------------


def next_records(records: Mapping[str, str], desired: DesiredVault, observed: ObservedVault,
                 outcomes: TokenOutcomes) -> dict[str, str]:
    """The token accessors the state file should hold after this run.

    A user's record is the accessor of the token now in their file when this
    tool minted it for them (this run or before); records of tokens revoked
    this run, gone, or not ours are dropped; any other record is kept, so an
    offboarded user's token can still be found by `apply --prune`.
    """
    result = dict(records)
    for user, want in desired.tokens.items():
        current = observed.tokens.get(user)
        if user in outcomes.minted:
            result[user] = outcomes.minted[user]
        elif (current is not None and current.state is TokenState.VALID and current.info is not None
              and is_minted_for(current.info, user) and not token_drift(want, current.info)):
            result[user] = current.info.accessor
    for user, accessor in list(result.items()):
        record = observed.recorded.get(user)
        if accessor in outcomes.revoked:
            del result[user]
        elif (record is not None and record.accessor == accessor and record.checked
              and (record.info is None or not is_ours_to_revoke(record.info, user, desired))):
            del result[user]
    return dict(sorted(result.items()))


def next_pending(pending: Iterable[str], records: Mapping[str, str], new_records: Mapping[str, str],
                 observed: ObservedVault, outcomes: TokenOutcomes) -> tuple[str, ...]:
    """The replaced tokens' accessors the state file should keep for the next admin run to revoke.

    Added: a replaced token whose revocation failed this run, and a recorded
    accessor replaced by another one unless it is known gone, not ours or
    revoked. Dropped: revoked this run, looked up and gone (or not ours), or in
    use again as a record.
    """
    result = set(pending) | outcomes.unrevoked
    for user, old in records.items():
        new = new_records.get(user)
        if new is None or new == old or old in outcomes.revoked:
            continue
        record = observed.recorded.get(user)
        if record is not None and record.checked and (record.info is None or not is_minted_for(record.info, user)):
            continue
        result.add(old)
    kept = []
    in_use = set(new_records.values()) | ({observed.host_token_accessor} if observed.host_token_accessor else set())
    for accessor in sorted(result):
        seen = observed.pending.get(accessor)
        if accessor in outcomes.revoked or accessor in in_use:
            continue
        if seen is not None and seen.checked and (seen.info is None or (minted_for_whom(seen.info) is None
                                                                     and not is_host_token(seen.info))):
            continue
        kept.append(accessor)
    return tuple(kept)
