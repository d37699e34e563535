"""`plan --vault-only` and `apply --vault-only`: Vault alone, for the whole roster, from anywhere.

An admin (a person or CI with an admin token) reconciles the policies of every
roster person and the identity of every enrolled host (its token role and host
policy, reconcile.vault.hosts): nothing local is read or changed, no `--root`,
no apply lock, no state file; no person's token is minted here (the hosts'
hourly runs do that with their host tokens). The same planner and the same
executor as every other run; the session has the surface the commands use.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Callable

from reconcile.common.model import Plan, UserProblem
from reconcile.engine.connect import CommandFailed, connect_vault, vault_failure
from reconcile.engine.executor import ExecContext, Result, execute, lost_to_vault
from reconcile.engine.hostmode import host_identity
from reconcile.engine.planner import Desired, Observed, make_plan
from reconcile.roster.loader import load_roster
from reconcile.roster.values import Roster
from reconcile.vault.apply import VaultContext
from reconcile.vault.client import Vault
from reconcile.vault.desired import desired_vault
from reconcile.vault.observe import observe_vault
from reconcile.vault.values import VaultError

Report = Callable[[Result], None]
Notice = Callable[[str, str], None]


def _no_token_file(user: str, data: bytes, durable: bool) -> None:
    raise VaultError("a --vault-only run writes no token file")


@dataclass
class VaultOnlySession:
    roster: Roster
    roster_path: str
    vault: Vault
    desired: Desired
    observed: Observed
    plan: Plan
    admin: bool = True
    problems: tuple[UserProblem, ...] = ()
    scan_warning: str | None = None
    intents_warning: str | None = None
    root: Path = Path("/")

    @classmethod
    def open(cls, roster_path: str, *, prune: bool = False) -> VaultOnlySession:
        roster = load_roster(roster_path)
        vault, no_admin_reason = connect_vault(roster)
        if no_admin_reason is not None:
            raise CommandFailed(f"--vault-only needs an admin token ({no_admin_reason}): it writes policies and "
                                "token roles")
        d_vault = replace(desired_vault(roster, ""), tokens=MappingProxyType({}), here=frozenset())
        try:
            o_vault = observe_vault(vault, d_vault, admin=True, records={}, read_token=lambda user: None,
                                    token_users=[])
            identity = host_identity(roster, vault, "", None, o_vault.policies or {})
        except VaultError as exc:
            raise CommandFailed(vault_failure(exc, vault.address)) from None
        assert identity is not None
        desired = Desired(vault=d_vault, hosts=identity.desired, this_host=None)
        observed = Observed(vault=o_vault, hosts=identity.observed)
        return cls(roster=roster, roster_path=roster_path, vault=vault, desired=desired, observed=observed,
                   plan=make_plan(desired, observed, prune=prune))

    def close(self) -> None:
        pass

    def apply(self, *, report: Report, skipped: Notice, error: Notice) -> tuple[Result, ...]:
        ctx = ExecContext(vault=VaultContext(vault=self.vault, admin=True, write_token=_no_token_file), local=None)
        results = execute(self.plan, ctx, report=report)
        lost = lost_to_vault(results) if self.vault.unreachable else ()
        if lost:
            error("vault", f"{len(lost)} Vault change(s) not made: {self.vault.unreachable}")
        return results
