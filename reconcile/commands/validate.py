"""`claude-auth validate`: check the roster, print every problem, change nothing."""

from __future__ import annotations

import json
import sys

from reconcile.common.exitcodes import Exit
from reconcile.roster.issues import RosterInvalid
from reconcile.roster.loader import load_roster


def run(roster_path: str, *, as_json: bool = False) -> int:
    try:
        roster = load_roster(roster_path)
    except RosterInvalid as exc:
        if as_json:
            print(json.dumps({"valid": False, "issues": [issue.as_json() for issue in exc.issues]}, indent=2))
        else:
            for issue in exc.issues:
                print(issue.format(), file=sys.stderr)
        return Exit.ERROR
    if as_json:
        print(json.dumps({"valid": True, "users": list(roster.users)}))
    else:
        print(f"{roster_path}: valid, {len(roster.users)} users")
    return Exit.OK
