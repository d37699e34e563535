"""The soak (issue 27): every fault at once, for an accelerated day, with nothing lost.

`python -m tests.soak` (what `make soak` runs) and tests/test_soak.py (a seeded
two-minute run inside `make test`) drive one harness, tests/soak/harness.py:
the suite's real 3-node OpenBao raft cluster, simulated hosts (`--root`
sandboxes running the real `python -m reconcile` as subprocesses), people
running the real `sync` (with the real Claude CLI against the loopback Messages
stand-in) as their own uids, a seeded fault schedule, and invariants checked
while it runs and at the end. It imports nothing of reconcile but
reconcile.sync.credentials (a login's shape), so the product is driven only
through its command line.
"""
