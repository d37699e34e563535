"""Token lookups pipelined (reconcile.vault.pipeline) and on the bounded pool (reconcile.vault.pool) vs the
sequential hvac loop, per network delay.

`bench/pool_bench.py --tokens 1000 --delays 0.002,0.0005,0`: mints the tokens on
a fresh OpenBao dev server, then for each delay puts a loopback proxy
(tests/support/faultproxy.py, in a process of its own so it takes no GIL from
the client) in front of it that waits that many seconds before forwarding each
request, as a remote Vault's round trip would. Each round times a stock
hvac.Client looking every token up one by one, then `ordered_map` with pools of
1, 2, 4 and 8 (the ordinary path, which a run now takes only for the answers the
pipeline could not use), then `Vault.lookup_tokens_pipelined` on 1, 2, 4 and 8
connections, and prints each time over the bare loop's, as JSON. A delay of
`direct` measures without the proxy. The proxy answers one request at a time
per connection and waits before each, so it models a server that is slow per
request; a long round trip (which pipelining hides on one connection) would
favour the pipeline more. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIZES = (1, 2, 4, 8)


def slow_proxy(upstream_port: int, delay: float) -> None:
    from tests.support.faultproxy import FaultProxy

    proxy = FaultProxy(upstream_port=upstream_port, on_request=lambda head, number: time.sleep(delay)).start()
    print(proxy.port, flush=True)
    time.sleep(3600)  # until the parent kills this process


def measure(address: str, root_token: str, tokens: list[Any], rounds: int) -> list[dict[str, float]]:
    import os

    import hvac

    from reconcile.vault.client import Vault
    from reconcile.vault.values import Secret
    from reconcile.vault.pool import CONNECTIONS_ENV, ordered_map

    results = []
    for _ in range(rounds):
        bare_client = hvac.Client(url=address, token=root_token)
        start = time.perf_counter()
        for token in tokens:
            bare_client.auth.token.lookup(token.reveal())
        bare = time.perf_counter() - start
        row = {"bare_s": round(bare, 3)}
        for size in SIZES:
            vault = Vault(address, Secret(root_token))
            start = time.perf_counter()
            ordered_map(vault, lambda client, token: client.lookup_token(token), tokens, size=size)
            row[f"pool_{size}"] = round((time.perf_counter() - start) / bare, 2)
        for size in SIZES:
            os.environ[CONNECTIONS_ENV] = str(size)
            vault = Vault(address, Secret(root_token))
            start = time.perf_counter()
            answers = vault.lookup_tokens_pipelined(tokens, own=False)
            row[f"pipeline_{size}"] = round((time.perf_counter() - start) / bare, 2)
            assert all(answer is not None for answer in answers), "a pipelined lookup went unanswered"
        results.append(row)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--delays", default="0.002,0.0005,0,direct", help="seconds per request, or `direct`")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--proxy", nargs=2, metavar=("UPSTREAM_PORT", "DELAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.proxy:
        slow_proxy(int(args.proxy[0]), float(args.proxy[1]))
        return 0
    from reconcile.vault.client import Vault
    from reconcile.vault.values import Secret
    from tests.support.openbao import OpenBaoServer

    report: dict[str, Any] = {"tokens": args.tokens, "ratios_vs_sequential_hvac_loop": {}}
    with OpenBaoServer() as server:
        admin = Vault(server.address, Secret(server.root_token))
        tokens = [admin.create_orphan_token(policies=["default"], period="768h", display_name=f"bench-{index}",
                                            meta={"user": f"u{index}"}).token for index in range(args.tokens)]
        for delay in args.delays.split(","):
            if delay == "direct":
                report["ratios_vs_sequential_hvac_loop"][delay] = measure(server.address, server.root_token,
                                                                          tokens, args.rounds)
                continue
            proxy = subprocess.Popen([sys.executable, __file__, "--proxy", str(server.port), delay],
                                     stdout=subprocess.PIPE, text=True)
            try:
                assert proxy.stdout is not None
                address = f"http://127.0.0.1:{proxy.stdout.readline().strip()}"
                report["ratios_vs_sequential_hvac_loop"][delay] = measure(address, server.root_token, tokens,
                                                                          args.rounds)
            finally:
                proxy.kill()
                proxy.wait()
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
