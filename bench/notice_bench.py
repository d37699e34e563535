"""`make bench` (login notice part): what deploy/profile.d/claude-auth.sh adds to a login shell.

Runs `dash -i -c '. claude-auth.sh'` (Debian's /bin/sh; bash likewise) RUNS
times in a HOME with a state folder in each of three states, and the same
shell with `:` instead of the snippet as the baseline:

- nothing: no notice files (the person has never synced, or all is well and
  the login carries no deadline);
- far deadline: a `reauth-by` 30 days out (the usual case with Claude 2.1.332:
  the snippet reads it and compares it with `date +%s`, printing nothing);
- needs you: a `needs-you` line to print.

Prints one JSON document: per shell and state, the median and 90th percentile
wall milliseconds of the whole shell, and the snippet's own share (median minus
the baseline's median). Target (issue 24): under 10 ms added when there is
nothing to say.

Also `claude-auth whoami` as a person with no Vault configured (the local part
only: its login file, sync.log and notice files), WHOAMI_RUNS times: the issue
asks for well under a second.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SNIPPET = Path(__file__).resolve().parent.parent / "deploy" / "profile.d" / "claude-auth.sh"


def _time(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        times.append((time.perf_counter() - began) * 1000)
    return times


def _figures(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"median_ms": round(statistics.median(ordered), 3),
            "p90_ms": round(ordered[int(len(ordered) * 0.9) - 1], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    results: dict[str, object] = {"runs": args.runs, "target_added_ms_when_nothing_to_say": 10}
    with tempfile.TemporaryDirectory(prefix="notice-bench-") as scratch:
        home = Path(scratch)
        state = home / ".local" / "state" / "claude-auth-sync"
        state.mkdir(parents=True)
        env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PS1": ""}
        far = int(time.time()) + 30 * 86400
        states = {
            "nothing": {},
            "far deadline": {"reauth-by": f"{far} {time.strftime('%Y-%m-%d', time.gmtime(far))} claude auth login\n"},
            "needs you": {"needs-you": "claude-auth: your Claude login on this workstation needs you. Run: x\n"},
        }
        for shell in ("dash", "bash"):
            if not shutil.which(shell):
                results[shell] = "not installed"
                continue
            baseline = _figures(_time([shell, "-i", "-c", ":"], env, args.runs))
            per_state: dict[str, object] = {"baseline": baseline}
            for name, files in states.items():
                for leftover in state.iterdir():
                    leftover.unlink()
                for file_name, text in files.items():
                    (state / file_name).write_text(text)
                figures = _figures(_time([shell, "-i", "-c", f". {SNIPPET}"], env, args.runs))
                figures["added_median_ms"] = round(figures["median_ms"] - baseline["median_ms"], 3)
                per_state[name] = figures
            results[shell] = per_state
        whoami = [sys.executable, "-m", "reconcile", "whoami", "--user", "nobody"]
        plain = {"HOME": str(home), "PATH": env["PATH"]}
        results["whoami_without_vault"] = _figures(_time(whoami, plain, max(5, args.runs // 10)))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
