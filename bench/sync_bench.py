"""`make bench` (sync part): the overhead of one `claude-auth sync` run.

Starts a real OpenBao dev server (tests.support.openbao), sets up one user
the way `claude-auth apply` would (the policy from templates/policy.hcl.j2, an
orphan periodic token with display name devvm-claude-auth-<user> and no
default policy, the token file, the state folder), a `.credentials.json`, and
a stub `claude` on PATH (a shell script printing AUTH_OK), so what is measured
is the sync itself, not an inference.

One priming run makes the first backup; then `python -m reconcile sync` runs
RUNS times as a child process, nothing having changed (the steady state of the
six-hourly timer). For each run:

- wall seconds around the child process (interpreter start-up, imports, the
  Vault requests, the stub claude, the log line);
- peak RSS of the child, from os.wait4's rusage (that child alone);
- Vault requests, counted on the wire by a loopback proxy in front of the
  server, in three extra runs (OpenBao refuses API-enabled audit devices;
  the timed runs go to the server directly).

Two baselines are measured the same way so the sync's own share can be read:
`python -c pass` (the interpreter) and `python -c "import hvac"` (what any
in-process hvac client pays at start-up, before doing anything).

Byte code is cached as an installed package's is (pip compiles it at install
time): PYTHONDONTWRITEBYTECODE is dropped and PYTHONPYCACHEPREFIX points at
the bench's scratch folder, so the checkout is not written to; the untimed
priming runs fill the cache.

Prints one JSON document. Targets: median wall <= 0.16 s, peak RSS <= 40 MiB,
Vault requests per unchanged run <= 4. `--strict` exits 1 when one is missed.

Usage: python bench/sync_bench.py [--runs 15] [--strict]
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
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

USER = "benchuser"
KV_MOUNT = "secret"
PATH_PREFIX = "workstation/claude-users"
POLICY_PREFIX = "workstation-claude-"
TARGETS = {"median_wall_s": 0.16, "peak_rss_mib": 40.0, "vault_requests_per_run": 4}


def set_up_user(root: Any, address: str, home: Path) -> None:
    """Policy, scoped token, token file, state folder, credentials: what apply and a login leave behind."""
    from reconcile.common.templating import render

    kv_path = f"{PATH_PREFIX}/{USER}"
    root.sys.create_or_update_acl_policy(
        name=f"{POLICY_PREFIX}{USER}",
        policy=render("policy.hcl.j2", user=USER, kv_mount=KV_MOUNT, kv_path=kv_path))
    token = root.auth.token.create_orphan(
        policies=[f"{POLICY_PREFIX}{USER}"], period="768h", no_default_policy=True,
        display_name=f"devvm-claude-auth-{USER}", meta={"user": USER, "host": "bench"})["auth"]["client_token"]
    token_dir = home / ".config" / "claude-auth-sync"
    token_dir.mkdir(parents=True, mode=0o700)
    (token_dir / "vault-token").write_text(token + "\n")
    (token_dir / "vault-token").chmod(0o600)
    (home / ".local" / "state" / "claude-auth-sync").mkdir(parents=True, mode=0o700)
    claude_dir = home / ".claude"
    claude_dir.mkdir(mode=0o700)
    creds = claude_dir / ".credentials.json"
    creds.write_text(json.dumps({
        "claudeAiOauth": {"accessToken": "bench-access-" + os.urandom(16).hex(),
                          "refreshToken": "bench-refresh-" + os.urandom(16).hex(),
                          "expiresAt": int(time.time() * 1000) + 3_600_000,
                          "scopes": ["user:inference"], "subscriptionType": "enterprise"},
        "mcpOAuth": {}}))
    creds.chmod(0o600)


def stub_claude(folder: Path) -> Path:
    folder.mkdir()
    stub = folder / "claude"
    stub.write_text("#!/bin/sh\necho AUTH_OK\n")
    stub.chmod(0o755)
    return folder


def measure(argv: list[str], env: dict[str, str], runs: int) -> list[dict[str, Any]]:
    """Run `argv` `runs` times from a small measuring process (this script with --measure).

    The measurer imports nothing heavy: a child's peak RSS as Linux reports it
    starts at its parent's RSS at fork time, so measuring from this (hvac-laden)
    process would report this process's size, not the child's.
    """
    job = json.dumps({"argv": argv, "env": env, "runs": runs})
    done = subprocess.run([sys.executable, "-S", __file__, "--measure"], input=job, capture_output=True,
                          text=True, check=True)
    return list(json.loads(done.stdout))


def measure_child() -> int:
    job = json.loads(sys.stdin.read())
    results = []
    for _ in range(int(job["runs"])):
        wall, peak, code, output = run_child(job["argv"], job["env"])
        results.append({"wall_s": wall, "peak_rss_mib": peak, "exit": code, "output": output})
    print(json.dumps(results))
    return 0


def run_child(argv: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS MiB, exit status, stdout) of one child process."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=str(REPO), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stdout.close()
    return wall, usage.ru_maxrss / 1024.0, process.returncode, output.decode(errors="replace")


class CountingProxy:
    """A loopback HTTP proxy in front of OpenBao that counts the requests passing through it.

    OpenBao refuses to enable an audit device through the API, so the count is
    taken on the wire instead, in separate runs (the timed runs talk to the
    server directly, without the proxy's extra hop).
    """

    def __init__(self, upstream: str) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        target = urlsplit(upstream)
        proxy = self
        self.count = 0
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _forward(self) -> None:
                with proxy._lock:
                    proxy.count += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream_conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port,
                                                           timeout=30)
                try:
                    upstream_conn.request(self.command, self.path, body=body, headers=headers)
                    response = upstream_conn.getresponse()
                    payload = response.read()
                    self.send_response(response.status)
                    for key, value in response.getheaders():
                        if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                finally:
                    upstream_conn.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_LIST = _forward  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def take(self) -> int:
        with self._lock:
            count, self.count = self.count, 0
        return count

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        return measure_child()
    if args.runs < 10:
        parser.error("--runs must be at least 10")

    work = Path(tempfile.mkdtemp(prefix="claude-auth-sync-bench-"))
    try:
        result = bench(args.runs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if result is None:
        return 1
    print(json.dumps(result, indent=2))
    return 1 if args.strict and not all(result["meets"].values()) else 0


def bench(runs: int, work: Path) -> dict[str, Any] | None:
    """The measurements as a JSON-ready dict; None (after saying why on stderr) when a run failed."""
    import hvac  # type: ignore[import-untyped]

    from tests.support.openbao import OpenBaoServer

    home = work / "home"
    home.mkdir()
    with OpenBaoServer() as server:
        root = hvac.Client(url=server.address, token=server.root_token)
        set_up_user(root, server.address, home)
        stub_dir = stub_claude(work / "bin")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("VAULT_", "BAO_", "CLAUDE_AUTH_")) and k != "PYTHONDONTWRITEBYTECODE"}
        env.update(HOME=str(home), VAULT_ADDR=server.address, PATH=f"{stub_dir}{os.pathsep}{env.get('PATH', '')}",
                   PYTHONPYCACHEPREFIX=str(work / "pycache"))
        sync = [sys.executable, "-m", "reconcile", "sync", "--user", USER]
        proxy = CountingProxy(server.address)
        counted_env = dict(env, VAULT_ADDR=proxy.address)

        _, _, code, output = run_child(sync, counted_env)  # priming: the first backup
        if code != 0 or not output.startswith(f"OK {USER}: "):
            print(f"priming run failed ({code}): {output.strip()}", file=sys.stderr)
            return None
        priming_requests = proxy.take()
        requests: list[int] = []
        for _ in range(3):  # counted runs, through the proxy, nothing changed
            _, _, code, output = run_child(sync, counted_env)
            if code != 0 or "backup unchanged" not in output:
                print(f"sync run failed ({code}): {output.strip()}", file=sys.stderr)
                return None
            requests.append(proxy.take())
        proxy.stop()

        timed = measure(sync, env, runs)
        for run in timed:
            if run["exit"] != 0 or "backup unchanged" not in run["output"]:
                print(f"sync run failed ({run['exit']}): {run['output'].strip()}", file=sys.stderr)
                return None
        walls = [run["wall_s"] for run in timed]
        peaks = [run["peak_rss_mib"] for run in timed]
        baseline = measure([sys.executable, "-c", "import hvac"], env, runs)
        base_walls = [run["wall_s"] for run in baseline]
        base_peaks = [run["peak_rss_mib"] for run in baseline]
        bare = measure([sys.executable, "-c", "pass"], env, runs)
        versions = root.secrets.kv.v2.read_secret_metadata(
            path=f"{PATH_PREFIX}/{USER}", mount_point=KV_MOUNT)["data"]["current_version"]

    median_wall = statistics.median(walls)
    peak_rss = max(peaks)
    result = {
        "benchmark": "claude-auth sync, unchanged login, stub claude, local OpenBao",
        "runs": runs,
        "wall_s": summarize(walls),
        "peak_rss_mib": round(peak_rss, 1),
        "vault_requests_per_run": sorted(set(requests)),
        "vault_requests_first_backup": priming_requests,
        "kv_versions_after_all_runs": versions,
        "baseline_python_import_hvac": {"wall_s": summarize(base_walls), "peak_rss_mib": round(max(base_peaks), 1)},
        "baseline_python_start": {"wall_s": summarize([run["wall_s"] for run in bare]),
                                  "peak_rss_mib": round(max(run["peak_rss_mib"] for run in bare), 1)},
        "sync_minus_import_hvac_median_s": round(median_wall - statistics.median(base_walls), 4),
        "targets": TARGETS,
        "meets": {
            "median_wall_s": median_wall <= TARGETS["median_wall_s"],
            "peak_rss_mib": peak_rss <= TARGETS["peak_rss_mib"],
            "vault_requests_per_run": max(requests) <= TARGETS["vault_requests_per_run"],
        },
    }
    return result


if __name__ == "__main__":
    sys.exit(main())
