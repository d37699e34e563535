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

from reconcile.commands.reconcile_cmd import CommandFailed, connect_vault
from reconcile.exitcodes import Exit
from reconcile.metrics import render_textfile, write_textfile
from reconcile.roster import Roster
from reconcile.roster_loader import RosterInvalid, load_roster
from reconcile.status import UNKNOWN, UserStatus, gather

COLUMNS = (("USER", 12), ("STATE", 9), ("POLICY", 8), ("TOKEN", 14), ("TIMER", 9),
           ("LAST SYNC", 22), ("BACKUP", 0))


def _short_time(at: float | None) -> str:
    return UNKNOWN if at is None else datetime.fromtimestamp(at).strftime("%m-%d %H:%M")


def _cells(row: UserStatus) -> list[str]:
    token = row.token
    if row.token_ttl_seconds is not None and row.token in ("alive", "drifted"):
        token = f"{row.token} {row.token_ttl_seconds / 86400:.1f}d"
    last = f"{row.last_run.result} {_short_time(row.last_run.at)}" if row.last_run else UNKNOWN
    backup = f"v{row.backup_version} {_short_time(row.backup_at)}" if row.backup_version is not None else UNKNOWN
    state = "off" if row.state == "claude_auth off" else row.state
    return [row.user, state, row.policy, token, row.timer, last, backup]


def render_table(rows: list[UserStatus]) -> str:
    """At most 100 columns; notes say why a cell is —, and `off` means claude_auth: false."""
    lines = []
    header = "".join(f"{name:<{width}}" if width else name for name, width in COLUMNS)
    lines.append(header.rstrip())
    for row in rows:
        lines.append("".join(f"{cell:<{width}}" if width else cell
                             for cell, (_, width) in zip(_cells(row), COLUMNS)).rstrip())
    notes = [f"  {row.user}: {note}" for row in rows for note in row.notes]
    if notes:
        lines.append("")
        lines.append("Why some cells show —:")
        lines.extend(notes)
    return "\n".join(line[:100] if len(line) > 100 else line for line in lines)


def collect(roster: Roster, roster_path: str, root: Path) -> list[UserStatus]:
    try:
        vault, no_admin_reason = connect_vault(roster)
    except CommandFailed as exc:
        return gather(roster, roster_path, root, None, admin=False, vault_note=str(exc))
    return gather(roster, roster_path, root, vault, admin=no_admin_reason is None)


def write_prometheus(path: str, rows: list[UserStatus]) -> None:
    write_textfile(Path(path), render_textfile([row.metrics() for row in rows]))


def run(args: argparse.Namespace, roster_path: str) -> int:
    try:
        roster = load_roster(roster_path)
    except RosterInvalid as exc:
        for issue in exc.issues:
            print(issue.format(), file=sys.stderr)
        return Exit.ERROR
    rows = collect(roster, roster_path, Path(args.root))
    if args.prometheus:
        try:
            write_prometheus(args.prometheus, rows)
        except OSError as exc:
            print(f"ERROR: cannot write {args.prometheus}: {exc.strerror}", file=sys.stderr)
            return Exit.ERROR
    if args.json:
        print(json.dumps({"generated_at": int(time.time()), "users": [row.as_json() for row in rows]}, indent=2))
    else:
        print(render_table(rows))
    return Exit.OK
