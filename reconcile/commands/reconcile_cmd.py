"""`claude-auth plan` and `claude-auth apply`: open the apply session, print what it found and did.

Both open the same session (reconcile.engine.session.ApplySession: load, reach
Vault and decide the mode, read the world, plan purely). Dry-run lives at one
seam: `plan` prints the session's plan; `apply` calls `session.apply`, which
hands it to the one executor, and prints each result as it is made. This module
only prints and picks the exit status; the run's resources (the Vault client,
the apply lock, the mint locks, the token writer, the journal) are the
session's. Modes, and what a rejected or non-admin token does:
reconcile.engine.connect.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reconcile.commands import render
from reconcile.common.exitcodes import Exit
from reconcile.common.model import UserProblem
from reconcile.engine.connect import CommandFailed
from reconcile.engine.executor import Result, failures
from reconcile.engine.planner import has_pending
from reconcile.engine.session import ApplySession
from reconcile.engine.vaultonly import VaultOnlySession

Session = ApplySession | VaultOnlySession
from reconcile.roster.issues import RosterInvalid


def _start(args: argparse.Namespace, roster_path: str, *, lock: bool = False) -> Session | int:
    prune = bool(getattr(args, "prune", False))
    try:
        if getattr(args, "vault_only", False):
            return VaultOnlySession.open(roster_path, prune=prune)
        return ApplySession.open(roster_path, Path(args.root), prune=prune, lock=lock)
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
    text = session.scan_warning
    if text is not None:
        print(f"WARN {text}", file=sys.stderr)
    return text


def _intents_warning(session: Session) -> str | None:
    """The one WARN line of the hourly run about interrupted mints only an admin run can look for."""
    text = session.intents_warning
    if text is not None:
        print(f"WARN {text}", file=sys.stderr)
    return text


# --- the commands ---------------------------------------------------------------------------


def run_plan(args: argparse.Namespace, roster_path: str) -> int:
    session = _start(args, roster_path)
    if isinstance(session, int):
        return session
    _print_problems(list(session.problems))
    scan_cut_short = _scan_warning(session)
    _intents_warning(session)
    if args.json:
        print(render.plan_json(session.plan))
    else:
        if isinstance(session, ApplySession):
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
        return _apply(args, session)
    finally:
        session.close()


def _apply(args: argparse.Namespace, session: Session) -> int:
    as_json = bool(args.json)
    _print_problems(list(session.problems))
    errors = [render.problem_text(p) for p in session.problems]
    scan_cut_short = _scan_warning(session)
    warnings: list[str] = [scan_cut_short] if scan_cut_short else []
    interrupted = _intents_warning(session)
    if interrupted:
        warnings.append(interrupted)

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

    def error(where: str, text: str) -> None:
        errors.append(f"{where}: {text}")
        print(render.error_line(where, text), file=sys.stderr)

    done = session.apply(report=report, skipped=warn_skipped, error=error)
    if done is None:  # no intent could be written ahead: nothing was changed
        return Exit.ERROR
    results = done
    if as_json:
        print(render.apply_json(session.plan, results, warnings=warnings, errors=errors))
    else:
        print(render.apply_summary(results))
    failed = failures(results)
    # Blocked changes are warnings (the hourly run exits 0); failures and problems are errors, and so is
    # a token scan cut short (admin runs only): interrupted mints are still unaccounted for.
    return Exit.ERROR if (failed or errors or scan_cut_short) else Exit.OK
