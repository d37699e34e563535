"""`claude-auth plan` and `claude-auth apply`.

Both build the same plan the same way: load the roster, reach Vault and decide
the mode (admin or hourly), read the world (Vault, the state file, the user
database, the homes, systemd), then plan purely. Dry-run lives at one seam:
`plan` prints that plan; `apply` hands it to the one executor.

Nothing local is changed before the plan is complete, so an unreachable
Vault or a rejected admin token ends the run with one line naming VAULT_ADDR,
exit 1, and nothing changed.

Modes. An admin token (a token from $VAULT_TOKEN, else ~/.vault-token, that
may write ACL policies under the prefix and create orphan tokens with other
policies: create/update on `sys/policies/acl/<prefix>...`, update and sudo on
`auth/token/create-orphan`, or root) enables everything; one
`sys/capabilities-self` request tells. A token that is present but rejected,
or valid but without those capabilities, ends the run (one line naming
VAULT_ADDR and what it lacks, exit 1, nothing changed): a wrong token must not
pass for a successful provisioning run. The hourly mode is only for a run
with CLAUDE_AUTH_NO_ADMIN=1 (the hourly timer sets it) or with no token at
all: tokens are checked with their own lookup-self, renewals and local work
are done, and each change that needs an admin is printed as a
`WARN <user>: needs an admin run: ...` line on stderr; apply exits 0 and plan
lists those changes (exit 2). Policies cannot be read without an admin token
and are then not checked.

`apply` holds the apply lock (`<root>/var/lib/claude-auth/lock`, see
reconcile.local.statefile) from just after Vault is reached until it ends; another
apply meanwhile ends at once with one ERROR line, exit 1. `plan` takes none.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, replace
from types import MappingProxyType
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator

from reconcile import render
from reconcile.local import statefile
from reconcile.local import apply as local_apply
from reconcile.local import desired as local_desired
from reconcile.local import observe as local_observe
from reconcile.common import atomicfile
from reconcile.local.accounts import Account, UserDatabaseUnreadable, lookup_accounts
from reconcile.executor import ExecContext, Result, execute, failures, finish, lost_to_vault
from reconcile.common.exitcodes import Exit
from reconcile.roster.fleet import this_host
from reconcile.local.homefs import (CONFIG_DIR, TOKEN_FILE, HomeFsError, inspect, remove_stale_temps,
                                    write_private_file)
from reconcile.local.homelock import MINT_LOCK_FILE, LockAllowance, LockHeld, lock_private_file
from reconcile.common.model import Plan, UserProblem
from reconcile.planner import Desired, Observed, has_pending, make_plan
from reconcile.roster.values import Roster
from reconcile.roster.issues import RosterInvalid
from reconcile.roster.loader import load_roster
from reconcile.local.systemd import SystemdError
from reconcile.vault.client import Vault
from reconcile.vault.values import Secret, VaultDenied, VaultError, resolve_address, resolve_token
from reconcile.engine.homes import token_reader
from reconcile.vault.apply import VaultContext, next_pending, next_records
from reconcile.vault.desired import desired_vault
from reconcile.vault.observe import observe_vault
from reconcile.vault.plan import mint_users

NO_ADMIN_ENV = "CLAUDE_AUTH_NO_ADMIN"
CREATE_ORPHAN = "auth/token/create-orphan"


class CommandFailed(Exception):
    """Stops the run before any change; the message is one line for people."""


@dataclass
class Session:
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


# --- mode -------------------------------------------------------------------------------


def admin_probe_paths(policy_prefix: str) -> list[str]:
    return [f"sys/policies/acl/{policy_prefix.lower()}claude-auth-probe", CREATE_ORPHAN]


def missing_admin_capabilities(capabilities: dict[str, tuple[str, ...]] | None, policy_prefix: str) -> list[str]:
    """What the token lacks to be an admin token (empty: it is one). None: capabilities-self was denied."""
    policy_path, mint_path = admin_probe_paths(policy_prefix)
    wanted_policy = f"create or update on sys/policies/acl/{policy_prefix.lower()}*"
    wanted_mint = f"update and sudo on {mint_path}"
    if capabilities is None:
        return [wanted_policy, wanted_mint]
    policy_caps, mint_caps = set(capabilities.get(policy_path, ())), set(capabilities.get(mint_path, ()))
    missing = []
    if not ("root" in policy_caps or {"create", "update"} & policy_caps):
        missing.append(wanted_policy)
    # Minting a token whose policy the caller does not hold needs sudo on the endpoint.
    if not ("root" in mint_caps or {"update", "sudo"} <= mint_caps):
        missing.append(wanted_mint)
    return missing


def is_admin(capabilities: dict[str, tuple[str, ...]], policy_prefix: str) -> bool:
    """May write the managed policies and mint orphan tokens carrying them."""
    return not missing_admin_capabilities(capabilities, policy_prefix)


def connect_vault(roster: Roster, *, allow_non_admin: bool = False) -> tuple[Vault, str | None]:
    """The client to observe and change Vault with, and why it holds no admin token (None: it does).

    Without a token (none found, or CLAUDE_AUTH_NO_ADMIN=1) the client holds
    none: the hourly mode. A token that Vault rejects, or (unless
    `allow_non_admin`, for the read-only `status`) one that is not an admin
    token, raises CommandFailed naming VAULT_ADDR.
    """
    try:
        address = resolve_address(roster.vault.address)
    except VaultError as exc:
        raise CommandFailed(str(exc)) from None
    if not address:
        raise CommandFailed("no Vault address: set VAULT_ADDR or vault.address in the roster")
    token: Secret | None = None
    why = f"{NO_ADMIN_ENV}=1"
    if os.environ.get(NO_ADMIN_ENV) != "1":
        token = resolve_token()
        why = "no Vault token (VAULT_TOKEN or ~/.vault-token)"
    try:
        if token is not None:
            admin_client = Vault(address, token)
            capabilities: dict[str, tuple[str, ...]] | None
            try:
                capabilities = admin_client.capabilities_self(admin_probe_paths(roster.vault.policy_prefix))
            except VaultDenied:
                capabilities = None
                if not _is_live_token(admin_client):
                    raise CommandFailed(f"the Vault token (VAULT_TOKEN or ~/.vault-token) was rejected by "
                                        f"VAULT_ADDR={address}: it is invalid, expired or revoked") from None
            missing = missing_admin_capabilities(capabilities, roster.vault.policy_prefix)
            if not missing:
                return admin_client, None
            if not allow_non_admin:
                denied = " (it may not even ask sys/capabilities-self)" if capabilities is None else ""
                raise CommandFailed(
                    f"the Vault token (VAULT_TOKEN or ~/.vault-token) is not an admin token at "
                    f"VAULT_ADDR={address}: it lacks {' and '.join(missing)}{denied}; use an admin token, "
                    f"or set {NO_ADMIN_ENV}=1 for a run without one")
            why = "the Vault token is not an admin token"
        tokenless = Vault(address, None)
        tokenless.is_reachable()
        return tokenless, why
    except VaultError as exc:
        raise CommandFailed(_vault_failure(exc, address)) from None


def _is_live_token(client: Vault) -> bool:
    """After a 403 on capabilities-self: a live token without that path (no default policy, such as a
    user's scoped token) can still look itself up; a rejected one cannot."""
    try:
        client.lookup_self()
    except VaultDenied:
        return False
    return True


def _vault_failure(exc: VaultError, address: str) -> str:
    text = str(exc)
    return text if "VAULT_ADDR" in text else f"Vault at VAULT_ADDR={address}: {text}"


# --- reading the world ----------------------------------------------------------------------


MINT_LOCK_TIMEOUT = 20.0
"""Seconds to wait for another host's mint in a shared home (one mint takes milliseconds)."""


def _mint_lock(accounts: dict[str, Account], allowance: LockAllowance) -> Any:
    @contextmanager
    def hold(user: str) -> Iterator[None]:
        fd = lock_private_file(accounts[user], MINT_LOCK_FILE, allowance=allowance, timeout=MINT_LOCK_TIMEOUT)
        try:
            yield
        finally:
            os.close(fd)
    return hold


def _token_writer(accounts: dict[str, Account]) -> Any:
    def write_token(user: str, data: bytes, durable: bool) -> None:
        write_private_file(accounts[user], TOKEN_FILE, data, mode=0o600, durable=durable)
    return write_token


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


def _take_lock(root: Path) -> statefile.ApplyLock:
    try:
        return statefile.apply_lock(root)
    except (statefile.LockHeld, statefile.StateFileError) as exc:
        raise CommandFailed(str(exc)) from None


def build_session(args: argparse.Namespace, roster_path: str, *, lock: bool = False) -> Session:
    """Load, reach Vault, read the world and plan. With `lock` (apply), the apply lock is taken once
    Vault answered (so a Vault failure changes nothing) and before anything is read; the Session holds it."""
    roster = load_roster(roster_path)
    root = Path(args.root)
    vault, no_admin_reason = connect_vault(roster)
    held = _take_lock(root) if lock else None
    try:
        return _read_and_plan(args, roster_path, roster, root, vault, no_admin_reason, held)
    except BaseException:
        if held is not None:
            held.release()
        raise


def _read_and_plan(args: argparse.Namespace, roster_path: str, roster: Roster, root: Path, vault: Vault,
                   no_admin_reason: str | None, held: statefile.ApplyLock | None) -> Session:
    admin = no_admin_reason is None
    if no_admin_reason is not None:
        print(f"NOTE: running without an admin token ({no_admin_reason}): policies are not checked; "
              "changes that need an admin are left for the admin run", file=sys.stderr)
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
                                read_token=token_reader(found_accounts),
                                token_users=[user for user in d_vault.tokens if user in found_accounts],
                                pending_revoke=state.pending_revoke, intents=state.intents,
                                collect_garbage=bool(getattr(args, "prune", False)))
    except VaultError as exc:
        raise CommandFailed(_vault_failure(exc, vault.address)) from None
    problems: list[UserProblem] = [v for v in found.values() if isinstance(v, UserProblem)]
    problems.extend(o_local.problems)
    problems.extend(o_vault.problems)
    accounts = {name: value for name, value in found_accounts.items() if name in o_local.accounts}
    o_vault = replace(o_vault, tokens=MappingProxyType(
        {user: token for user, token in o_vault.tokens.items() if user in accounts}))

    desired = Desired(vault=d_vault, local=d_local)
    observed = Observed(vault=o_vault, local=o_local)
    plan = make_plan(desired, observed, prune=bool(getattr(args, "prune", False)))
    return Session(roster=roster, roster_path=roster_path, root=root, admin=admin, vault=vault,
                   accounts=accounts, problems=_dedupe(problems), records=records,
                   desired=desired, observed=observed, plan=plan,
                   pending_revoke=state.pending_revoke, state=state, lock=held)


def _remove_stale_temps(session: Session, hold: Any) -> dict[str, str]:
    """Temporary files of this tool's own naming that a killed run left: a token file's may hold a live
    token. Only apply removes them, holding the apply lock, so no run of ours is writing one now; in a
    home that other hosts share, another host's apply may be, so a token file's temporaries are removed
    under the person's mint lock, which every token-file write holds (skipped when it cannot be had).

    Returns the people whose mint lock is held beyond the run's allowance, with why: the rest of
    their row is skipped this run (they hold it, or another host does for longer than any mint)."""
    held: dict[str, str] = {}
    for user, account in session.accounts.items():
        try:
            if inspect(account, CONFIG_DIR).kind != "directory":
                continue  # no token file yet, so no temporary one either
            with hold(user):
                remove_stale_temps(account, TOKEN_FILE)
        except LockHeld as exc:
            held[user] = str(exc)
        except HomeFsError:
            continue  # the next run tries again
    unit_dir = session.root / local_desired.UNIT_DIR
    targets = [unit_dir / unit.name for unit in session.desired.local.units]
    targets += [unit_dir / name for name in session.observed.local.stray_drop_ins]
    targets.append(statefile.state_path(session.root))
    atomicfile.remove_stale_temps(targets)
    return held


def _start(args: argparse.Namespace, roster_path: str, *, lock: bool = False) -> Session | int:
    try:
        return build_session(args, roster_path, lock=lock)
    except RosterInvalid as exc:
        for issue in exc.issues:
            print(issue.format(), file=sys.stderr)
        return Exit.ERROR
    except CommandFailed as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return Exit.ERROR


def _print_problems(problems: list[UserProblem]) -> None:
    for problem in problems:
        print(render.error_line(problem.user, problem.message), file=sys.stderr)


def _scan_warning(session: Session) -> str | None:
    """The one WARN line of a token scan cut short (its intents stay for the next admin run), printed."""
    text = session.observed.vault.scan_warning
    if text is not None:
        print(f"WARN {text}", file=sys.stderr)
    return text


# --- the commands ---------------------------------------------------------------------------


def run_plan(args: argparse.Namespace, roster_path: str) -> int:
    session = _start(args, roster_path)
    if isinstance(session, int):
        return session
    _print_problems(session.problems)
    scan_cut_short = _scan_warning(session)
    if args.json:
        print(render.plan_json(session.plan))
    else:
        for line in render.elsewhere_lines(session.roster, session.desired.vault.host):
            print(line)
        print(render.plan_text(session.plan, diff=bool(args.diff)))
    if session.problems or scan_cut_short:
        return Exit.ERROR
    return Exit.CHANGES_PENDING if has_pending(session.plan) else Exit.OK


def run_apply(args: argparse.Namespace, roster_path: str) -> int:
    session = _start(args, roster_path, lock=True)
    if isinstance(session, int):
        return session
    try:
        return _apply(args, roster_path, session)
    finally:
        if session.lock is not None:
            session.lock.release()


def _apply(args: argparse.Namespace, roster_path: str, session: Session) -> int:
    as_json = bool(args.json)
    _print_problems(session.problems)
    errors = [render.problem_text(p) for p in session.problems]
    scan_cut_short = _scan_warning(session)
    warnings: list[str] = [scan_cut_short] if scan_cut_short else []

    warned_skips: set[str] = set()

    def warn_skipped(user: str, why: str) -> None:
        if user not in warned_skips:  # one line per person, however many of their changes wait
            warned_skips.add(user)
            text = f"{user}: {why}; {user}'s row is skipped this run"
            warnings.append(text)
            print(f"WARN {text}", file=sys.stderr)

    def report(result: Result) -> None:
        if result.skipped:
            warn_skipped(result.change.user or result.change.name, result.message)
        elif result.blocked:
            text = render.warning_text(result.change)
            warnings.append(text)
            print(f"WARN {text}", file=sys.stderr)
        elif result.vault_down and session.vault.unreachable:
            pass  # Vault is gone for the rest of the run: one line for all such changes, below
        elif not result.ok:
            print(render.error_line(result.change.name, result.message), file=sys.stderr)
        elif not as_json:
            print(render.result_line(result))
            if args.diff:
                for line in render.diff_lines(result.change):
                    print(f"    {line}")

    journal = statefile.Journal(session.root, session.state)
    mint_lock = _mint_lock(session.accounts, LockAllowance())
    vault_ctx = VaultContext(vault=session.vault, admin=session.admin,
                             write_token=_token_writer(session.accounts), mint_log=journal,
                             read_token=token_reader(session.accounts), mint_lock=mint_lock)
    held = _remove_stale_temps(session, mint_lock)
    for user, why in sorted(held.items()):  # every holder is told, whether or not their row had changes
        warn_skipped(user, why)
    if session.admin:
        try:
            journal.prepare(mint_users(session.plan))
        except statefile.StateFileError as exc:  # no intent on disk: no mint may be asked for
            print(render.error_line("state", str(exc)), file=sys.stderr)
            return Exit.ERROR
    ctx = ExecContext(vault=vault_ctx, local=local_apply.LocalContext.create(session.root, session.accounts),
                      skipped=held)
    results: tuple[Result, ...] = ()
    try:
        results = execute(session.plan, ctx, report=report)
        lost = lost_to_vault(results) if session.vault.unreachable else ()
        if lost:
            names = sorted({r.change.name for r in lost})
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            text = f"{len(lost)} Vault change(s) not made ({shown}): {session.vault.unreachable}"
            errors.append(f"vault: {text}")
            print(render.error_line("vault", text), file=sys.stderr)
        finish_error = finish(results, ctx)
        if finish_error:
            errors.append(f"systemd: {finish_error}")
            print(render.error_line("systemd", finish_error), file=sys.stderr)
    finally:
        if any(result.ok for result in results) or vault_ctx.outcomes.minted:
            os.sync()  # unit files and first-mint token files were written without their own fsync
        # Even after an unexpected error: remember every token minted so far.
        observed = session.observed.vault
        records = next_records(session.records, session.desired.vault, observed, vault_ctx.outcomes)
        strays = tuple(accessor for accessor, seen in observed.pending.items() if seen.interrupted)
        pending = next_pending(session.pending_revoke + strays, session.records, records, observed,
                               vault_ctx.outcomes)
        intents = {nonce: user for nonce, user in journal.outstanding().items()
                   if nonce not in observed.resolved_intents}
        try:
            journal.replace_all(statefile.State(records, pending, intents))
        except statefile.StateFileError as exc:
            errors.append(f"state: {exc}")
            print(render.error_line("state", str(exc)), file=sys.stderr)

    textfile = session.roster.status.prometheus_textfile
    if textfile:
        # The hourly run keeps the node_exporter metrics fresh (roster: status.prometheus_textfile).
        from reconcile.commands.status_cmd import write_prometheus
        from reconcile.status import gather
        try:
            write_prometheus(textfile, gather(session.roster, roster_path, session.root, session.vault,
                                              admin=session.admin))
        except OSError as exc:
            errors.append(f"metrics: cannot write {textfile}: {exc.strerror}")
            print(render.error_line("metrics", f"cannot write {textfile}: {exc.strerror}"), file=sys.stderr)
    if as_json:
        print(render.apply_json(session.plan, results, warnings=warnings, errors=errors))
    else:
        print(render.apply_summary(results))
    failed = failures(results)
    # Blocked changes are warnings (the hourly run exits 0); failures and problems are errors, and so is
    # a token scan cut short (admin runs only): interrupted mints are still unaccounted for.
    return Exit.ERROR if (failed or errors or scan_cut_short) else Exit.OK
