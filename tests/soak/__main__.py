"""`python -m tests.soak` (what `make soak` runs): one soak run, its report as JSON and as a table.

SOAK_MINUTES (default 30) and SOAK_SEED (default: drawn, and printed) come from the environment or
the options; the JSON report goes to --report (default .soak/report-<seed>.json). Exit 0 when every
invariant held, 1 when one did not.
"""

from __future__ import annotations

import argparse
import faulthandler
import signal
import json
import os
import secrets
import sys
from pathlib import Path

from tests.soak.harness import REPO, Params, Soak, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak")
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES") or 30))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED") or secrets.randbelow(10**6)))
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--people", type=int, default=100)
    parser.add_argument("--hires", type=int, default=10)
    parser.add_argument("--fault-interval", type=float, default=4.0)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args(argv)
    faulthandler.register(signal.SIGUSR1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))  # finally: the teardown still runs
    claude = Path(os.environ.get("CLAUDE_AUTH_TEST_CLAUDE") or "")
    if not os.access(claude, os.X_OK):
        print("soak: CLAUDE_AUTH_TEST_CLAUDE must name the pinned claude CLI (make soak sets it)", file=sys.stderr)
        return 1
    faketime = Path(os.environ.get("CLAUDE_AUTH_FAKETIME_LIB") or REPO / ".tools" / "libfaketime.so.1")
    params = Params(seed=args.seed, minutes=args.minutes, hosts=args.hosts, people=args.people, hires=args.hires,
                    fault_interval=args.fault_interval)
    path = args.report or REPO / ".soak" / f"report-{args.seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    events = path.with_name(path.name.replace("report-", "events-").replace(".json", ".jsonl"))
    os.environ.setdefault("SOAK_EVENTS", str(events))
    report = Soak(params, claude, faketime).run()
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nsoak: report written to {path}, every event to {os.environ['SOAK_EVENTS']}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
