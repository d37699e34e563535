"""Simulated workstations for the fleet tests and bench: each a `--root` sandbox with its own host name.

A Host runs the real `claude-auth` as a subprocess (`python -m reconcile`), with
VAULT_ADDR pointed at one node of the raft cluster, the admin token in the
environment (never argv) and CLAUDE_AUTH_HOSTNAME set to its name. Hosts made
with `shared_home` see one /home (their `home` is a link to a common folder, as
an NFS mount would be).
"""

from __future__ import annotations

import http.server
import itertools
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import hvac
import hvac.exceptions
import requests as plain_requests
import yaml

REPO = Path(__file__).resolve().parents[2]
TOKEN_REL = ".config/claude-auth-sync/vault-token"
FIRST_UID = 6001


@dataclass
class Outcome:
    host: str
    code: int
    out: str
    err: str
    seconds: float


@dataclass
class Host:
    name: str
    root: Path
    address: str
    token: str
    roster: Path
    env_home: Path
    outputs: list[str] = field(default_factory=list)
    admin: bool = True
    """False: runs as the hourly timer does on an enrolled host, with no admin token anywhere (issue 23)."""

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("VAULT_", "BAO_", "CLAUDE_AUTH_"))}
        env.update(VAULT_ADDR=self.address, CLAUDE_AUTH_HOSTNAME=self.name, HOME=str(self.env_home),
                   PYTHONPATH=str(REPO))
        if self.admin:
            env["VAULT_TOKEN"] = self.token
        else:
            env["CLAUDE_AUTH_NO_ADMIN"] = "1"
        return env

    def host_token_file(self) -> Path:
        return self.root / "etc/claude-auth/host-token"

    def timer_enabled(self, user: str) -> bool:
        return (self.root / f"etc/systemd/system/timers.target.wants/claude-auth-sync@{user}.timer").is_symlink()

    def start(self, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "reconcile", *argv, "--roster", str(self.roster),
                                 "--root", str(self.root)], env=self.env(), cwd=str(REPO),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, *argv: str, timeout: float = 120) -> Outcome:
        started = time.monotonic()
        process = self.start(*argv)
        return self.finish(process, started, timeout)

    def finish(self, process: subprocess.Popen[str], started: float, timeout: float = 120) -> Outcome:
        out, err = process.communicate(timeout=timeout)
        self.outputs += [out, err]
        return Outcome(self.name, process.returncode, out, err, time.monotonic() - started)

    def token_file(self, user: str) -> Path:
        return self.root / "home" / user / TOKEN_REL

    def token_of(self, user: str) -> str | None:
        try:
            return self.token_file(user).read_text().strip() or None
        except OSError:
            return None

    def state_file(self) -> Path:
        return self.root / "var/lib/claude-auth/state.json"


def make_hosts(base: Path, count: int, users: Iterable[str], addresses: list[str], token: str, roster: Path, *,
               shared_home: bool, prefix: str = "host") -> list[Host]:
    """`count` hosts under `base`, host i pointed at addresses[i % len(addresses)]."""
    users = list(users)
    shared = base / "shared-home"
    if shared_home:
        _make_homes(shared, users)
    hosts = []
    for index in range(count):
        root = base / f"{prefix}{index}"
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n" + "".join(
            f"{name}:x:{FIRST_UID + i}:{FIRST_UID + i}::/home/{name}:/bin/bash\n" for i, name in enumerate(users)))
        if shared_home:
            (root / "home").symlink_to(shared)  # as an NFS mount of one /home
        else:
            _make_homes(root / "home", users)
        env_home = base / f"{prefix}{index}-env"
        env_home.mkdir()
        hosts.append(Host(f"{prefix}{index}", root, addresses[index % len(addresses)], token, roster, env_home))
    return hosts


def _make_homes(home_root: Path, users: list[str]) -> None:
    for i, name in enumerate(users):
        home = home_root / name
        home.mkdir(parents=True)
        os.chown(home, FIRST_UID + i, FIRST_UID + i)


def write_roster(path: Path, prefix: str, users: dict[str, dict[str, Any]]) -> None:
    document = {"vault": {"policy_prefix": prefix, "path_prefix": f"{prefix.rstrip('-')}/claude-users"},
                "users": users}
    path.write_text(yaml.safe_dump(document))


def run_all(hosts: list[Host], *argv: str, timeout: float = 300) -> list[Outcome]:
    """Every host runs the same command at the same time; each outcome's `seconds` ends when that host's does."""
    started = time.monotonic()
    processes = [(host, host.start(*argv)) for host in hosts]
    with ThreadPoolExecutor(max_workers=len(processes)) as pool:
        return list(pool.map(lambda pair: pair[0].finish(pair[1], started, timeout), processes))


def managed_tokens(client: hvac.Client, prefix: str) -> dict[str, dict[str, Any]]:
    """accessor -> lookup data of every live token the tool minted under this policy prefix (root
    client): people's tokens and host tokens (meta kind=host, issue 23)."""
    found: dict[str, dict[str, Any]] = {}
    keys = client.auth.token.list_accessors()["data"]["keys"]
    for accessor in keys:
        try:
            data = client.auth.token.lookup_accessor(accessor)["data"]
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden):
            continue  # gone, or an accessor a killed leader left without its token (403)
        meta = data.get("meta") or {}
        if meta.get("managed_by") == "claude-auth" and any(p.startswith(prefix) for p in data.get("policies") or ()):
            found[accessor] = data
    return found


def tool_tokens(client: hvac.Client, prefix: str) -> dict[str, dict[str, Any]]:
    """The people's tokens of managed_tokens: each host's own host token is in its file, not a person's."""
    return {a: d for a, d in managed_tokens(client, prefix).items() if (d.get("meta") or {}).get("kind") != "host"}


def host_tokens(client: hvac.Client, prefix: str) -> dict[str, list[str]]:
    """host name -> accessors of its live host tokens under this prefix."""
    found: dict[str, list[str]] = {}
    for accessor, data in managed_tokens(client, prefix).items():
        meta = data.get("meta") or {}
        if meta.get("kind") == "host":
            found.setdefault(str(meta.get("host")), []).append(accessor)
    return found


class Relay:
    """An HTTP relay on loopback in front of Vault nodes: a load balancer (round robin over `upstreams`,
    one request at a time), or a standby stand-in when `intercept` answers some requests itself.

    `intercept(method, path, answer)` sees each relayed answer (status, body) and may return another
    (status, headers, body) for the client instead. `delay` holds every answer back that long (a slow
    link, so a run is still in flight when a test breaks something). An upstream that refuses the
    connection is a 503 to the client, as a load balancer with no live backend answers.
    """

    def __init__(self, upstreams: list[str],
                 intercept: Callable[[str, str, tuple[int, bytes]], tuple[int, dict[str, str], bytes] | None]
                 | None = None, delay: float = 0.0) -> None:
        relay = self
        self.upstreams = upstreams
        self.intercept = intercept
        self.delay = delay
        self.relayed = 0
        """Requests answered so far (by the upstream or with the 503)."""
        self.turn = itertools.count()

        class Handler(http.server.BaseHTTPRequestHandler):
            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream = relay.upstreams[next(relay.turn) % len(relay.upstreams)]
                headers = {"Content-Type": "application/json"}
                try:
                    answer = plain_requests.request(self.command, upstream + self.path, data=body, timeout=30,
                                                    allow_redirects=False, headers={
                                                        k: v for k, v in self.headers.items() if k.lower() != "host"})
                    status, content = answer.status_code, answer.content
                    if "Location" in answer.headers:
                        headers["Location"] = answer.headers["Location"]
                except plain_requests.exceptions.ConnectionError as exc:
                    if "refused" not in str(exc).lower():
                        raise  # sent, answer lost: the client sees its connection drop, as with no relay
                    status, content = 503, b'{"errors":["no live upstream"]}'
                if relay.delay:
                    time.sleep(relay.delay)
                relay.relayed += 1
                if relay.intercept is not None:
                    replaced = relay.intercept(self.command, self.path, (status, content))
                    if replaced is not None:
                        status, headers, content = replaced
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_LIST = do_DELETE = _relay

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "Relay":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
