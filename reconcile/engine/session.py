"""The apply session: one `plan` or `apply` run, and every resource it holds.

`ApplySession.open` loads the roster, reaches Vault and decides the mode
(reconcile.engine.connect), takes the apply lock (apply only), reads the world
(the state file, the user database, the homes, systemd, then Vault) and plans
purely. Dry-run lives at one seam: `plan` prints `session.plan`; `apply` calls
`session.apply`, which hands it to the one executor. The commands
(reconcile.commands) only parse, call and print; they never reach below this.

Nothing local is changed before the plan is complete, so an unreachable Vault
or a rejected admin token ends the run (CommandFailed) with nothing changed.

The session owns, for the length of the run: the Vault client (whose retry
policy holds the run's deadline), the apply lock (`<root>/var/lib/claude-auth/
lock`, see reconcile.local.statefile; taken just after Vault answered, held
until `close`), the mint journal (statefile.Journal: every mint written ahead),
the person's mint locks and the one allowance for waiting on them
(homelock.LockAllowance), the token reader and writer (reconcile.engine.homes),
and the clean-up of temporary files a killed run left. Another apply meanwhile
ends at once with one ERROR line, exit 1. `plan` takes no lock.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Callable

from reconcile.common import atomicfile
from reconcile.common.model import Plan, UserProblem
from reconcile.engine import homes
from reconcile.engine.connect import CommandFailed, connect_vault, vault_failure
from reconcile.engine.executor import ExecContext, Result, execute, finish, lost_to_vault
from reconcile.engine.planner import Desired, Observed, make_plan
from reconcile.local import apply as local_apply
from reconcile.local import desired as local_desired
from reconcile.local import observe as local_observe
from reconcile.local import statefile
from reconcile.local.accounts import Account, UserDatabaseUnreadable, lookup_accounts
from reconcile.local.homefs import CONFIG_DIR, TOKEN_FILE, HomeFsError, inspect, remove_stale_temps
from reconcile.local.homelock import LockAllowance, LockHeld
from reconcile.local.systemd import SystemdError
from reconcile.roster.fleet import this_host
from reconcile.roster.loader import load_roster
from reconcile.roster.values import Roster
from reconcile.vault.apply import MintLock, VaultContext, next_pending, next_records
from reconcile.vault.client import Vault
from reconcile.vault.desired import desired_vault
from reconcile.vault.observe import observe_vault
from reconcile.vault.plan import mint_users
from reconcile.vault.hosts import role_name
from reconcile.vault.values import Secret, VaultError
from reconcile.engine.hostfile import host_token_path, write_host_token
from reconcile.engine.hostmode import grants, host_identity, observe_host_token

Report = Callable[[Result], None]
"""Called with each change's result as it is made (in Kind order)."""
Notice = Callable[[str, str], None]
"""Called with (who, text): a person whose row is skipped, or where an error happened ("vault", "state")."""


@dataclass
class ApplySession:
    roster: Roster
    roster_path: str
    root: Path
    admin: bool
    vault: Vault
    """Holds the admin token in admin mode, no token otherwise."""
    accounts: dict[str, Account]
    problems: list[UserProblem]
    records: dict[str, str]
    desired: Desired
    observed: Observed
    plan: Plan
    pending_revoke: tuple[str, ...] = ()
    """Accessors of replaced tokens the state file says are still to revoke."""
    state: statefile.State = statefile.State()
    """The state file as read (intents included)."""
    lock: statefile.ApplyLock | None = None
    """The apply lock (apply only), held until the run ends."""
    allowance: LockAllowance = field(default_factory=LockAllowance)
    """What the whole run may still wait on locks in homes."""
    host_client: Vault | None = None
    """The hourly run with this host's host token: the client holding it (it mints); else None."""

    # --- opening: load, reach Vault, read the world, plan ------------------------------------

    @classmethod
    def open(cls, roster_path: str, root: Path, *, prune: bool = False, lock: bool = False) -> ApplySession:
        """Load, reach Vault, read the world and plan. With `lock` (apply), the apply lock is taken once
        Vault answered (so a Vault failure changes nothing) and before anything is read; the session
        holds it until `close`. Raises RosterInvalid or CommandFailed, with nothing changed."""
        roster = load_roster(roster_path)
        vault, no_admin_reason = connect_vault(roster)
        held = _take_lock(root) if lock else None
        try:
            return cls._read_and_plan(roster_path, roster, root, vault, no_admin_reason, held, prune=prune)
        except BaseException:
            if held is not None:
                held.release()
            raise

    @classmethod
    def _read_and_plan(cls, roster_path: str, roster: Roster, root: Path, vault: Vault,
                       no_admin_reason: str | None, held: statefile.ApplyLock | None, *,
                       prune: bool) -> ApplySession:
        admin = no_admin_reason is None
        try:
            state = statefile.read_state(root)
        except statefile.StateFileError as exc:
            raise CommandFailed(str(exc)) from None
        records = state.records
        host = this_host()
        # Policies are fleet-wide (every roster user); tokens, homes and timers only for users assigned here.
        local_roster = roster.for_host(host)
        # Accounts matter for users with claude_auth (their home holds the token file and folders).
        home_users = [name for name, user in local_roster.users.items() if user.claude_auth]
        try:
            found = lookup_accounts(root, home_users)
        except UserDatabaseUnreadable as exc:
            raise CommandFailed(str(exc)) from None
        d_local = local_desired.desired_local(local_roster, local_desired.default_exec_path(), roster_path,
                                              local_desired.homes_of(found))
        d_vault = desired_vault(roster, host)
        # Local first, then Vault, one after the other. Overlapping them in two threads
        # cost more than it saved: the CPU-bound local walk held the GIL while every
        # Vault lookup waited for it after each socket call (the convoy effect; at
        # 10,000 people a no-op plan took 16-28 s overlapped against 14-24 s in turn,
        # issue 14). Token files are read without following links whatever the local
        # verdict; a user with a local problem gets no token work.
        found_accounts = {name: value for name, value in found.items() if isinstance(value, Account)}
        try:
            o_local = local_observe.observe_local(root, d_local, found)
        except SystemdError as exc:
            raise CommandFailed(f"systemd: {exc}") from None
        except UserDatabaseUnreadable as exc:
            raise CommandFailed(str(exc)) from None
        except (OSError, ValueError) as exc:
            raise CommandFailed(_local_failure(exc)) from None
        try:
            o_vault = observe_vault(vault, d_vault, admin=admin, records=records,
                                    read_token=homes.token_reader(found_accounts),
                                    token_users=[user for user in d_vault.tokens if user in found_accounts],
                                    pending_revoke=state.pending_revoke, intents=state.intents,
                                    collect_garbage=prune)
            # After the people's lookups, which go first and pipelined: this host's own host token.
            host_token, host_client = observe_host_token(vault, root, admin=admin)
        except VaultError as exc:
            raise CommandFailed(vault_failure(exc, vault.address)) from None
        if no_admin_reason is not None:
            with_host = (f"; minting with this host's host token ({host_token_path(root)})"
                         if host_client is not None else "")
            print(f"NOTE: running without an admin token ({no_admin_reason}){with_host}: policies are not "
                  "checked; changes that need an admin are left for the admin run", file=sys.stderr)
        problems: list[UserProblem] = [v for v in found.values() if isinstance(v, UserProblem)]
        problems.extend(o_local.problems)
        problems.extend(o_vault.problems)
        accounts = {name: value for name, value in found_accounts.items() if name in o_local.accounts}
        o_vault = replace(o_vault, tokens=MappingProxyType(
            {user: token for user, token in o_vault.tokens.items() if user in accounts}))

        try:
            identity = host_identity(roster, vault, host, host_token, o_vault.policies if admin else None)
        except VaultError as exc:
            raise CommandFailed(vault_failure(exc, vault.address)) from None
        if host_token.info is not None:
            o_vault = replace(o_vault, host_token_accessor=host_token.info.accessor)
        desired = Desired(vault=d_vault, local=d_local, hosts=identity.desired if identity else None,
                          this_host=host)
        observed = Observed(vault=o_vault, local=o_local, hosts=identity.observed if identity else None)
        plan = make_plan(desired, observed, prune=prune)
        wanted = mint_users(plan) if host_client is not None else []
        if host_client is not None and wanted:
            # The second look (hourly run with a host token): may it mint for these people?
            try:
                granted = grants(host_client, roster, d_vault, host, wanted)
            except VaultError as exc:
                raise CommandFailed(vault_failure(exc, vault.address)) from None
            observed = replace(observed, vault=replace(o_vault, host_grants=MappingProxyType(granted)))
            plan = make_plan(desired, observed, prune=prune)
        return cls(roster=roster, roster_path=roster_path, root=root, admin=admin, vault=vault,
                   accounts=accounts, problems=_dedupe(problems), records=records,
                   desired=desired, observed=observed, plan=plan,
                   pending_revoke=state.pending_revoke, state=state, lock=held, host_client=host_client)

    def close(self) -> None:
        """Release the apply lock (apply only)."""
        if self.lock is not None:
            self.lock.release()

    @property
    def scan_warning(self) -> str | None:
        """The token scan cut short (its intents stay for the next admin run), or None."""
        return self.observed.vault.scan_warning

    @property
    def intents_warning(self) -> str | None:
        """The hourly run with a host token: interrupted mints it cannot look for (it may not list tokens)."""
        if self.admin or self.host_client is None:
            return None
        left = {nonce: user for nonce, user in self.state.intents.items()
                if nonce not in self.observed.vault.resolved_intents}
        if not left:
            return None
        users = ", ".join(sorted(set(left.values())))
        return (f"{len(left)} token(s) that interrupted runs may have minted ({users}) are not accounted for: "
                "the host token cannot look for them; an admin `claude-auth apply` on this host revokes them")

    # --- applying --------------------------------------------------------------------------

    def apply(self, *, report: Report, skipped: Notice, error: Notice) -> tuple[Result, ...] | None:
        """Carry the plan out; then record every token minted, and keep the metrics textfile fresh.

        `report` gets each result as it is made; `skipped` each person whose row is skipped this run
        (their mint lock is held) before anything is changed; `error` each error of the run as a whole
        (`vault`: changes not made once Vault was gone; `systemd`; `state`; `metrics`). Returns the
        results, or None when no intent could be written ahead (then nothing was changed)."""
        journal = statefile.Journal(self.root, self.state)
        lock = self.mint_lock()
        vault_ctx = VaultContext(vault=self.vault, admin=self.admin,
                                 write_token=homes.token_writer(self.accounts), mint_log=journal,
                                 read_token=homes.token_reader(self.accounts), mint_lock=lock,
                                 host_client=self.host_client,
                                 host_role=role_name(self.roster.vault.policy_prefix.lower(),
                                                     self.desired.this_host or ""),
                                 write_host_token=self._host_token_writer() if self.admin else None)
        held = self.remove_stale_temps(lock)
        for user, why in sorted(held.items()):  # every holder is told, whether or not their row had changes
            skipped(user, why)
        if self.admin or self.host_client is not None:
            try:
                journal.prepare(mint_users(self.plan))
            except statefile.StateFileError as exc:  # no intent on disk: no mint may be asked for
                error("state", str(exc))
                return None
        ctx = ExecContext(vault=vault_ctx, local=local_apply.LocalContext.create(self.root, self.accounts),
                          skipped=held)
        results: tuple[Result, ...] = ()
        try:
            results = execute(self.plan, ctx, report=report)
            lost = lost_to_vault(results) if self.vault.unreachable else ()
            if lost:
                names = sorted({r.change.name for r in lost})
                shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                error("vault", f"{len(lost)} Vault change(s) not made ({shown}): {self.vault.unreachable}")
            finish_error = finish(results, ctx)
            if finish_error:
                error("systemd", finish_error)
        finally:
            if any(result.ok for result in results) or vault_ctx.outcomes.minted:
                os.sync()  # unit files and first-mint token files were written without their own fsync
            # Even after an unexpected error: remember every token minted so far.
            observed = self.observed.vault
            records = next_records(self.records, self.desired.vault, observed, vault_ctx.outcomes)
            strays = tuple(accessor for accessor, seen in observed.pending.items() if seen.interrupted)
            pending = next_pending(self.pending_revoke + strays, self.records, records, observed,
                                   vault_ctx.outcomes)
            intents = {nonce: user for nonce, user in journal.outstanding().items()
                       if nonce not in observed.resolved_intents}
            try:
                journal.replace_all(statefile.State(records, pending, intents))
            except statefile.StateFileError as exc:
                error("state", str(exc))
        textfile = self.roster.status.prometheus_textfile
        if textfile:
            # The hourly run keeps the node_exporter metrics fresh (roster: status.prometheus_textfile).
            from reconcile.engine.hoststatus import host_token_status
            from reconcile.engine.status import gather, write_prometheus  # only runs that write them pay
            try:
                write_prometheus(textfile, gather(self.roster, self.roster_path, self.root, self.vault,
                                                  admin=self.admin),
                                 host_token_status(self.root, this_host(), self.vault, admin=self.admin))
            except OSError as exc:
                error("metrics", f"cannot write {textfile}: {exc.strerror}")
        return results

    def _host_token_writer(self) -> Callable[[Secret], None]:
        root = self.root
        return lambda token: write_host_token(root, token)

    def mint_lock(self) -> MintLock:
        """Each person's mint lock, waited for out of this run's one allowance."""
        return homes.mint_lock(self.accounts, self.allowance)

    def remove_stale_temps(self, hold: MintLock) -> dict[str, str]:
        """Temporary files of this tool's own naming that a killed run left: a token file's may hold a live
        token. Only apply removes them, holding the apply lock, so no run of ours is writing one now; in a
        home that other hosts share, another host's apply may be, so a token file's temporaries are removed
        under the person's mint lock, which every token-file write holds (skipped when it cannot be had).

        Returns the people whose mint lock is held beyond the run's allowance, with why: the rest of
        their row is skipped this run (they hold it, or another host does for longer than any mint)."""
        held: dict[str, str] = {}
        for user, account in self.accounts.items():
            try:
                if inspect(account, CONFIG_DIR).kind != "directory":
                    continue  # no token file yet, so no temporary one either
                with hold(user):
                    remove_stale_temps(account, TOKEN_FILE)
            except LockHeld as exc:
                held[user] = str(exc)
            except HomeFsError:
                continue  # the next run tries again
        unit_dir = self.root / local_desired.UNIT_DIR
        targets = [unit_dir / unit.name for unit in self.desired.local.units]
        targets += [unit_dir / name for name in self.observed.local.stray_drop_ins]
        targets.append(statefile.state_path(self.root))
        targets.append(host_token_path(self.root))  # a killed enrollment's temporary holds a (revoked) token
        atomicfile.remove_stale_temps(targets)
        return held


def _take_lock(root: Path) -> statefile.ApplyLock:
    try:
        return statefile.apply_lock(root)
    except (statefile.LockHeld, statefile.StateFileError) as exc:
        raise CommandFailed(str(exc)) from None


def _dedupe(problems: list[UserProblem]) -> list[UserProblem]:
    seen: dict[tuple[str, str], UserProblem] = {}
    for problem in problems:
        seen.setdefault((problem.user, problem.message), problem)
    return sorted(seen.values(), key=lambda p: (p.user, p.message))


def _local_failure(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        return f"local state: {reason}: {exc.filename}" if exc.filename else f"local state: {reason}"
    return f"local state: {exc}" if str(exc) else f"local state: {type(exc).__name__}"
