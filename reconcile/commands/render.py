"""Two views of one result, human and JSON, for `plan` and `apply`.

Only fields meant for people are rendered: action, kind, name, reason,
outcome messages, and with --diff the before/after text of policies and
units. Changes carry no secret in these fields (tokens live in fields never
rendered here), so nothing needs scrubbing at this point.

Human plan: one line per change, `<symbol> <kind> <name>: <reason>`, then
`Plan: A to add, C to change, R to remove.` or exactly `No changes.` when
nothing is pending (orphaned items, `!`, are shown but are not pending; garbage a
`--prune` run found, also `!`, is pending: that run revokes it). JSON
plan: a list of {"action", "kind", "name", "reason"}. Both list the changes in
model.sort_for_display's order: people in name order, each with all of their
changes (policy, token, folders, token file, drop-in, timer), then the units
everyone shares.

Human apply prints each result as the executor reports it, so a long or
interrupted run shows how far it got: that is the order changes must be made in
(model.sort_for_apply: every policy, then every folder, token, token file,
unit, timer), like terraform's progress lines, while its plan is by address.
Nothing of JSON apply is printed before the end, so both its "changes" and its
"results" come in the plan's order.

JSON apply: {"changes": [...as the plan...], "results": [{"name", "kind",
"action", "ok", "error"}], "warnings": ["<user>: needs an admin run: ..."],
"errors": ["<name or user>: <message>"]}. A change blocked for want of an
admin token is a result with ok false and error "needs an admin run", and is
also listed under "warnings"; "errors" holds per-user problems and failures
that belong to no single change (state file, daemon-reload).
"""

from __future__ import annotations

import difflib
import json
from typing import Iterable

from reconcile.engine.executor import Result
from reconcile.roster.fleet import is_assigned
from reconcile.common.model import Change, Plan, UserProblem, display_key, is_pending, sort_for_display
from reconcile.engine.planner import counts, has_pending
from reconcile.roster.values import Roster

NO_CHANGES = "No changes."


def change_line(change: Change) -> str:
    return f"{change.action.symbol} {change.kind.value} {change.name}: {change.reason}"


def summary_line(plan: Plan) -> str:
    if not has_pending(plan):
        return NO_CHANGES
    add, change, remove = counts(plan)
    return f"Plan: {add} to add, {change} to change, {remove} to remove."


def diff_lines(change: Change) -> list[str]:
    """A unified diff of the text a change replaces (policies, units); empty when it has none.

    Orphaned items are not acted on, so they get no diff.
    """
    if (change.before_text is None and change.after_text is None) or not is_pending(change):
        return []
    before = (change.before_text or "").splitlines(keepends=True)
    after = (change.after_text or "").splitlines(keepends=True)
    lines = difflib.unified_diff(before, after, fromfile=f"{change.name} (current)",
                                 tofile=f"{change.name} (desired)")
    return [line.rstrip("\n") for line in lines]


def plan_text(plan: Plan, *, diff: bool = False) -> str:
    lines: list[str] = []
    for change in sort_for_display(plan):
        lines.append(change_line(change))
        if diff:
            lines.extend(f"    {line}" for line in diff_lines(change))
    orphaned = sum(1 for change in plan if not is_pending(change))
    if orphaned:
        lines.append(f"{orphaned} orphaned (users no longer in the roster): `apply --prune` removes them.")
    lines.append(summary_line(plan))
    return "\n".join(lines)


def elsewhere_lines(roster: Roster, host: str) -> list[str]:
    """One line per roster user not assigned to `host` (the roster's `hosts`): not managed here."""
    return [f"= user {name}: not managed on host {host} (hosts: {', '.join(user.hosts or ())})"
            for name, user in roster.users.items() if not is_assigned(user.hosts, host)]


def plan_json(plan: Plan) -> str:
    return json.dumps([change.as_json() for change in sort_for_display(plan)], indent=2)


def result_line(result: Result) -> str:
    """Stdout line of a change carried out: `+ policy workstation-claude-alice: created`."""
    change = result.change
    return f"{change.action.symbol} {change.kind.value} {change.name}: {result.message}"


def error_line(subject: str, message: str) -> str:
    return f"ERROR {subject}: {message}"


def warning_text(change: Change) -> str:
    """`<user>: needs an admin run: <why>` (the WARN line without its prefix)."""
    subject = change.user or change.name
    return f"{subject}: needs an admin run: {change.kind.value} {change.name}: {change.reason}"


def problem_text(problem: UserProblem) -> str:
    return f"{problem.user}: {problem.message}"


def apply_summary(results: Iterable[Result]) -> str:
    results = list(results)
    if not results:
        return NO_CHANGES
    done = sum(1 for r in results if r.ok)
    failed = sum(1 for r in results if not r.ok and not r.blocked and not r.skipped)
    waiting = sum(1 for r in results if r.blocked)
    skipped = sum(1 for r in results if r.skipped)
    tail = f", {skipped} skipped (a lock held in a home)" if skipped else ""
    return f"Applied: {done} done, {failed} failed, {waiting} need an admin run{tail}."


def apply_json(plan: Plan, results: Iterable[Result], *, warnings: Iterable[str],
               errors: Iterable[str]) -> str:
    document = {
        "changes": [change.as_json() for change in sort_for_display(plan)],
        "results": [result.as_json() for result in sorted(results, key=lambda r: display_key(r.change))],
        "warnings": list(warnings),
        "errors": list(errors),
    }
    return json.dumps(document, indent=2)
