"""`make bench`: the fleet figure. N hosts applying one roster at once against a 3-node raft cluster,
next to one host applying the same roster alone.

Prints one JSON document. On a fresh 3-node OpenBao raft cluster on loopback
(tests/support/cluster.py), for each round:

- `one_host_s`: one host (its own `--root`, host name `solo`, VAULT_ADDR the
  active node) runs a first `apply` of the roster (every policy, token, folder,
  unit and timer new);
- `fleet_s`: N hosts (own `--root` each, host names host0..), each pointed at
  a node in turn (so two of three talk to standbys that forward the writes),
  start the same first `apply` at once; the figure is the time until the last
  one ends (`fleet_per_host_s` lists each).

Policies are fleet-wide, so the fleet's hosts find the one host's policies
already written (the fleet round runs second, on its own policy prefix, so
both rounds write every policy). Each `apply` is the real CLI in a
subprocess (`python -m reconcile`), start-up included. On this machine the
hosts share its cores, so the fleet figure is an upper bound for N real
workstations, whose only shared resource is the cluster.

Usage: python bench/fleet_bench.py [--hosts 10] [--users 100] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.cluster import RaftCluster  # noqa: E402
from tests.support.fleet import make_hosts, run_all, write_roster  # noqa: E402


def one_round(cluster: RaftCluster, hosts: int, users: int, index: int) -> dict[str, object]:
    people = [f"u{i:04d}" for i in range(users)]
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as folder:
        base = Path(folder)
        leader = cluster.wait_leader().address

        solo_roster = base / "solo.yaml"
        write_roster(solo_roster, f"s{index}-", {name: {} for name in people})
        (solo,) = make_hosts(base / "solo", 1, people, [leader], cluster.root_token, solo_roster,
                             shared_home=False, prefix="solo")
        alone = solo.run("apply", timeout=1800)
        if alone.code != 0:
            raise SystemExit(f"one-host apply failed:\n{alone.err[-2000:]}")

        fleet_roster = base / "fleet.yaml"
        write_roster(fleet_roster, f"f{index}-", {name: {} for name in people})
        fleet = make_hosts(base / "fleet", hosts, people, [n.address for n in cluster.nodes], cluster.root_token,
                           fleet_roster, shared_home=False)
        outcomes = run_all(fleet, "apply", timeout=1800)
        failed = [o.host for o in outcomes if o.code != 0]
        if failed:
            raise SystemExit(f"fleet apply failed on {failed}:\n{outcomes[0].err[-2000:]}")
        return {"one_host_s": round(alone.seconds, 2),
                "fleet_s": round(max(o.seconds for o in outcomes), 2),
                "fleet_per_host_s": [round(o.seconds, 2) for o in outcomes]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    started = time.monotonic()
    with RaftCluster() as cluster:
        cluster_start_s = round(time.monotonic() - started, 1)
        cluster.enable_kv("secret")
        rounds = [one_round(cluster, args.hosts, args.users, index) for index in range(args.rounds)]
    one = statistics.median(float(str(r["one_host_s"])) for r in rounds)
    fleet = statistics.median(float(str(r["fleet_s"])) for r in rounds)
    print(json.dumps({
        "fleet": {"hosts": args.hosts, "users": args.users, "nodes": 3, "cluster_start_s": cluster_start_s,
                  "one_host_first_apply_s": one, "fleet_first_apply_s": fleet,
                  "fleet_vs_one_host": round(fleet / one, 2) if one else None, "rounds": rounds},
    }, indent=2))


if __name__ == "__main__":
    main()
