"""Pure composition of the domains: (desired, observed, prune) -> Plan.

No I/O here: each domain's pure planner is called on values already read,
and the changes are concatenated into one immutable, apply-ordered Plan
(model.sort_for_apply: what the executor needs). How it is shown to people,
grouped by person, is model.sort_for_display, applied by reconcile.commands.render.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from reconcile.local import plan as local_plan
from reconcile.common.model import Action, Change, Kind, Plan, is_pending, sort_for_apply
from reconcile.vault.desired import DesiredVault
from reconcile.vault.hosts import DesiredHost, ObservedHosts, plan_hosts
from reconcile.vault.observe import ObservedVault, TokenState
from reconcile.vault.plan import plan_vault


@dataclass(frozen=True)
class Desired:
    vault: DesiredVault
    local: Any = None
    """local.desired.DesiredLocal, or None when the local domain is not planned."""
    hosts: Mapping[str, DesiredHost] | None = None
    """By host name, the identities this run keeps (vault.hosts); None: none is planned."""
    this_host: str | None = None
    """The host whose host token this run keeps (None: `--vault-only`)."""


@dataclass(frozen=True)
class Observed:
    vault: ObservedVault
    local: Any = None
    """local.observe.ObservedLocal, or None when the local domain is not planned."""
    hosts: ObservedHosts | None = None


def make_plan(desired: Desired, observed: Observed, *, prune: bool) -> Plan:
    changes: list[Change] = list(plan_vault(desired.vault, observed.vault, prune=prune))
    if desired.hosts is not None and observed.hosts is not None:
        changes.extend(plan_hosts(desired.hosts, observed.hosts, this_host=desired.this_host))
    if desired.local is not None and observed.local is not None:
        # A timer waits for its person's token file, unless this run mints the token (admin mode).
        minting = {c.user for c in changes if c.kind is Kind.TOKEN and c.user is not None
                   and c.action in (Action.CREATE, Action.UPDATE) and (observed.vault.admin or not c.needs_admin)}
        # The token files are read again by the Vault observation, after the local one: in a shared
        # home another host may have written the file in between. A live token found there counts.
        minting |= {user for user, token in observed.vault.tokens.items() if token.state is TokenState.VALID}
        changes.extend(local_plan.plan_local(desired.local, observed.local, prune=prune, minting=minting))
    return sort_for_apply(changes)


def pending(plan: Plan) -> Plan:
    return tuple(change for change in plan if is_pending(change))


def has_pending(plan: Plan) -> bool:
    return any(is_pending(change) for change in plan)


def counts(plan: Plan) -> tuple[int, int, int]:
    """(to add, to change, to remove) among the pending changes."""
    add = sum(1 for c in plan if c.action is Action.CREATE)
    change = sum(1 for c in plan if c.action is Action.UPDATE)
    remove = sum(1 for c in plan if c.action in (Action.DELETE, Action.COLLECT))
    return add, change, remove
