"""`claude-auth status`: one row per roster user, as a table, JSON, or a Prometheus textfile.

Read-only and always exit 0 once the roster is valid: an unreachable Vault or
a missing admin token turns the cells it would fill into `—` with the reason
below the table, rather than failing the whole report.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

from reconcile.local.accounts import UserDatabaseUnreadable
from reconcile.common.exitcodes import Exit
from reconcile.roster.issues import RosterInvalid
from reconcile.roster.loader import load_roster
from reconcile.engine.status import UNKNOWN, UserStatus, collect, write_prometheus

HEADERS = ("USER", "STATE", "POLICY", "TOKEN", "TIMER", "LAST SYNC", "BACKUP")
WIDTH = 100
GAP = 2
"""Spaces between cells, narrowed to 1 (never 0) when the table would not fit WIDTH."""
MIN_USER_WIDTH = 8


def _short_time(at: float | None) -> str:
    """`MM-DD HH:MM` in local time, or — ; never raises, whatever the number."""
    if at is None:
        return UNKNOWN
    try:
        return datetime.fromtimestamp(at).strftime("%m-%d %H:%M")
    except (ValueError, OverflowError, OSError):
        return UNKNOWN


def _cells(row: UserStatus) -> list[str]:
    token = row.token
    if row.token_ttl_seconds is not None and row.token in ("alive", "drifted"):
        token = f"{row.token} {row.token_ttl_seconds / 86400:.1f}d"
    last = f"{row.last_run.result} {_short_time(row.last_run.at)}" if row.last_run else UNKNOWN
    backup = f"v{row.backup_version} {_short_time(row.backup_at)}" if row.backup_version is not None else UNKNOWN
    state = "off" if row.state == "claude_auth off" else row.state
    return [row.user, state, row.policy, token, row.timer, last, backup]


def _setup_token_cell(row: UserStatus) -> str:
    """`token expires 2027-11-29 (365 days left; reported by claude setup-token)`, or — when not known."""
    at = row.setup_token_expires_at
    if at is None:
        return f"token expires {UNKNOWN}"
    try:
        date = datetime.fromtimestamp(at).strftime("%Y-%m-%d")
    except (ValueError, OverflowError, OSError):
        return f"token expires {UNKNOWN}"
    left = (at - time.time()) / 86400
    source = _EXPIRY_SOURCES.get(row.setup_token_expiry_source or "", "source not recorded")
    if left < 0:
        return f"token EXPIRED on {date} ({source})"
    return f"token expires {date} ({int(left)} days left; {source})"


_EXPIRY_SOURCES = {"given": "given with --expires-at", "claude": "reported by claude setup-token",
                   "default": "assumed: 365 days from storing"}
"""How the table says where a setup token's expiry came from (UserStatus.setup_token_expiry_source)."""


def _fit(cell: str, width: int) -> str:
    """`cell` padded to `width`, or cut to it with a trailing `…`."""
    return cell.ljust(width) if len(cell) <= width else cell[:max(0, width - 1)] + "…"


def _widths(table: list[list[str]]) -> tuple[list[int], int]:
    """(column widths, gap) so that a row fits WIDTH: columns as wide as their longest cell
    (USER as wide as the longest name), the gap narrowed to 1 if that is too wide, then USER
    (not below MIN_USER_WIDTH) and finally BACKUP, the last column, cut to what is left."""
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    gap = GAP
    if sum(widths) + gap * (len(widths) - 1) > WIDTH:
        gap = 1
    excess = sum(widths) + gap * (len(widths) - 1) - WIDTH
    if excess > 0:
        cut = min(excess, max(0, widths[0] - MIN_USER_WIDTH))
        widths[0] -= cut
        excess -= cut
    for i in range(len(widths) - 1, 0, -1):  # last resort, from the right; cells keep a space
        if excess <= 0:
            break
        cut = min(excess, max(0, widths[i] - len(HEADERS[i].split()[0])))
        widths[i] -= cut
        excess -= cut
    return widths, gap


def render_table(rows: list[UserStatus]) -> str:
    """At most 100 columns, with at least one space between cells (a cell too long for its
    column is cut with `…`); notes say why a cell is —, and `off` means claude_auth: false."""
    table = [list(HEADERS)] + [_cells(row) for row in rows]
    widths, gap = _widths(table)
    lines = [(" " * gap).join(_fit(cell, width) for cell, width in zip(line, widths)).rstrip()
             for line in table]
    setup = [f"  {row.user}: {_setup_token_cell(row)}" for row in rows if row.claude_login != "oauth"]
    if setup:
        lines.append("")
        lines.append("Login mode setup-token (everyone else: oauth):")
        lines.extend(setup)
    notes = [f"  {row.user}: {note}" for row in rows for note in row.notes]
    if notes:
        lines.append("")
        lines.append("Why some cells show —:")
        lines.extend(notes)
    return "\n".join(line[:WIDTH] for line in lines)


def run(args: argparse.Namespace, roster_path: str) -> int:
    try:
        roster = load_roster(roster_path)
    except RosterInvalid as exc:
        for issue in exc.issues:
            print(issue.format(), file=sys.stderr)
        return Exit.ERROR
    try:
        rows, host = collect(roster, roster_path, Path(args.root))
    except UserDatabaseUnreadable as exc:
        print(f"ERROR: {exc}", file=sys.stderr)  # nothing about any person can be known
        return Exit.ERROR
    if args.prometheus:
        try:
            write_prometheus(args.prometheus, rows, host)
        except OSError as exc:
            print(f"ERROR: cannot write {args.prometheus}: {exc.strerror}", file=sys.stderr)
            return Exit.ERROR
    if args.json:
        print(json.dumps({"generated_at": int(time.time()), "users": [row.as_json() for row in rows],
                          "host_token": host.as_json()}, indent=2))
    else:
        print(render_table(rows))
        print(f"\n{host.line()}")
    return Exit.OK
