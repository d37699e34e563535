"""Two seeded minutes of the soak (issue 27) in every `make test`, so its machinery cannot rot.

The same harness as `make soak` (tests/soak/harness.py) on a smaller fleet: 6 hosts (two pairs
sharing /home), 24 people, every fault kind at least once (the schedule's first ten faults are one
of each), then the quiet cycle and every invariant. Then each of six checks is shown able to fail
(the bite: a dropped sibling key, a stub backed up, a token in the wrong person's file, a minted
token nobody references, a printed secret, a traceback).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.soak.harness import FAULT_KINDS, REPO, Params, Soak, table


def test_two_seeded_minutes_of_every_fault_keep_every_invariant(claude_bin: Path) -> None:
    faketime = Path(os.environ.get("CLAUDE_AUTH_FAKETIME_LIB") or REPO / ".tools" / "libfaketime.so.1")
    if not faketime.exists():
        pytest.fail(f"libfaketime is missing at {faketime}: run `make test`, which installs it")
    params = Params(seed=2701, minutes=2.0, hosts=6, people=24, hires=3, fault_interval=3.0, hourly_interval=5.0,
                    admin_interval=30.0, edit_interval=20.0, bite=True)
    report = Soak(params, claude_bin, faketime, log=lambda line: None).run()
    shown = table(report)
    print(shown)
    assert {kind for kind, counts in report["faults"].items() if counts["done"] == 0} == set(), shown
    assert set(report["faults"]) == set(FAULT_KINDS)
    assert report["ok"], shown
    assert report["bites"] and all(report["bites"].values()), (report["bites"], shown)
    assert report["operations"].get("sync:OK", 0) > 50 and report["operations"].get("sync:RECOVERED", 0) > 0, shown
