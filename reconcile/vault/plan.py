"""The Vault plan, pure: (desired, observed) -> changes, each with a reason for people.

The executor never reads the reason. A replaced token that may still live (its
revocation failed after a mint, or a recorded accessor was replaced by another)
is kept in the state file's `pending_revoke` list; every admin run looks each
one up and plans `- token <name>: replaced token still alive; revoke` until it
is revoked or gone (`plan_pending`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

from reconcile.roster.durations import format_duration
from reconcile.common.identity import token_display_name
from reconcile.common.model import Action, Change, Kind
from reconcile.vault.values import Secret, TokenInfo
from reconcile.vault.desired import (DesiredToken, DesiredVault, is_minted_for, is_minted_here,
                                     is_host_token, is_ours_to_revoke, is_tool_policy, minted_for_whom)
from reconcile.vault.observe import ObservedToken, ObservedVault, RecordedToken, TokenState
from reconcile.vault.observe import in_use


@dataclass(frozen=True)
class MintOrder:
    """What the executor needs to (re-)mint one user's token."""

    token: DesiredToken
    revoke: tuple[str, ...]
    """Accessors to revoke once the new token is in the file: only tokens minted for this user."""
    old_token: Secret | None = field(default=None, compare=False, repr=False)
    """The token now in the file, when it is one of `revoke`: without an admin token it revokes itself."""


@dataclass(frozen=True)
class RevokeOrder:
    user: str
    accessor: str


def token_drift(want: DesiredToken, info: TokenInfo) -> list[str]:
    """Why a live token is not the desired one (empty: it is)."""
    reasons = []
    if not info.orphan:
        reasons.append("not an orphan token")
    if info.policies != (want.policy,):
        reasons.append(f"policies are [{', '.join(info.policies)}], want [{want.policy}]")
    if info.display_name.lower() != want.vault_display_name.lower():
        reasons.append(f"display name is {info.display_name or '(none)'}, want {want.vault_display_name}")
    role_period = (info.period_seconds == 0 and bool(want.role_prefix)
                   and info.role.startswith(want.role_prefix))  # periodic through a host's role
    if info.period_seconds != want.period_seconds and not role_period:
        have = format_duration(info.period_seconds) if info.period_seconds else "none"
        reasons.append(f"period is {have}, want {format_duration(want.period_seconds)}")
    return reasons


def needs_renewal(want: DesiredToken, info: TokenInfo) -> bool:
    return info.ttl_seconds * 2 < want.period_seconds


def _replaced_accessors(user: str, current: ObservedToken, record: RecordedToken | None) -> tuple[str, ...]:
    accessors: list[str] = []
    if current.state is TokenState.VALID and current.info is not None and is_minted_for(current.info, user):
        accessors.append(current.info.accessor)
    if (record is not None and record.checked and record.info is not None
            and is_minted_for(record.info, user) and record.accessor not in accessors):
        accessors.append(record.accessor)
    return tuple(accessors)


def _token_problem(current: ObservedToken) -> str:
    return {
        TokenState.NO_FILE: "token file is missing",
        TokenState.UNREADABLE: f"token file is unreadable ({current.detail})",
        TokenState.DEAD: "token is expired, revoked or unknown",
        TokenState.REFUSED: "token refused its own lookup-self (expired, revoked, or its policy changed)",
    }.get(current.state, "token differs")


def _superseded_record(want: DesiredToken, current: ObservedToken, record: RecordedToken | None,
                       host: str) -> str | None:
    """The recorded accessor a valid, wanted token in the file has replaced, when it still lives and
    this host minted it for the user; else None.

    A re-mint killed after writing the new token but before its record leaves
    the old one recorded: revoking it in the same run the file is found good
    lets that run converge, instead of moving it to `pending_revoke` first.
    """
    if record is None or not record.checked or record.info is None or current.info is None:
        return None
    if record.accessor == current.info.accessor:
        return None
    if not (is_minted_for(record.info, want.user) and is_minted_here(record.info, host)):
        return None
    return record.accessor


def token_age(want: DesiredToken, info: TokenInfo, now: float) -> int | None:
    """The token's age when it is older than the roster's token_max_age (it is rotated), else None."""
    if not want.max_age_seconds or not info.creation_time or not now:
        return None
    age = int(now) - info.creation_time
    return age if age > want.max_age_seconds else None


def plan_token(want: DesiredToken, current: ObservedToken, record: RecordedToken | None,
               host: str = "", now: float = 0.0) -> list[Change]:
    """The changes that bring one user's token to the desired state: at most one for the token
    itself, and the revocation of a superseded record (`_superseded_record`). `now` (seconds since
    the epoch, when Vault was read) decides rotation (`token_age`)."""
    replaced = _replaced_accessors(want.user, current, record)
    own = current.token if current.info is not None and current.info.accessor in replaced else None
    mint = MintOrder(token=want, revoke=replaced, old_token=own)
    if current.state is TokenState.VALID and current.info is not None:
        drift = token_drift(want, current.info)
        if drift:
            return [Change(Action.UPDATE, Kind.TOKEN, want.display_name, "; ".join(drift) + "; re-mint",
                           user=want.user, needs_admin=True, desired=mint, observed=current)]
        age = token_age(want, current.info, now)
        if age is not None:
            reason = (f"token is {format_duration(age)} old, older than token_max_age "
                      f"{format_duration(want.max_age_seconds)}; rotate")
            return [Change(Action.UPDATE, Kind.TOKEN, want.display_name, reason, user=want.user,
                           needs_admin=True, desired=mint, observed=current)]
        changes: list[Change] = []
        superseded = _superseded_record(want, current, record, host)
        if superseded is not None:
            changes.append(Change(Action.DELETE, Kind.TOKEN, want.display_name, PENDING_REASON,
                                  user=want.user, needs_admin=True, desired=RevokeOrder(want.user, superseded)))
        if needs_renewal(want, current.info):
            reason = (f"TTL {format_duration(current.info.ttl_seconds)} is below half the period "
                      f"({format_duration(want.period_seconds)}); renew")
            changes.append(Change(Action.UPDATE, Kind.TOKEN_RENEWAL, want.display_name, reason,
                                  user=want.user, needs_admin=False, desired=want, observed=current))
        return changes
    record_gone = record is None or (record.checked and record.info is None)
    if current.state is TokenState.NO_FILE and record_gone:
        return [Change(Action.CREATE, Kind.TOKEN, want.display_name, "no token yet; mint",
                       user=want.user, needs_admin=True, desired=mint, observed=current)]
    return [Change(Action.UPDATE, Kind.TOKEN, want.display_name, _token_problem(current) + "; re-mint",
                   user=want.user, needs_admin=True, desired=mint, observed=current)]


def plan_policies(desired: DesiredVault, policies: Mapping[str, str], *, prune: bool) -> list[Change]:
    """Create or update each user's policy; this tool's policies of users not in the roster are orphaned.

    A policy under the prefix named for a roster user is brought to the template
    whoever wrote it; one for anybody else is orphaned only when this tool wrote
    it (`is_tool_policy`), so a hand-made policy under the prefix is never deleted.
    """
    changes: list[Change] = []
    for name, want in desired.policies.items():
        have = policies.get(name)
        if have is None:
            changes.append(Change(Action.CREATE, Kind.POLICY, name, f"no policy yet for user {want.user}",
                                  user=want.user, needs_admin=True, desired=want, after_text=want.text))
        elif have != want.text:
            changes.append(Change(Action.UPDATE, Kind.POLICY, name, "text differs from the template",
                                  user=want.user, needs_admin=True, desired=want,
                                  before_text=have, after_text=want.text))
    managed = {name for name, text in policies.items() if is_tool_policy(name, text, desired.policy_prefix)}
    for name in sorted(managed - set(desired.policies)):
        user = name[len(desired.policy_prefix):]
        changes.append(_orphan(Kind.POLICY, name, user, prune, desired.users,
                               payload=name, before_text=policies[name]))
    return changes


def plan_tokens(desired: DesiredVault, observed: ObservedVault, *, prune: bool) -> list[Change]:
    """Mint, re-mint or renew each user's token; revoke recorded tokens no longer wanted."""
    changes: list[Change] = []
    for user, want in desired.tokens.items():
        current = observed.tokens.get(user)
        if current is not None and current.state is not TokenState.FAILED:  # else: a problem, reported
            planned = plan_token(want, current, observed.recorded.get(user), desired.host, observed.observed_at)
            changes.extend(_granted(change, observed.host_grants) for change in planned)
    for user, record in observed.recorded.items():
        if user in desired.tokens:
            continue
        if record.checked and (record.info is None or not is_ours_to_revoke(record.info, user, desired)):
            continue  # already gone, or not ours: bookkeeping forgets it
        changes.append(_orphan(Kind.TOKEN, token_display_name(user), user, prune, desired.users,
                               payload=RevokeOrder(user, record.accessor), host=desired.host,
                               here=desired.is_here(user)))
    return changes


def _granted(change: Change, grants: Mapping[str, str | None] | None) -> Change:
    """A mint the host token may make (the hourly run with a host token) needs no admin; one it may not
    says why, and who fixes it (reconcile.vault.hosts.host_grants)."""
    if grants is None or not isinstance(change.desired, MintOrder) or change.user is None \
            or change.user not in grants:
        return change
    why = grants[change.user]
    if why is None:
        return replace(change, needs_admin=False)
    return replace(change, reason=f"{change.reason} ({why})")


PENDING_REASON = "replaced token still alive; revoke"
INTERRUPTED_REASON = "minted by an interrupted run and in nobody's file; revoke"


def _stray_host_token(info: TokenInfo, host: str) -> bool:
    """A host token this tool minted for this host (in the pending list: not the one in the file)."""
    return bool(host) and is_host_token(info) and info.meta.get("host") == host


def plan_pending(observed: ObservedVault, host: str = "") -> list[Change]:
    """Revoke each replaced token the state file remembers that still lives and that this tool minted.

    Only the admin lookup tells whether it lives: without one nothing is planned
    and the accessors stay in the state file for the next admin run.
    """
    changes: list[Change] = []
    referenced = in_use(observed)
    for accessor, pending in sorted(observed.pending.items()):
        if not pending.checked or pending.info is None or accessor in referenced:
            continue
        user = minted_for_whom(pending.info)
        if user is None and _stray_host_token(pending.info, host):
            changes.append(Change(Action.DELETE, Kind.HOST_TOKEN, f"claude-auth-host-{host}", INTERRUPTED_REASON,
                                  needs_admin=True, desired=RevokeOrder("", accessor)))
            continue
        if user is None:
            continue  # not ours: never revoked, bookkeeping forgets it
        current = observed.tokens.get(user)
        if current is not None and current.state is TokenState.FAILED:
            continue  # the user's file could not be checked: it might hold this very token
        reason = INTERRUPTED_REASON if pending.interrupted else PENDING_REASON
        changes.append(Change(Action.DELETE, Kind.TOKEN, token_display_name(user), reason,
                              user=user, needs_admin=True, desired=RevokeOrder(user, accessor)))
    return changes


GARBAGE_REASON = "minted here, referenced by nothing; revoked by apply --prune"
ACCESSOR_SHOWN = 8
"""Characters of a garbage token's accessor shown in its change name (never the token itself)."""


def garbage_name(accessor: str, user: str, host: str) -> str:
    """`<accessor prefix>… (user alice, host h1)`: enough to find the token with the root token."""
    return f"{accessor[:ACCESSOR_SHOWN]}… (user {user}, host {host})"


def plan_garbage(desired: DesiredVault, observed: ObservedVault) -> list[Change]:
    """One `!` change (Action.COLLECT) per token of `observed.garbage` (see observe_garbage).

    Garbage is observed only in `--prune` runs, so the `apply --prune` that
    lists it also revokes it; the plain and hourly runs never see it.
    """
    changes: list[Change] = []
    for accessor, info in sorted(observed.garbage.items()):
        user = minted_for_whom(info)
        if user is None:
            continue
        changes.append(Change(Action.COLLECT, Kind.TOKEN, garbage_name(accessor, user, desired.host),
                              GARBAGE_REASON, user=user, needs_admin=True, desired=RevokeOrder(user, accessor)))
    return changes


def plan_vault(desired: DesiredVault, observed: ObservedVault, *, prune: bool) -> list[Change]:
    """Every Vault change, unsorted. Orphans become deletions only with `prune`.

    Without an admin token the policies are unknown (None) and not planned.
    """
    changes: list[Change] = []
    if observed.policies is not None:
        changes.extend(plan_policies(desired, observed.policies, prune=prune))
    changes.extend(plan_tokens(desired, observed, prune=prune))
    changes.extend(plan_pending(observed, desired.host))
    changes.extend(plan_garbage(desired, observed))
    return changes


def _orphan(kind: Kind, name: str, user: str, prune: bool, roster_users: frozenset[str], *,
            payload: object, before_text: str | None = None, host: str = "", here: bool = True) -> Change:
    what = "policy" if kind is Kind.POLICY else "token"
    if user in roster_users and not here:  # the roster's `hosts` leaves this host out: as if removed here
        if prune:
            return Change(Action.DELETE, kind, name, f"user {user} is not assigned to host {host}; revoke",
                          user=user, needs_admin=True, desired=payload, before_text=before_text)
        return Change(Action.ORPHANED, kind, name,
                      f"user {user} is not assigned to host {host} (apply --prune revokes the {what})",
                      user=user, needs_admin=True, desired=payload, before_text=before_text)
    if user in roster_users:  # a token of a user whose claude_auth is false
        return Change(Action.DELETE, kind, name, f"claude_auth is false for user {user}; revoke",
                      user=user, needs_admin=True, desired=payload, before_text=before_text)
    if prune:
        verb = "delete" if kind is Kind.POLICY else "revoke"
        return Change(Action.DELETE, kind, name, f"user {user} is not in the roster; {verb}",
                      user=user, needs_admin=True, desired=payload, before_text=before_text)
    return Change(Action.ORPHANED, kind, name,
                  f"user {user} is not in the roster (apply --prune removes the {what})",
                  user=user, needs_admin=True, desired=payload, before_text=before_text)


def mint_users(plan: Iterable[Change]) -> list[str]:
    """The users the plan mints a token for (each mint's intent is written ahead: statefile.Journal)."""
    return [change.desired.token.user for change in plan
            if change.kind is Kind.TOKEN and isinstance(change.desired, MintOrder)
            and change.action is not Action.ORPHANED]
