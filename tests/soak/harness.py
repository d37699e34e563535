"""The soak harness: a fleet, its people, their faults, and the invariants that must hold throughout.

What runs (all real, on loopback): the 3-node OpenBao raft cluster of tests/support/cluster.py;
one FaultProxy (tests/support/faultproxy.py) per host in front of the node that host names as its
VAULT_ADDR; the Messages API stand-in (tests/support/messages_api.py) for the real Claude CLI;
hosts that are `--root` sandboxes (two pairs sharing one /home) running `python -m reconcile
apply|plan` as root subprocesses; people's `python -m reconcile sync` run as their own uid, the
real `claude` probing their login.

Accelerated time: each host's "hourly" run (CLAUDE_AUTH_NO_ADMIN=1) comes every few seconds, the
admin's run every half minute or so and after each roster edit; syncs run back to back through a
few slots (2 cores: a probe costs about a second of CPU), so each person's login is synced every
minute or two instead of every six hours. People's own Claude processes rewrite their login file
(a refresh, under Claude's refresh lock) and now and then a losing racer writes a logged-out stub;
another tool of theirs writes sibling keys at their KV path; the admin hires, offboards (with
--prune) and reassigns people.

Faults come from a schedule drawn from the seed before anything runs (report["schedule"]), so a
failing run can be replayed with the same seed (the interleaving of the processes is the
machine's, not the seed's). Invariants are checked while it runs (tokens in the wrong person's
file, KV history, secrets in output) and at the end, after the faults stop and one quiet cycle
(an admin `apply --prune` on every host, one sync of every enabled person on every host, a
`plan` on every host) has run.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import hashlib
import heapq
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import hvac
import hvac.exceptions
import requests
import yaml

from reconcile.sync.credentials import oauth_problem
from tests.support.cluster import RaftCluster
from tests.support.faultproxy import FaultProxy
from tests.support.fleet import tool_tokens as fleet_tool_tokens
from tests.support.leaks import assert_no_secrets
from tests.support.messages_api import MessagesApiStandIn, digest

REPO = Path(__file__).resolve().parents[2]
TOKEN_REL = ".config/claude-auth-sync/vault-token"
FIRST_UID = 6001
PREFIX = "soak-"
PATH_PREFIX = "soak/claude-users"
KV_MOUNT = "secret"
SIBLING_CONSTANT = "vaultwarden_master_password"
SIBLING_COUNTER = "other_tool_counter"
FAULT_KINDS = ("kill_apply", "kill_sync", "leader_kill", "partition", "delay", "hold", "pause_node",
               "disk_full", "clock_jump", "self_lock")
STATUS_WORDS = ("OK", "RECOVERED", "SKIP", "FAIL")
SECRET_WORD = re.compile(r"[A-Za-z0-9_.+/=-]{16,}")


# --- parameters ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    seed: int
    minutes: float = 30.0
    hosts: int = 10
    shared_pairs: int = 2
    """Hosts 0+1, 2+3, ... share one /home (as an NFS mount would)."""
    people: int = 100
    hires: int = 10
    """Accounts that exist on every host but join the roster only when hired."""
    quiet_seconds: float = 0.0
    """Fault-free time before the quiet cycle (0: the faults run to the end of `minutes`)."""
    fault_interval: float = 4.0
    """Mean seconds between faults (exponential inter-arrival)."""
    hourly_interval: float = 6.0
    admin_interval: float = 40.0
    edit_interval: float = 30.0
    sync_slots: int = 3
    apply_slots: int = 2
    refresh_interval: float = 0.6
    kv_edit_interval: float = 1.0
    monitor_interval: float = 8.0
    bite: bool = False
    """After the real checks: break each of six invariants on purpose and show the checks catch it."""
    disk_full_host: int = -1
    """The host whose state folder (/var/lib/claude-auth) is a small tmpfs (-1: the last host)."""


# --- the schedule ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    at: float
    kind: str
    args: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"at": round(self.at, 2), "kind": self.kind, **self.args}


def draw_schedule(params: Params, fault_seconds: float) -> list[Fault]:
    """Every fault of the run, drawn from the seed alone (so the report's schedule replays)."""
    rng = random.Random(f"faults-{params.seed}")
    faults: list[Fault] = []
    at = rng.uniform(2, params.fault_interval)
    weights = {"kill_apply": 2, "kill_sync": 2, "leader_kill": 1, "partition": 1, "delay": 1, "hold": 1,
               "pause_node": 1, "disk_full": 1, "clock_jump": 1, "self_lock": 2}
    kinds, counts = list(weights), list(weights.values())
    # Every kind at least once in any run long enough: the first ten are one of each, shuffled.
    first = list(FAULT_KINDS)
    rng.shuffle(first)
    while at < fault_seconds - 5:
        kind = first.pop() if first else rng.choices(kinds, counts)[0]
        host = rng.randrange(params.hosts)
        args: dict[str, Any]
        if kind == "kill_apply":
            args = {"host": host, "admin": rng.random() < 0.6, "after": round(rng.uniform(0.1, 1.2), 2)}
        elif kind == "kill_sync":
            args = {"host": host, "person": rng.randrange(10_000), "after": round(rng.uniform(0.1, 1.5), 2)}
        elif kind == "leader_kill":
            args = {"down": round(rng.uniform(2.0, 8.0), 1)}
        elif kind == "partition":
            args = {"host": host, "seconds": round(rng.uniform(5, 20), 1), "how": rng.choice(["refuse", "hang"])}
        elif kind == "delay":
            args = {"host": host, "seconds": round(rng.uniform(8, 20), 1), "delay": round(rng.uniform(0.3, 3.0), 2)}
        elif kind == "hold":
            args = {"host": host, "seconds": round(rng.uniform(2, 9), 1),
                    "match": rng.choice(["POST /v1/auth/token/create", "/v1/secret/data/", "lookup-self",
                                         "/v1/sys/policies/acl/"])}
        elif kind == "pause_node":
            args = {"node": rng.choice(["leader", 0, 1, 2]), "seconds": round(rng.uniform(7, 14), 1)}
        elif kind == "disk_full":
            args = {"seconds": round(rng.uniform(8, 25), 1)}
        elif kind == "clock_jump":
            offset = rng.choice([-1, 1]) * rng.choice([rng.randint(120, 900), rng.randint(3600, 9 * 3600)])
            args = {"host": host, "offset_s": offset, "seconds": round(rng.uniform(15, 40), 1)}
        else:  # self_lock
            args = {"person": rng.randrange(10_000), "host": host,
                    "lock": rng.choice(["sync", "claude_refresh", "mint"]), "seconds": round(rng.uniform(4, 20), 1)}
        faults.append(Fault(at, kind, args))
        at += rng.expovariate(1 / params.fault_interval)
    return faults


# --- the people and the roster ---------------------------------------------------------------------


def host_groups(params: Params) -> list[tuple[str, list[int]]]:
    """Patterns that assign hosts sharing a /home alike: (pattern, host indexes)."""
    groups = []
    for pair in range(params.shared_pairs):
        a, b = 2 * pair, 2 * pair + 1
        groups.append((f"host[{a}{b}]", [a, b]))
    for index in range(2 * params.shared_pairs, params.hosts):
        groups.append((f"host{index}", [index]))
    return groups


@dataclass
class Person:
    name: str
    uid: int
    settings: dict[str, Any]
    in_roster: bool = True
    offboarded: bool = False

    @property
    def claude_auth(self) -> bool:
        return bool(self.settings.get("claude_auth", True))

    @property
    def parked(self) -> bool:
        return bool(self.settings.get("parked", False))

    @property
    def setup_token(self) -> bool:
        return self.settings.get("claude_login") == "setup-token"

    @property
    def enabled(self) -> bool:
        """Has a token (claude_auth) and a running sync timer (not parked)."""
        return self.in_roster and self.claude_auth and not self.parked


def draw_people(params: Params) -> list[Person]:
    rng = random.Random(f"people-{params.seed}")
    groups = host_groups(params)
    people = []
    for index in range(params.people + params.hires):
        settings: dict[str, Any] = {}
        roll = rng.random()
        if roll < 0.05:
            settings["claude_auth"] = False
        elif roll < 0.15:
            settings["parked"] = True
        if index < params.people and rng.random() < 0.10:
            settings["claude_login"] = "setup-token"
        if rng.random() < 0.9:  # most people work on one or two machines, some on every one
            settings["hosts"] = sorted(p for p, _ in rng.sample(groups, rng.choice([1, 1, 2])))
        people.append(Person(f"u{index:03d}", FIRST_UID + index, settings, in_roster=index < params.people))
    return people


def assigned(person: Person, host: str) -> bool:
    patterns = person.settings.get("hosts")
    return patterns is None or any(fnmatch.fnmatchcase(host, p) for p in patterns)


# --- hosts -------------------------------------------------------------------------------------------


@dataclass
class Host:
    index: int
    name: str
    root: Path
    home_root: Path
    """Where this host's /home really is (shared by a pair)."""
    proxy: FaultProxy
    env_home: Path
    clock_offset: int = 0
    fault_lock: threading.Lock = field(default_factory=threading.Lock)
    admin_due: bool = True
    prune_due: bool = False

    @property
    def address(self) -> str:
        return self.proxy.address

    @property
    def state_dir(self) -> Path:
        return self.root / "var/lib/claude-auth"

    def home(self, person: str) -> Path:
        return self.root / "home" / person

    def token_file(self, person: str) -> Path:
        return self.home(person) / TOKEN_REL


# --- what happened -----------------------------------------------------------------------------------


@dataclass
class Event:
    t: float
    kind: str
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"t": round(self.t, 2), "kind": self.kind, "detail": self.detail}


@dataclass
class Violation:
    invariant: str
    detail: str
    t: float
    event_index: int


INVARIANTS = {
    "tokens_work": "every enabled person has a working token on every host assigned to them",
    "logins_valid": "every enabled person has a valid login file on every host assigned to them",
    "backups_restorable": "every backup is of a restorable shape",
    "backups_fresh": ("per home, no backup of a home's login is older than one that home backed up before "
                      "(a proven login of another home may replace a newer one: SPEC's proven sync); after the "
                      "quiet cycle the backup is a login one of the person's homes holds"),
    "siblings_kept": "no sibling key at any KV path was ever lost (every version checked)",
    "no_orphan_tokens": "zero live tool-minted tokens that nothing references",
    "right_person": "no token ever in a file of the wrong person",
    "no_secrets_out": "no secret in any output",
    "converged": "every host converged (`plan`: No changes.) within one cycle of the last fault",
    "processes_end": "no run of the tool hung past its timeout",
    "no_tracebacks": "no run of the tool died of an uncaught exception (each is one clear message)",
}
HARNESS = "harness"


class Soak:
    def __init__(self, params: Params, claude_bin: Path, faketime_lib: Path | None, workdir: Path | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.params = params
        self.claude_bin = claude_bin
        self.faketime_lib = faketime_lib if faketime_lib and faketime_lib.exists() else None
        self.say = log or (lambda line: print(line, flush=True))
        self.workdir = workdir
        self.started = time.monotonic()
        self.lock = threading.RLock()
        self.events: list[Event] = []
        self.violations: list[Violation] = []
        self.checks: Counter[str] = Counter()
        self.ops: Counter[str] = Counter()
        self.faults_done: Counter[str] = Counter()
        self.faults_skipped: Counter[str] = Counter()
        self.stop = threading.Event()
        self.faults_over = threading.Event()
        self.secrets: set[str] = set()
        self.outputs_scanned = 0
        self.output_texts: list[str] = []
        self.processes: dict[int, subprocess.Popen[str]] = {}
        self.people: dict[str, Person] = {}
        self.hosts: list[Host] = []
        self.cluster = RaftCluster()
        self.api = MessagesApiStandIn()
        self.apply_slots = threading.BoundedSemaphore(params.apply_slots)
        self.sync_slots = threading.BoundedSemaphore(params.sync_slots)
        self.fault_slot = threading.BoundedSemaphore(1)
        self.node_states: dict[int, str] = {}
        self.sync_queue: list[tuple[float, int, str, int]] = []
        self.sync_counter = 0
        self.logins: dict[str, dict[str, Any]] = {}
        """home path -> the healthy login (claudeAiOauth) the person's Claude last wrote there."""
        self.setup_tokens: dict[str, str] = {}
        self.origin: dict[str, str] = {}
        """digest of a login's access token -> the home whose Claude wrote it."""
        self.copies: dict[str, set[str]] = {}
        """digest of a login's access token -> every home a restore put it in (its origin included)."""
        self.lineage: dict[str, dict[str, int]] = {}
        """KV path -> origin home -> the latest expiresAt backed up from it."""
        self.siblings: dict[str, dict[str, int]] = {}
        """KV path -> sibling key -> the version that first held it."""
        self.counters: dict[str, list[tuple[int, int]]] = {}
        """KV path -> (version, counter value) the other tool wrote."""
        self.kv_seen: dict[str, int] = {}
        """KV path -> versions already checked."""
        self.kv_expires: dict[str, int] = {}
        self.node_fault = threading.Lock()
        self.disk_fault = threading.Lock()
        """One disk-full at a time: two fillers of one tmpfs would end (unlink) each other's fault."""
        self.node_kills: Counter[str] = Counter()
        """leader_kill faults by what they killed: the leader, or (no leader found) some live node."""
        self.tracebacks: list[str] = []
        self.disk_full_ok: str = ""
        self.mounted: list[Path] = []
        self.schedule: list[Fault] = []
        self.roster_path = Path()
        self.base = Path()
        self.bin_dir = Path()
        self.last_fault_end = 0.0
        self.t0 = 0.0
        self.faketime_pids: list[int] = []
        self.harness_error = ""
        self.events_file: Any = None
        """Every event as one JSON line, as it happens (SOAK_EVENTS names the file)."""
        if os.environ.get("SOAK_EVENTS"):
            self.events_file = open(os.environ["SOAK_EVENTS"], "w", buffering=1)
        self.quiet: dict[str, Any] = {}

    # --- bookkeeping ---------------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.started

    def event(self, kind: str, detail: str = "") -> None:
        with self.lock:
            self.events.append(Event(self.now(), kind, detail))
            if self.events_file is not None:
                self.events_file.write(json.dumps(self.events[-1].as_json()) + "\n")
        if os.environ.get("SOAK_VERBOSE") == "1":
            self.say(f"{self.now():8.2f} {kind:<10} {detail}")

    def violate(self, invariant: str, detail: str) -> None:
        with self.lock:
            self.events.append(Event(self.now(), "VIOLATION", f"{invariant}: {detail}"))
            self.violations.append(Violation(invariant, detail, self.now(), len(self.events) - 1))
        self.say(f"soak: VIOLATION {invariant}: {detail}")

    def remember(self, value: Any) -> None:
        if isinstance(value, str) and len(value) >= 12:
            with self.lock:
                self.secrets.add(value)
        elif isinstance(value, dict):
            for item in value.values():
                self.remember(item)

    def scan_output(self, text: str, where: str) -> None:
        """A token-shaped word of any output that is a known secret is a leak (checked as it comes)."""
        if not text:
            return
        with self.lock:
            self.output_texts.append(text)
            known = self.secrets
            self.outputs_scanned += 1
            self.checks["no_secrets_out"] += 1
            leaked = [w for w in SECRET_WORD.findall(text) if w in known]
        if leaked:
            self.violate("no_secrets_out", f"a secret of length {len(leaked[0])} in the output of {where}")

    # --- set-up --------------------------------------------------------------------------------------

    def setup(self) -> None:
        p = self.params
        self.base = Path(tempfile.mkdtemp(prefix="claude-auth-soak-", dir=self.workdir or "/var/tmp"))
        self.base.chmod(0o755)
        self.say(f"soak: seed {p.seed}, {p.hosts} hosts, {p.people} people, {p.minutes} min, under {self.base}")
        self.cluster.start()
        self.cluster.enable_kv(KV_MOUNT)
        self.remember(self.cluster.root_token)
        self.remember(self.cluster.unseal_key)
        root = self.root_client()
        # Every version is kept, so the history of each path can be checked whole.
        for _ in range(100):  # a new KV v2 mount answers 400 "Upgrading ..." for a moment
            try:
                root.secrets.kv.v2.configure(max_versions=1_000_000, mount_point=KV_MOUNT)
                break
            except hvac.exceptions.InvalidRequest:
                time.sleep(0.3)
        else:
            raise RuntimeError("the KV mount never took its configuration")
        self.api.start()
        self.bin_dir = self.base / "bin"
        self.bin_dir.mkdir()
        (self.bin_dir / "claude").symlink_to(self.claude_bin)
        for person in draw_people(p):
            self.people[person.name] = person
        self.roster_path = self.base / "roster.yaml"
        self.write_roster()
        shared: dict[int, Path] = {}
        disk_host = p.disk_full_host % p.hosts
        for index in range(p.hosts):
            pair = index // 2 if index < 2 * p.shared_pairs else None
            root_dir = self.base / f"host{index}"
            (root_dir / "etc").mkdir(parents=True)
            (root_dir / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n" + "".join(
                f"{u.name}:x:{u.uid}:{u.uid}::/home/{u.name}:/bin/bash\n" for u in self.people.values()))
            if pair is not None and pair in shared:
                home_root = shared[pair]
                (root_dir / "home").symlink_to(home_root)
            else:
                home_root = self.base / (f"shared-home{pair}" if pair is not None else f"host{index}-home")
                home_root.mkdir()
                home_root.chmod(0o755)
                for u in self.people.values():
                    (home_root / u.name).mkdir()
                    os.chown(home_root / u.name, u.uid, u.uid)
                if pair is not None:
                    shared[pair] = home_root
                    (root_dir / "home").symlink_to(home_root)
                else:
                    (root_dir / "home").symlink_to(home_root)
            node = self.cluster.nodes[index % len(self.cluster.nodes)]
            proxy = FaultProxy(node.api_port).start()
            env_home = self.base / f"host{index}-env"
            env_home.mkdir()
            host = Host(index, f"host{index}", root_dir, home_root, proxy, env_home)
            if index == disk_host:
                self.mount_small_state(host)
            self.hosts.append(host)
        self.event("setup", f"cluster up, {p.hosts} hosts")
        # First admin apply everywhere (as the administrator's roll-out), then logins and setup tokens.
        threads = [threading.Thread(target=self.run_apply, args=(h, True, False)) for h in self.hosts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for person in self.people.values():
            if person.in_roster and person.claude_auth and not person.setup_token:
                for home in self.homes_of(person):
                    self.write_login(person, home)
        for person in self.people.values():
            if person.in_roster and person.claude_auth and person.setup_token:
                self.store_setup_token(person)
        self.rebuild_sync_queue()
        self.event("setup", "done")

    def mount_small_state(self, host: Host) -> None:
        """The disk-full host: its state folder is a 512 KiB tmpfs that a fault fills to the last byte."""
        host.state_dir.mkdir(parents=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(host.state_dir)],
                              capture_output=True, text=True)
        if done.returncode == 0:
            self.mounted.append(host.state_dir)
            self.disk_full_ok = f"tmpfs of 512 KiB at {host.name}:/var/lib/claude-auth"
        else:
            self.disk_full_ok = ""
            self.say(f"soak: cannot mount a tmpfs ({done.stderr.strip()}): disk_full faults are skipped")

    def majority_leader(self, timeout: float = 10.0) -> Any:
        """The node most live nodes name as leader (sys/leader), active by its own account too.

        Not cluster.wait_leader, which wants every node to agree: OpenBao 2.7.2 was seen here to let
        an active node resumed after a SIGSTOP longer than an election keep calling itself active for
        minutes beside the new one (see the report's notes), and the harness must see past that.
        """
        deadline = time.monotonic() + timeout
        while True:
            votes: Counter[str] = Counter()
            for node in self.cluster.nodes:
                if not node.alive:
                    continue
                try:
                    with requests.get(f"{node.address}/v1/sys/leader", timeout=1) as answer:
                        address = answer.json().get("leader_address") or ""
                except (requests.RequestException, ValueError):
                    continue
                if address:
                    votes[address] += 1
            if votes:
                address, count = votes.most_common(1)[0]
                node = next((n for n in self.cluster.nodes if n.address == address and n.alive), None)
                if node is not None and count >= 2:
                    return node
            if time.monotonic() > deadline:
                seen = {f"node{n.index}": (self.cluster.health(n) or {}).get("standby", "no answer") if n.alive
                        else "dead" for n in self.cluster.nodes}
                raise RuntimeError(f"no leader that most nodes agree on (votes {dict(votes)}, standby: {seen})")
            time.sleep(0.2)

    def restart_node(self, node: Any, wait: bool = True) -> None:
        """cluster.restart without its wait for every node to agree on a leader (see majority_leader)."""
        self.cluster._spawn(node)
        deadline = time.monotonic() + 120
        self.cluster._wait_listening(node, deadline)
        self.cluster._unseal(node, deadline)
        if wait:
            self.majority_leader(max(1.0, deadline - time.monotonic()))

    def stale_actives(self) -> list[Any]:
        """Nodes that call themselves active while the majority names another."""
        try:
            leader = self.majority_leader(5)
        except RuntimeError:
            return []
        stale = []
        for node in self.cluster.nodes:
            if node is leader or not node.alive:
                continue
            body = self.cluster.health(node) or {}
            if body.get("initialized") and not body.get("sealed") and body.get("standby") is False:
                stale.append(node)
        return stale

    def root_client(self, timeout: float = 10.0) -> hvac.Client:
        leader = self.majority_leader(timeout)
        return hvac.Client(url=leader.address, token=self.cluster.root_token, timeout=5)

    def hosts_of(self, person: Person) -> list[Host]:
        return [h for h in self.hosts if assigned(person, h.name)]

    def homes_of(self, person: Person) -> list[Path]:
        seen: dict[Path, Path] = {}
        for host in self.hosts_of(person):
            seen.setdefault(host.home_root / person.name, host.home_root / person.name)
        return list(seen)

    # --- the person's Claude ---------------------------------------------------------------------

    def new_oauth(self) -> dict[str, Any]:
        with self.lock:
            self.sync_counter += 1
            expires = int(time.time() * 1000) + 8 * 3_600_000 + self.sync_counter
        oauth = {"accessToken": "sk-ant-oat01-" + secrets.token_urlsafe(32),
                 "refreshToken": "sk-ant-ort01-" + secrets.token_urlsafe(32),
                 "expiresAt": expires, "scopes": ["user:inference", "user:profile", "user:sessions:claude_code"],
                 "subscriptionType": "enterprise"}
        self.remember(oauth)
        self.api.accept(oauth["accessToken"])
        return oauth

    def write_login(self, person: Person, home: Path, oauth: dict[str, Any] | None = None,
                    stub: bool = False) -> None:
        """What the person's Claude writes: a login after a refresh (under Claude's refresh lock), or
        the logged-out stub of a losing refresh racer (#76561: no lock, empty tokens, expiresAt 0)."""
        claude_dir = home / ".claude"
        if not claude_dir.exists():
            claude_dir.mkdir(mode=0o700)
            os.chown(claude_dir, person.uid, person.uid)
        path = claude_dir / ".credentials.json"
        try:
            document = json.loads(path.read_text())
            if not isinstance(document, dict):
                document = {}
        except (OSError, ValueError):
            mcp = {"github|soak": {"serverName": "github", "accessToken": "mcp-" + secrets.token_hex(16),
                                   "expiresAt": 1900000000000}}
            self.remember(mcp)
            document = {"mcpOAuth": mcp}
        if stub:
            document["claudeAiOauth"] = {"accessToken": "", "refreshToken": "", "expiresAt": 0, "scopes": []}
            self.atomic_write(path, document, person.uid)
            return
        oauth = oauth or self.new_oauth()
        lock = claude_dir / ".oauth_refresh.lock"
        deadline = time.monotonic() + 8  # Claude waits about 8 s for a held lock
        while True:
            try:
                os.mkdir(lock)
                break
            except FileExistsError:
                if time.monotonic() > deadline:
                    self.ops["claude_refresh_gave_up"] += 1
                    return
                time.sleep(0.1)
        try:
            document["claudeAiOauth"] = oauth
            self.atomic_write(path, document, person.uid)
            with self.lock:
                self.logins[str(home)] = oauth
                key = digest(str(oauth["accessToken"]))
                self.origin[key] = str(home)
                self.copies.setdefault(key, set()).add(str(home))
        finally:
            os.rmdir(lock)

    @staticmethod
    def atomic_write(path: Path, document: dict[str, Any], uid: int) -> None:
        temp = path.with_name(f".credentials.json.soak-{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.chown(temp, uid, uid)
        os.replace(temp, path)

    def store_setup_token(self, person: Person) -> None:
        hosts = self.hosts_of(person)
        if not hosts:
            return
        token = "sk-ant-oat01-" + secrets.token_urlsafe(60)
        self.remember(token)
        self.api.accept(token)
        self.setup_tokens[person.name] = token
        host = hosts[0]
        done = self.run_person(person, host, ["setup-token", "--user", person.name], stdin=token + "\n",
                               kind="setup_token")
        if done is None or done[0] != 0:
            self.event("setup_token_failed", f"{person.name} on {host.name}")

    # --- running the tool --------------------------------------------------------------------------

    def base_env(self, host: Host, shifted: bool = True) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("VAULT_", "BAO_", "CLAUDE_AUTH_", "ANTHROPIC_", "CLAUDE_CODE_", "FAKETIME",
                                    "LD_PRELOAD"))}
        env.update(VAULT_ADDR=host.address, CLAUDE_AUTH_HOSTNAME=host.name, PYTHONPATH=str(REPO),
                   CLAUDE_AUTH_VAULT_DEADLINE="40")
        if shifted and host.clock_offset and self.faketime_lib is not None:
            # The host's wall clock is off by clock_offset seconds; its monotonic clock is not (as after
            # a real step of the clock). Files keep the kernel's real times: see the report's notes.
            env.update(LD_PRELOAD=str(self.faketime_lib), FAKETIME=f"{host.clock_offset:+d}s",
                       FAKETIME_DONT_FAKE_MONOTONIC="1", FAKETIME_NO_CACHE="1")
        return env

    def spawn(self, argv: list[str], env: dict[str, str], uid: int | None, stdin: str | None) -> subprocess.Popen[str]:
        process = subprocess.Popen(argv, env=env, cwd="/" if uid else str(REPO), text=True,
                                   stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                   user=uid, group=uid, extra_groups=[] if uid else None)
        with self.lock:
            self.processes[process.pid] = process
        return process

    def finish(self, process: subprocess.Popen[str], where: str, stdin: str | None, kill_after: float | None,
               timeout: float) -> tuple[int, str, str, bool]:
        """(exit code, stdout, stderr, killed); a kill is SIGKILL of the whole process group (as systemd
        stops a unit: the claude child too)."""
        killed = False
        try:
            if kill_after is not None:
                try:
                    out, err = process.communicate(stdin, timeout=kill_after)
                except subprocess.TimeoutExpired:
                    self.kill_group(process)
                    killed = True
                    out, err = process.communicate(timeout=30)
            else:
                try:
                    out, err = process.communicate(stdin, timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.kill_group(process)
                    out, err = process.communicate(timeout=30)
                    self.violate("processes_end", f"{where} still ran after {timeout:.0f} s (killed)")
        finally:
            with self.lock:
                self.processes.pop(process.pid, None)
                self.checks["processes_end"] += 1
        self.scan_output(out, where)
        self.scan_output(err, where)
        self.keep_traceback(err, where)
        return process.returncode, out, err, killed

    def keep_traceback(self, err: str, where: str) -> None:
        """A product traceback goes to the events file whole (known secrets masked) so a soak's crash can
        be read afterwards; it is a violation of no_tracebacks."""
        with self.lock:
            self.checks["no_tracebacks"] += 1
        start = err.find("Traceback (most recent call last)") if err else -1
        if start < 0:
            return
        text = err[start:][-6000:]
        with self.lock:
            for secret in sorted(self.secrets, key=len, reverse=True):
                text = text.replace(secret, "<secret>")
            self.tracebacks.append(text)
        self.event("traceback", f"{where}:\n{text}")
        last = (text.strip().splitlines() or [""])[-1][:200]
        self.violate("no_tracebacks", f"{where}: {last}")

    @staticmethod
    def kill_group(process: subprocess.Popen[str]) -> None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def run_apply(self, host: Host, admin: bool, prune: bool, command: str = "apply",
                  kill_after: float | None = None) -> tuple[int, str, str, bool] | None:
        env = self.base_env(host)
        env["HOME"] = str(host.env_home)
        if admin:
            env["VAULT_TOKEN"] = self.cluster.root_token
        else:
            env["CLAUDE_AUTH_NO_ADMIN"] = "1"
        argv = [sys.executable, "-m", "reconcile", command, "--roster", str(self.roster_path), "--root",
                str(host.root)] + (["--prune"] if prune else [])
        label = f"{command}{'-admin' if admin else '-hourly'}{'-prune' if prune else ''}"
        slots = self.fault_slot if kill_after is not None else self.apply_slots
        if not slots.acquire(timeout=10 if kill_after is not None else None):
            return None
        try:
            if self.stop.is_set() and kill_after is None and command == "apply" and not self.quiet.get("running"):
                return None
            process = self.spawn(argv, env, None, None)
            if "LD_PRELOAD" in env:
                self.faketime_pids.append(process.pid)
            self.event("start", f"{label} {host.name} pid {process.pid}")
            result = self.finish(process, f"{label} on {host.name}", None, kill_after, 240)
        finally:
            slots.release()
        code, out, err, killed = result
        word = "killed" if killed else f"exit{code}"
        self.ops[f"{label}:{word}"] += 1
        tail = (out.strip().splitlines() or [""])[-1][:160]
        errline = (err.strip().splitlines() or [""])[-1][:200]
        self.event("end", f"{label} {host.name} {word}: {tail}" + (f" | {errline}" if code and errline else ""))
        if admin and not killed and code == 0:
            host.admin_due = False
            if prune:
                host.prune_due = False
        return result

    def person_env(self, person: Person, host: Host) -> dict[str, str]:
        # Not shifted: under libfaketime the Claude CLI (a bun binary) cannot open the shared memory its
        # parent made and exits 1 at once, so a clock jump reaches the host's root runs only.
        env = self.base_env(host, shifted=False)
        env.update(HOME=str(host.home(person.name)), LANG="C.UTF-8", PATH=f"{self.bin_dir}:/usr/bin:/bin",
                   CLAUDE_AUTH_KV_MOUNT=KV_MOUNT, CLAUDE_AUTH_PATH_PREFIX=PATH_PREFIX,
                   CLAUDE_AUTH_POLICY_PREFIX=PREFIX, CLAUDE_AUTH_MODEL="haiku",
                   CLAUDE_AUTH_LOGIN="setup-token" if person.setup_token else "oauth",
                   CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1",
                   ANTHROPIC_BASE_URL=self.api.base_url, CLAUDE_AUTH_CLAUDE_TIMEOUT="60")
        return env

    def run_person(self, person: Person, host: Host, args: list[str], *, stdin: str | None = None,
                   kind: str = "sync", kill_after: float | None = None) -> tuple[int, str, str, bool] | None:
        argv = [sys.executable, "-m", "reconcile", *args]
        process = self.spawn(argv, self.person_env(person, host), person.uid, stdin)
        self.event("start", f"{kind} {person.name}@{host.name} pid {process.pid}")
        result = self.finish(process, f"{kind} of {person.name} on {host.name}", stdin, kill_after, 300)
        code, out, err, killed = result
        status = "killed" if killed else next((w for w in STATUS_WORDS if out.startswith(w)), f"exit{code}")
        last = (out.strip().splitlines() or [""])[-1]
        status = "killed" if killed else next((w for w in STATUS_WORDS if last.startswith(w)), status)
        self.ops[f"{kind}:{status}"] += 1
        if status == "RECOVERED":  # the backup's login is now in this home too
            try:
                restored = json.loads((host.home(person.name) / ".claude/.credentials.json").read_text())
                key = digest(str(restored["claudeAiOauth"]["accessToken"]))
                with self.lock:
                    self.copies.setdefault(key, set()).add(str(host.home_root / person.name))
            except (OSError, ValueError, KeyError, TypeError):
                pass
        self.event("end", f"{kind} {person.name}@{host.name} {status}: {last[:200]}"
                   + (f" | {(err.strip().splitlines() or [''])[-1][:200]}" if code and err.strip() else ""))
        return result

    def sync(self, person: Person, host: Host, kill_after: float | None = None) -> tuple[int, str, str, bool] | None:
        # A kill fault runs in a slot of its own (one at a time; skipped when that is busy for 10 s).
        slots = self.fault_slot if kill_after is not None else self.sync_slots
        if not slots.acquire(timeout=10 if kill_after is not None else None):
            return None
        try:
            return self.run_person(person, host, ["sync", "--user", person.name], kill_after=kill_after)
        finally:
            slots.release()

    # --- the actors --------------------------------------------------------------------------------

    def rebuild_sync_queue(self) -> None:
        with self.lock:
            wanted = {(p.name, h.index) for p in self.people.values() if p.enabled for h in self.hosts_of(p)}
            have = {(name, index) for _, _, name, index in self.sync_queue}
            self.sync_queue = [e for e in self.sync_queue if (e[2], e[3]) in wanted]
            for name, index in sorted(wanted - have):
                self.sync_queue.append((0.0, random.random(), name, index))  # noqa: S311 (order only)
            heapq.heapify(self.sync_queue)

    def sync_worker(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                if not self.sync_queue:
                    entry = None
                else:
                    entry = heapq.heappop(self.sync_queue)
            if entry is None:
                time.sleep(0.5)
                continue
            _, tie, name, index = entry
            person, host = self.people[name], self.hosts[index]
            if person.enabled and assigned(person, host.name):
                self.sync(person, host)
            with self.lock:
                if person.enabled and assigned(person, host.name):
                    heapq.heappush(self.sync_queue, (self.now(), tie, name, index))

    def host_loop(self, host: Host) -> None:
        rng = random.Random(f"host-{self.params.seed}-{host.index}")
        next_admin = self.now() + rng.uniform(5, self.params.admin_interval)
        while not self.stop.wait(rng.uniform(0.5, 1.5) * self.params.hourly_interval):
            admin = host.admin_due or self.now() >= next_admin
            if admin:
                next_admin = self.now() + self.params.admin_interval * rng.uniform(0.7, 1.3)
            self.run_apply(host, admin, host.prune_due if admin else False)

    def claude_loop(self) -> None:
        rng = random.Random(f"claude-{self.params.seed}")
        while not self.stop.wait(self.params.refresh_interval):
            people = [p for p in self.people.values() if p.in_roster and p.claude_auth and not p.setup_token]
            if not people:
                continue
            person = rng.choice(people)
            homes = self.homes_of(person)
            if not homes:
                continue
            home = rng.choice(homes)
            if not (home / ".claude").exists():
                continue
            if rng.random() < 0.08 and person.enabled and self.has_backup(person):
                self.write_login(person, home, stub=True)
                self.ops["claude_stub"] += 1
                self.event("claude", f"stub {person.name} {home.parent.name}")
            else:
                self.write_login(person, home)
                self.ops["claude_refresh"] += 1
                self.event("claude", f"refresh {person.name} {home.parent.name}")
                host = next((h for h in self.hosts_of(person) if h.home_root / person.name == home), None)
                if host is not None and person.enabled and rng.random() < 0.25:
                    # What the person's path unit does on a change of the file: a backup that never
                    # replaces a newer stored login (checked per home by backups_fresh).
                    threading.Thread(target=self.run_person, args=(person, host, ["sync", "--backup-only",
                                     "--user", person.name]), kwargs={"kind": "backup-only"}, daemon=True).start()

    def has_backup(self, person: Person) -> bool:
        return self.kv_expires.get(self.kv_path(person.name), 0) > 0

    @staticmethod
    def kv_path(name: str) -> str:
        return f"{PATH_PREFIX}/{name}"

    def kv_edit_loop(self) -> None:
        """Another tool of the person's: read, merge its own keys, check-and-set, retry on a conflict."""
        rng = random.Random(f"kv-{self.params.seed}")
        serial = 0
        while not self.stop.wait(self.params.kv_edit_interval):
            name = rng.choice(sorted(self.people))
            path = self.kv_path(name)
            serial += 1
            try:
                client = self.root_client(5)
                for _ in range(10):
                    try:
                        read = client.secrets.kv.v2.read_secret_version(path=path, mount_point=KV_MOUNT,
                                                                        raise_on_deleted_version=False)
                        version, data = int(read["data"]["metadata"]["version"]), dict(read["data"]["data"] or {})
                    except hvac.exceptions.InvalidPath:
                        version, data = 0, {}
                    key = f"other_tool_{serial}"
                    counter = int(data.get(SIBLING_COUNTER, 0) or 0) + 1
                    data.update({key: f"v{serial}", SIBLING_COUNTER: counter, SIBLING_CONSTANT: "hunter2-not-secret"})
                    try:
                        written = client.secrets.kv.v2.create_or_update_secret(path=path, secret=data, cas=version,
                                                                               mount_point=KV_MOUNT)
                    except hvac.exceptions.InvalidRequest as exc:
                        if "check-and-set" in str(exc):
                            self.ops["kv_edit_cas_retry"] += 1
                            continue
                        raise
                    new = int(written["data"]["version"])
                    with self.lock:
                        keys = self.siblings.setdefault(path, {})
                        keys[key] = new
                        keys.setdefault(SIBLING_CONSTANT, new)
                        self.counters.setdefault(path, []).append((new, counter))
                    self.ops["kv_edit"] += 1
                    break
            except (hvac.exceptions.VaultError, requests.RequestException, RuntimeError) as exc:
                self.ops["kv_edit_unavailable"] += 1
                self.event("kv_edit", f"{name}: {type(exc).__name__}")

    def edit_loop(self) -> None:
        """The administrator: hires, offboarding with --prune, reassigning hosts, parking."""
        rng = random.Random(f"edits-{self.params.seed}")
        groups = host_groups(self.params)
        while not self.stop.wait(self.params.edit_interval * rng.uniform(0.6, 1.4)):
            members = sorted(p.name for p in self.people.values() if p.in_roster)
            pool = sorted(p.name for p in self.people.values() if not p.in_roster and not p.offboarded)
            op = rng.choice(["hire", "offboard", "reassign", "park"])
            prune = False
            with self.lock:
                if op == "hire" and pool:
                    person = self.people[pool[0]]
                    person.settings.pop("claude_login", None)
                    person.in_roster = True
                    detail = person.name
                elif op == "offboard" and members:
                    person = self.people[rng.choice(members)]
                    person.in_roster = False
                    person.offboarded = True
                    prune = True
                    detail = person.name
                elif op == "reassign" and members:
                    person = self.people[rng.choice(members)]
                    person.settings["hosts"] = sorted(p for p, _ in rng.sample(groups, rng.choice([1, 2])))
                    prune = True
                    detail = f"{person.name} -> {person.settings['hosts']}"
                elif op == "park" and members:
                    person = self.people[rng.choice(members)]
                    person.settings["parked"] = not person.parked
                    detail = f"{person.name} parked={person.parked}"
                else:
                    continue
                self.write_roster()
                for host in self.hosts:
                    host.admin_due = True
                    host.prune_due = host.prune_due or prune
            self.ops[f"roster_{op}"] += 1
            self.event("roster", f"{op} {detail}")
            if op in ("hire", "reassign") and person.claude_auth and not person.setup_token:
                for home in self.homes_of(person):
                    if not (home / ".claude" / ".credentials.json").exists():
                        self.write_login(person, home)  # the person logs in on the new machine
            self.rebuild_sync_queue()

    def write_roster(self) -> None:
        users = {p.name: dict(p.settings) for p in self.people.values() if p.in_roster}
        document = {"vault": {"policy_prefix": PREFIX, "path_prefix": PATH_PREFIX, "kv_mount": KV_MOUNT},
                    "users": users}
        temp = self.roster_path.with_suffix(".tmp")
        temp.write_text(yaml.safe_dump(document))
        temp.replace(self.roster_path)

    # --- faults ------------------------------------------------------------------------------------

    def fault_loop(self) -> None:
        threads = []
        for fault in self.schedule:
            while self.now() - self.t0 < fault.at:
                if self.stop.wait(0.1):
                    return
            thread = threading.Thread(target=self.do_fault, args=(fault,), daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()

    def pick_person(self, seed: int, host: Host | None = None) -> Person | None:
        people = sorted((p for p in self.people.values() if p.enabled and (host is None or assigned(p, host.name))),
                        key=lambda p: p.name)
        return people[seed % len(people)] if people else None

    def do_fault(self, fault: Fault) -> None:
        args = fault.args
        kind = fault.kind
        try:
            done = getattr(self, f"fault_{kind}")(**args)
        except Exception as exc:  # a fault that could not be applied is counted, never hidden
            done = False
            self.event("fault_error", f"{kind}: {type(exc).__name__}: {exc}")
        self.event("FAULT_DONE" if done else "FAULT_SKIP", f"{kind} {args}")
        if done:
            self.faults_done[kind] += 1
        else:
            self.faults_skipped[kind] += 1
        with self.lock:
            self.last_fault_end = max(self.last_fault_end, self.now())

    def fault_kill_apply(self, host: int, admin: bool, after: float) -> bool:
        target = self.hosts[host]
        self.event("FAULT", f"kill_apply {target.name} admin={admin} after {after} s")
        result = self.run_apply(target, admin, False, kill_after=after)
        return result is not None and result[3]

    def fault_kill_sync(self, host: int, person: int, after: float) -> bool:
        target = self.hosts[host]
        who = self.pick_person(person, target)
        if who is None:
            return False
        self.event("FAULT", f"kill_sync {who.name}@{target.name} after {after} s")
        result = self.sync(who, target, kill_after=after)
        return result is not None and result[3]

    def fault_leader_kill(self, down: float) -> bool:
        # Waits for a node fault in progress instead of skipping (a 30-minute run once did no leader
        # kill at all), and kills some live node when no leader is agreed on: counted apart.
        if not self.node_fault.acquire(timeout=90):
            return False
        try:
            node, what = None, "leader"
            for _ in range(3):
                try:
                    node = self.majority_leader(20)
                    break
                except RuntimeError as exc:
                    self.event("fault_note", f"leader_kill: {exc}")
            if node is None:
                live = [n for n in self.cluster.nodes if n.alive]
                if not live:
                    return False
                node, what = random.Random(self.params.seed + len(self.events)).choice(live), "other_node"
            self.node_kills[what] += 1
            self.event("FAULT", f"leader_kill node{node.index} ({what}) for {down} s")
            self.cluster.kill(node)
            time.sleep(down)
            self.restart_node(node)
            self.event("FAULT_END", f"node{node.index} restarted")
            return True
        finally:
            self.node_fault.release()

    def fault_pause_node(self, node: str | int, seconds: float) -> bool:
        if not self.node_fault.acquire(blocking=False):
            return False
        try:
            target = self.majority_leader(30) if node == "leader" else self.cluster.nodes[int(node)]
            assert target.process is not None
            self.event("FAULT", f"pause_node node{target.index} ({node}) SIGSTOP for {seconds} s")
            os.killpg(target.process.pid, signal.SIGSTOP)
            try:
                time.sleep(seconds)
            finally:
                os.killpg(target.process.pid, signal.SIGCONT)
            self.majority_leader(60)
            self.event("FAULT_END", f"node{target.index} SIGCONT")
            return True
        finally:
            self.node_fault.release()

    def fault_partition(self, host: int, seconds: float, how: str) -> bool:
        target = self.hosts[host]
        if not target.fault_lock.acquire(blocking=False):
            return False
        try:
            self.event("FAULT", f"partition {target.name} ({how}) for {seconds} s")
            target.proxy.refuse() if how == "refuse" else target.proxy.hang()
            time.sleep(seconds)
            target.proxy.passthrough()
            self.event("FAULT_END", f"partition {target.name} healed")
            return True
        finally:
            target.fault_lock.release()

    def fault_delay(self, host: int, seconds: float, delay: float) -> bool:
        target = self.hosts[host]
        if not target.fault_lock.acquire(blocking=False):
            return False
        try:
            self.event("FAULT", f"delay {target.name}: every answer {delay} s late for {seconds} s")
            target.proxy.on_reply = lambda head, number: time.sleep(delay)  # type: ignore[func-returns-value]
            time.sleep(seconds)
            target.proxy.on_reply = None
            self.event("FAULT_END", f"delay {target.name} over")
            return True
        finally:
            target.fault_lock.release()

    def fault_hold(self, host: int, seconds: float, match: str) -> bool:
        target = self.hosts[host]
        if not target.fault_lock.acquire(blocking=False):
            return False
        try:
            self.event("FAULT", f"hold {target.name}: answers to {match!r} held for {seconds} s")
            target.proxy.hold(match.encode())
            time.sleep(seconds)
            target.proxy.release()
            target.proxy.hold_match = None
            self.event("FAULT_END", f"hold {target.name} released")
            return True
        finally:
            target.fault_lock.release()

    def fault_disk_full(self, seconds: float) -> bool:
        if not self.mounted or not self.disk_fault.acquire(blocking=False):
            return False
        try:
            return self.fill_disk(self.mounted[0], seconds)
        finally:
            self.disk_fault.release()

    def fill_disk(self, folder: Path, seconds: float) -> bool:
        filler = folder / "soak-filler"
        self.event("FAULT", f"disk_full {folder.parent.parent.parent.name} for {seconds} s")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
            try:
                while True:  # the last bytes too
                    os.write(fd, b"\0")
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
        finally:
            os.close(fd)
        try:
            time.sleep(seconds)
        finally:
            filler.unlink()
        self.event("FAULT_END", "disk_full over")
        return True

    def fault_clock_jump(self, host: int, offset_s: int, seconds: float) -> bool:
        if self.faketime_lib is None:
            return False
        target = self.hosts[host]
        if target.clock_offset:
            return False
        self.event("FAULT", f"clock_jump {target.name} by {offset_s:+d} s for {seconds} s")
        target.clock_offset = offset_s
        time.sleep(seconds)
        target.clock_offset = 0
        self.event("FAULT_END", f"clock of {target.name} back")
        return True

    def fault_self_lock(self, person: int, host: int, lock: str, seconds: float) -> bool:
        target = self.hosts[host]
        who = self.pick_person(person, target)
        if who is None:
            return False
        home = target.home(who.name)
        self.event("FAULT", f"self_lock {who.name}@{target.name} holds {lock} for {seconds} s")
        if lock == "claude_refresh":
            folder = home / ".claude" / ".oauth_refresh.lock"
            try:
                os.mkdir(folder)
            except (FileExistsError, FileNotFoundError):
                return False
            os.chown(folder, who.uid, who.uid)
            try:
                ends = time.monotonic() + seconds
                while time.monotonic() < ends:  # kept fresh, as a live holder does
                    os.utime(folder)
                    time.sleep(min(2.0, max(0.0, ends - time.monotonic())))
            finally:
                try:
                    os.rmdir(folder)
                except FileNotFoundError:
                    pass  # taken over
            return True
        path = home / (".local/state/claude-auth-sync/lock" if lock == "sync" else ".config/claude-auth-sync/mint.lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)  # never created here: root must not own it
        except OSError:
            return False
        try:
            ends = time.monotonic() + 5
            while True:  # never queue behind the tool for long: the person takes it when it is free
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > ends:
                        return False
                    time.sleep(0.1)
            time.sleep(seconds)
        finally:
            os.close(fd)
        return True

    # --- invariants while it runs ----------------------------------------------------------------

    def node_state(self, node: Any) -> str:
        if not node.alive:
            return "dead"
        body = self.cluster.health(node)
        if body is None:
            return "no answer"
        return "sealed" if body.get("sealed") else ("standby" if body.get("standby") else "active")

    def note_nodes(self) -> dict[int, str]:
        states = {node.index: self.node_state(node) for node in self.cluster.nodes}
        if states != self.node_states:
            self.node_states = states
            self.event("cluster", " ".join(f"node{i}={state}" for i, state in sorted(states.items())))
        return states

    def monitor_loop(self) -> None:
        while not self.stop.wait(self.params.monitor_interval):
            self.note_nodes()
            try:
                client = self.root_client(5)
                self.check_right_person(client)
                self.check_kv_history(client)
            except (hvac.exceptions.VaultError, requests.RequestException, RuntimeError) as exc:
                self.ops["monitor_unavailable"] += 1
                self.event("monitor", f"skipped a round: {type(exc).__name__}")

    def token_in(self, path: Path) -> str | None:
        try:
            value = path.read_text().strip()
        except OSError:
            return None
        if value:
            self.remember(value)
        return value or None

    def check_right_person(self, client: hvac.Client) -> None:
        seen_homes: set[Path] = set()
        for host in self.hosts:
            for person in self.people.values():
                file = host.token_file(person.name)
                real = file.parent.parent.parent.resolve() if file.exists() else None
                if real is None or (real, person.name) in seen_homes:  # type: ignore[comparison-overlap]
                    continue
                seen_homes.add(real)
                token = self.token_in(file)
                if token is None:
                    continue
                try:
                    data = client.auth.token.lookup(token)["data"]
                except hvac.exceptions.Forbidden:
                    continue  # a dead token in a file belongs to nobody
                self.checks["right_person"] += 1
                meta = data.get("meta") or {}
                if meta.get("user") != person.name or data.get("policies") != [f"{PREFIX}{person.name}"]:
                    self.violate("right_person", f"{host.name}:~{person.name}/{TOKEN_REL} holds a token of "
                                 f"user {meta.get('user')!r} with policies {data.get('policies')}")

    def check_kv_history(self, client: hvac.Client, final: bool = False) -> None:
        final_lineage: dict[str, dict[str, int]] = {}
        for name in sorted(self.people):
            path = self.kv_path(name)
            try:
                meta = client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=KV_MOUNT)
            except hvac.exceptions.InvalidPath:
                continue
            current = int(meta["data"]["current_version"])
            start = 1 if final else self.kv_seen.get(path, 0) + 1
            previous_expires = 0 if final else self.kv_expires.get(path, 0)
            with self.lock:
                required = dict(self.siblings.get(path, {}))
                counters = list(self.counters.get(path, []))
            for version in range(start, current + 1):
                read = client.secrets.kv.v2.read_secret_version(path=path, version=version, mount_point=KV_MOUNT,
                                                                raise_on_deleted_version=False)
                data = read["data"]["data"] or {}
                self.checks["siblings_kept"] += 1
                lost = sorted(k for k, first in required.items() if first < version and k not in data)
                if lost:
                    self.violate("siblings_kept", f"{path} version {version} lost {lost[:3]} (written before it)")
                floor = max((value for v, value in counters if v < version), default=0)
                if int(data.get(SIBLING_COUNTER, 0) or 0) < floor:
                    self.violate("siblings_kept", f"{path} version {version}: {SIBLING_COUNTER} went back "
                                 f"to {data.get(SIBLING_COUNTER)} from {floor}")
                raw = data.get("claude_ai_oauth_json")
                if raw is not None:
                    self.checks["backups_restorable"] += 1
                    try:
                        stored = json.loads(raw) if isinstance(raw, str) else raw
                    except ValueError:
                        stored = None
                    problem = oauth_problem(stored) if stored is not None else "not JSON"
                    if problem is not None:
                        self.violate("backups_restorable", f"{path} version {version}: {problem}")
                    else:
                        self.remember(stored)
                        expires = int(stored.get("expiresAt") or 0)
                        self.checks["backups_fresh"] += 1
                        key = digest(str(stored.get("accessToken")))
                        with self.lock:
                            origin = self.origin.get(key, "?")
                            only_home = self.copies.get(key, set()) <= {origin}
                            lineage = self.lineage.setdefault(path, {}) if not final else final_lineage.setdefault(path, {})
                        if expires < lineage.get(origin, 0) and only_home:
                            # Only that home ever held this login, and it had already backed up a newer one:
                            # a sync backed up a login its home no longer had (a stale read).
                            self.violate("backups_fresh", f"{path} version {version} backs up a login of "
                                         f"{Path(origin).parent.name} older than one of the same home "
                                         f"backed up before, by {lineage[origin] - expires} ms")
                        elif expires < previous_expires and not final:
                            # Another home's proven login replaced a newer one: SPEC (a probe-proven login
                            # is backed up); counted, not a violation.
                            self.ops["backup_replaced_by_older_login_of_another_home"] += 1
                        lineage[origin] = max(lineage.get(origin, 0), expires)
                        previous_expires = max(previous_expires, expires)
                if isinstance(data.get("claude_setup_token"), str):
                    self.remember(data["claude_setup_token"])
            with self.lock:
                self.kv_seen[path] = current
                self.kv_expires[path] = max(previous_expires, self.kv_expires.get(path, 0))

    # --- the run ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        p = self.params
        try:
            self.setup()
            fault_seconds = max(30.0, p.minutes * 60 - p.quiet_seconds)
            self.schedule = draw_schedule(p, fault_seconds)
            self.t0 = self.now()
            actors = [threading.Thread(target=self.host_loop, args=(h,), daemon=True) for h in self.hosts]
            actors += [threading.Thread(target=self.sync_worker, daemon=True) for _ in range(p.sync_slots)]
            actors += [threading.Thread(target=f, daemon=True)
                       for f in (self.claude_loop, self.kv_edit_loop, self.edit_loop, self.monitor_loop)]
            faults = threading.Thread(target=self.fault_loop, daemon=True)
            for actor in actors:
                actor.start()
            faults.start()
            self.say(f"soak: {len(self.schedule)} faults scheduled over {fault_seconds:.0f} s")
            ends = self.t0 + p.minutes * 60
            while self.now() < ends:
                time.sleep(min(15, max(0.1, ends - self.now())))
                self.say(f"soak: t={self.now() - self.t0:.0f}s ops={sum(self.ops.values())} "
                         f"faults={sum(self.faults_done.values())} violations={len(self.violations)}")
            self.event("phase", "faults stop")
            faults.join(timeout=120)
            if faults.is_alive():
                self.event("phase", "a fault has not ended after 120 s")
            self.stop.set()
            for actor in actors:
                actor.join(timeout=360)
            self.heal()
            self.quiet_cycle()
            self.final_checks()
            if self.params.bite:
                self.bite()
        except Exception as exc:  # reported, never raised: a traceback would show the cluster's root token
            self.harness_error = f"{type(exc).__name__}: {exc}"
            self.violate("harness", self.harness_error)
        finally:
            report = self.report()
            self.teardown()
        return report

    def heal(self) -> None:
        """Every fault undone: proxies pass, nodes run, the clocks are right, the disk has room."""
        for host in self.hosts:
            host.proxy.on_reply = None
            host.proxy.passthrough()
            host.clock_offset = 0
        for node in self.cluster.nodes:
            if node.alive and node.process is not None:
                os.killpg(node.process.pid, signal.SIGCONT)
        for node in self.cluster.nodes:
            if not node.alive:
                self.event("heal", f"node{node.index} restarted")
                self.restart_node(node, wait=False)
        for node in self.cluster.nodes:  # a restart the faults left half done: sealed, so unseal it
            if self.node_state(node) == "sealed":
                self.event("heal", f"node{node.index} sealed: unsealed")
                self.ops["heal_unseal"] += 1
                self.cluster._unseal(node, time.monotonic() + 60)
        self.note_nodes()
        try:
            self.majority_leader(60)
        except RuntimeError:
            # No two nodes agree (a stale active node beside a lagging one): restart them one by one,
            # as an operator would, until two do. Counted and reported.
            for node in self.cluster.nodes:
                self.ops["heal_rolling_restart"] += 1
                self.event("heal", f"no majority leader: node{node.index} restarted")
                self.cluster.kill(node)
                self.cluster._spawn(node)
                self.cluster._wait_listening(node, time.monotonic() + 60)
                self.cluster._unseal(node, time.monotonic() + 60)
                self.note_nodes()
                try:
                    self.majority_leader(30)
                    break
                except RuntimeError:
                    continue
        self.majority_leader(120)
        time.sleep(5)
        for node in self.stale_actives():
            # The OpenBao behaviour in majority_leader's docstring, still there after the faults: the
            # one thing the harness does to the cluster beyond undoing its faults, counted and reported.
            self.ops["heal_restart_of_stale_active_node"] += 1
            self.event("heal", f"node{node.index} still calls itself active beside the leader: restarted")
            self.cluster.kill(node)
            self.restart_node(node)
        self.majority_leader(120)
        self.note_nodes()
        for folder in self.mounted:
            (folder / "soak-filler").unlink(missing_ok=True)
        self.event("phase", "healed")

    def quiet_cycle(self) -> None:
        """One cycle after the last fault: admin `apply --prune` on every host, a sync of every enabled
        person on every host they are assigned to, then `plan` everywhere."""
        self.quiet["running"] = True
        self.stop.clear()
        started = self.now()
        outcomes: dict[str, tuple[int, str]] = {}

        def apply(host: Host) -> None:
            result = self.run_apply(host, True, True)
            outcomes[host.name] = (result[0], result[1]) if result else (-1, "")

        self.parallel([lambda h=h: apply(h) for h in self.hosts])
        failed_applies = sorted(h for h, (code, _) in outcomes.items() if code != 0)
        self.quiet["apply_failed"] = failed_applies
        sync_results: dict[tuple[str, str], str] = {}

        def sync(person: Person, host: Host) -> None:
            result = self.sync(person, host)
            last = (result[1].strip().splitlines() or [""])[-1] if result else ""
            sync_results[(person.name, host.name)] = last

        first, second = [], []
        for person in self.people.values():
            if not person.enabled:
                continue
            homes: set[Path] = set()
            for host in self.hosts_of(person):
                home = host.home_root / person.name
                (second if home in homes else first).append(lambda p=person, h=host: sync(p, h))
                homes.add(home)
        # A home shared by two hosts is synced from both, one after the other (at once, one would SKIP).
        self.parallel(first, self.params.sync_slots)
        self.parallel(second, self.params.sync_slots)
        for person in self.people.values():
            for host in self.hosts_of(person) if person.enabled else ():
                self.checks["logins_valid"] += 1
                line = sync_results.get((person.name, host.name), "")
                if not line.startswith(("OK ", "RECOVERED ")):
                    self.violate("logins_valid", f"quiet cycle: sync of {person.name}@{host.name}: {line[:200]!r}")
        self.quiet["syncs"] = dict(Counter(line.split(" ", 1)[0] for line in sync_results.values()))
        self.quiet["sync_results"] = sync_results
        plans: dict[str, tuple[int, str]] = {}

        def plan(host: Host) -> None:
            result = self.run_apply(host, True, False, command="plan")
            plans[host.name] = (result[0], result[1]) if result else (-1, "")

        self.parallel([lambda h=h: plan(h) for h in self.hosts])
        for name, (code, out) in sorted(plans.items()):
            self.checks["converged"] += 1
            last = (out.strip().splitlines() or [""])[-1]
            if code != 0 or last != "No changes.":
                changes = [line for line in out.splitlines() if line[:1] in "+~-!"][:4]
                self.violate("converged", f"{name}: plan exit {code}, {last!r}; {changes}")
        self.quiet["seconds"] = round(self.now() - started, 1)
        self.quiet["running"] = False

    def parallel(self, jobs: list[Callable[[], None]], width: int = 4) -> None:
        pending = list(jobs)
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    if not pending:
                        return
                    job = pending.pop(0)
                job()

        threads = [threading.Thread(target=worker) for _ in range(width)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def final_checks(self) -> None:
        client = self.root_client(30)
        # Tokens: every claude_auth person, every assigned host; the token works (lookup-self with it).
        for person in sorted(self.people.values(), key=lambda p: p.name):
            if not (person.in_roster and person.claude_auth):
                continue
            for host in self.hosts_of(person):
                self.checks["tokens_work"] += 1
                token = self.token_in(host.token_file(person.name))
                if token is None:
                    self.violate("tokens_work", f"{person.name}@{host.name}: no token file")
                    continue
                try:
                    own = hvac.Client(url=self.cluster.wait_leader().address, token=token, timeout=5)
                    data = own.auth.token.lookup_self()["data"]
                except hvac.exceptions.VaultError as exc:
                    self.violate("tokens_work", f"{person.name}@{host.name}: lookup-self {type(exc).__name__}")
                    continue
                if (data.get("meta") or {}).get("user") != person.name or data.get("policies") != [f"{PREFIX}{person.name}"]:
                    self.violate("right_person", f"{person.name}@{host.name}: token of {data.get('meta')}")
        # Logins: every enabled person, every home; valid shape, accepted by the API.
        for person in sorted(self.people.values(), key=lambda p: p.name):
            if not person.enabled:
                continue
            for home in self.homes_of(person):
                self.checks["logins_valid"] += 1
                where = f"{person.name}@{home.parent.name}"
                try:
                    document = json.loads((home / ".claude/.credentials.json").read_text())
                    oauth = document["claudeAiOauth"]
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    self.violate("logins_valid", f"{where}: {type(exc).__name__}")
                    continue
                self.remember(oauth)
                problem = oauth_problem(oauth)
                if person.setup_token:
                    if not isinstance(oauth, dict) or oauth.get("accessToken") != self.setup_tokens.get(person.name):
                        self.violate("logins_valid", f"{where}: not the stored setup token")
                    continue
                if problem is not None:
                    self.violate("logins_valid", f"{where}: {problem}")
                elif digest(str(oauth["accessToken"])) not in self.api.good_digests:
                    self.violate("logins_valid", f"{where}: the API refuses its access token")
        # Backups: the latest is restorable and not older than the newest healthy login in any file.
        for person in sorted(self.people.values(), key=lambda p: p.name):
            if not person.enabled or person.setup_token:
                continue
            path = self.kv_path(person.name)
            self.checks["backups_fresh"] += 1
            try:
                read = client.secrets.kv.v2.read_secret_version(path=path, mount_point=KV_MOUNT,
                                                                raise_on_deleted_version=False)
                stored = json.loads(read["data"]["data"]["claude_ai_oauth_json"])
            except (hvac.exceptions.InvalidPath, KeyError, ValueError, TypeError) as exc:
                self.violate("backups_fresh", f"{person.name}: no backup ({type(exc).__name__})")
                continue
            held = []
            for home in self.homes_of(person):
                try:
                    held.append(json.loads((home / ".claude/.credentials.json").read_text())["claudeAiOauth"])
                except (OSError, ValueError, KeyError, TypeError):
                    continue
            if oauth_problem(stored) is not None:
                self.violate("backups_restorable", f"{person.name}: the latest backup: {oauth_problem(stored)}")
            if stored not in held:
                # After the quiet cycle every home's login was proven and backed up, the last one
                # staying: the backup must be a login one of the person's homes holds now.
                self.violate("backups_fresh", f"{person.name}: the backup is no login any of their homes holds")
        self.check_kv_history(client, final=True)
        # Tokens nothing references: every live token of the tool's prefix must be in a token file of a
        # person assigned there, or recorded by a host's state (tokens, pending revocations).
        referenced: set[str] = set()
        for host in self.hosts:
            for person in self.people.values():
                token = self.token_in(host.token_file(person.name))
                if token and person.in_roster and person.claude_auth and assigned(person, host.name):
                    try:
                        referenced.add(client.auth.token.lookup(token)["data"]["accessor"])
                    except hvac.exceptions.Forbidden:
                        pass
            state = host.state_dir / "state.json"
            if state.exists():
                text = state.read_text()
                self.output_texts.append(text)
                document = json.loads(text)
                referenced |= {entry["accessor"] for entry in document.get("tokens", {}).values()}
                referenced |= set(document.get("pending_revoke", []))
        live = self.tool_tokens(client)
        self.checks["no_orphan_tokens"] += len(live)
        orphans = sorted(set(live) - referenced)
        for accessor in orphans[:5]:
            meta = live[accessor].get("meta") or {}
            self.violate("no_orphan_tokens", f"a live token of {meta.get('user')!r} minted on {meta.get('host')!r} "
                         "that no token file or state references")
        if len(orphans) > 5:
            self.violate("no_orphan_tokens", f"{len(orphans) - 5} more")
        self.quiet["live_tool_tokens"] = len(live)
        # Secrets: every output, state file and sync log, searched for every secret whole.
        texts = list(self.output_texts)
        for home_root in {h.home_root for h in self.hosts}:
            for log in home_root.glob("*/.local/state/claude-auth-sync/sync.log"):
                texts.append(log.read_text(errors="replace"))
        try:
            blob = "\n".join(texts)
            self.checks["no_secrets_out"] += len(texts)
            assert_no_secrets([blob], sorted(self.secrets))
        except AssertionError as exc:
            self.violate("no_secrets_out", str(exc).split("\n")[0])

    def bite(self) -> None:
        """Each check shown able to fail: a sibling key dropped, a stub backed up, one person's token in
        another's file, a token minted and dropped, a secret printed; each must be caught."""
        real, self.violations = self.violations, []
        client = self.root_client(30)
        try:
            members = sorted((p for p in self.people.values() if p.enabled and not p.setup_token and self.hosts_of(p)),
                             key=lambda p: p.name)
            # A victim whose other tool wrote the constant sibling key; if nobody's did (a loaded machine
            # runs fewer KV edits: seen once), write it first as that tool would, so there is one to drop.
            victim = next((p for p in members if SIBLING_CONSTANT in self.siblings.get(self.kv_path(p.name), {})),
                          members[0])
            other = next(p for p in members if p is not victim)
            path = self.kv_path(victim.name)
            read = client.secrets.kv.v2.read_secret_version(path=path, mount_point=KV_MOUNT,
                                                            raise_on_deleted_version=False)
            data = dict(read["data"]["data"])
            if SIBLING_CONSTANT not in self.siblings.get(path, {}):
                written = client.secrets.kv.v2.create_or_update_secret(
                    path=path, secret={**data, SIBLING_CONSTANT: "hunter2-not-secret"}, mount_point=KV_MOUNT)
                with self.lock:
                    self.siblings.setdefault(path, {})[SIBLING_CONSTANT] = int(written["data"]["version"])
            data.pop(SIBLING_CONSTANT, None)
            data["claude_ai_oauth_json"] = json.dumps({"accessToken": "", "refreshToken": "", "expiresAt": 0})
            client.secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point=KV_MOUNT)
            host = self.hosts_of(victim)[0]
            theirs = host.token_file(victim.name)
            swapped = theirs.read_text()
            other_token = next(t for t in (self.token_in(h.token_file(other.name)) for h in self.hosts_of(other)) if t)
            theirs.write_text(other_token + "\n")
            minted = client.auth.token.create_orphan(
                policies=[f"{PREFIX}{victim.name}"], period="768h", no_default_policy=True,
                display_name=f"devvm-claude-auth-{victim.name}",
                meta={"managed_by": "claude-auth", "user": victim.name, "host": "nowhere"})["auth"]
            self.remember(minted["client_token"])
            self.scan_output(f"oops: {minted['client_token']}", "the bite")
            self.keep_traceback("Traceback (most recent call last):\n  File \"reconcile/vault/retry.py\"\n"
                                "OSError: [Errno 22] Invalid argument\n", "the bite")
            self.check_right_person(client)
            self.check_kv_history(client, final=True)
            self.final_checks()
            theirs.write_text(swapped)
            client.auth.token.revoke_accessor(minted["accessor"])
            caught = {v.invariant for v in self.violations}
            self.quiet["bites"] = {name: name in caught for name in
                                   ("siblings_kept", "backups_restorable", "right_person", "no_orphan_tokens",
                                    "no_secrets_out", "no_tracebacks")}
        finally:
            self.violations = real

    @staticmethod
    def tool_tokens(client: hvac.Client) -> dict[str, dict[str, Any]]:
        return fleet_tool_tokens(client, PREFIX)

    def teardown(self) -> None:
        self.stop.set()
        with self.lock:
            running = list(self.processes.values())
        for process in running:  # only what this harness started, by its own process group
            self.kill_group(process)
        for host in self.hosts:
            host.proxy.stop()
        if self.api._thread is not None:
            self.api.stop()
        self.cluster.stop()
        for folder in self.mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        for pid in self.faketime_pids:  # what libfaketime left in /dev/shm for our killed processes
            for leftover in (f"/dev/shm/sem.faketime_sem_{pid}", f"/dev/shm/faketime_shm_{pid}"):
                try:
                    os.unlink(leftover)
                except FileNotFoundError:
                    pass
        if self.base != Path() and os.environ.get("SOAK_KEEP") != "1":
            shutil.rmtree(self.base, ignore_errors=True)

    # --- the report ------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        with self.lock:
            violations = list(self.violations)
            events = list(self.events)
        invariants = {}
        for name, text in INVARIANTS.items():
            mine = [v for v in violations if v.invariant == name]
            entry: dict[str, Any] = {"what": text, "checks": self.checks.get(name, 0),
                                     "violations": len(mine), "ok": not mine and self.checks.get(name, 0) > 0}
            if mine:
                first = mine[0]
                entry["first"] = {"t": round(first.t, 2), "detail": first.detail,
                                  "events_around": [e.as_json() for e in
                                                    events[max(0, first.event_index - 25): first.event_index + 5]]}
            invariants[name] = entry
        fault_counts = {kind: {"done": self.faults_done.get(kind, 0), "skipped": self.faults_skipped.get(kind, 0)}
                        for kind in FAULT_KINDS}
        return {
            "seed": self.params.seed,
            "params": {k: v for k, v in vars(self.params).items()},
            "replay": f"SOAK_SEED={self.params.seed} SOAK_MINUTES={self.params.minutes} make soak",
            "faults": fault_counts,
            "leader_kills": {"leader": self.node_kills.get("leader", 0),
                             "other_node": self.node_kills.get("other_node", 0)},
            "tracebacks": len(self.tracebacks),
            "operations": dict(sorted(self.ops.items())),
            "invariants": invariants,
            "ok": all(entry["ok"] for entry in invariants.values()) and not self.harness_error,
            "harness_error": self.harness_error,
            "last_events": [e.as_json() for e in events[-40:]] if self.harness_error else [],
            "quiet_cycle": {k: v for k, v in self.quiet.items() if k not in ("sync_results", "running", "bites")},
            "bites": self.quiet.get("bites", {}),
            "notes": {
                "disk_full": self.disk_full_ok or "no tmpfs could be mounted: disk_full faults skipped",
                "clock_jump": ("libfaketime (Debian's libfaketime, LD_PRELOAD) shifts the wall clock of the "
                               "host's tool processes started during the jump (and their claude child); "
                               "monotonic clocks and file times stay real" if self.faketime_lib
                               else "no libfaketime: clock_jump faults skipped"),
                "openbao": ("OpenBao 2.7.2, seen in this harness: an active node resumed after a SIGSTOP longer "
                            "than an election kept calling itself active (sys/health, sys/leader is_self) for "
                            "over a minute beside the new active node; the harness names the leader by majority "
                            "and, after the faults only, restarts such a node (heal_restart_of_stale_active_node), "
                            "unseals a node a fault's restart left sealed (heal_unseal), and restarts the nodes "
                            "one by one when no two agree on a leader (heal_rolling_restart)"),
                "outputs_scanned": self.outputs_scanned,
                "secrets_known": len(self.secrets),
                "events": len(events),
            },
            "schedule": [f.as_json() for f in self.schedule],
        }


def table(report: dict[str, Any]) -> str:
    lines = [f"soak seed {report['seed']}: {'PASS' if report['ok'] else 'FAIL'}  (replay: {report['replay']})",
             "", f"{'fault':<12} {'done':>5} {'skipped':>8}"]
    for kind, counts in report["faults"].items():
        lines.append(f"{kind:<12} {counts['done']:>5} {counts['skipped']:>8}")
    kills = report.get("leader_kills", {})
    lines.append(f"leader_kill killed the leader {kills.get('leader', 0)} times, another node "
                 f"{kills.get('other_node', 0)} times (no leader agreed on)")
    lines += ["", f"{'operation':<34} {'count':>6}"]
    for name, count in report["operations"].items():
        lines.append(f"{name:<34} {count:>6}")
    lines += ["", f"{'invariant':<18} {'result':<6} {'checks':>8} {'violations':>10}"]
    for name, entry in report["invariants"].items():
        lines.append(f"{name:<18} {'ok' if entry['ok'] else 'FAIL':<6} {entry['checks']:>8} {entry['violations']:>10}")
    for name, entry in report["invariants"].items():
        if "first" in entry:
            lines += ["", f"first violation of {name} at t={entry['first']['t']}: {entry['first']['detail']}"]
            lines += [f"  {e['t']:>8.2f} {e['kind']:<10} {e['detail']}" for e in entry["first"]["events_around"]]
    if report.get("harness_error"):
        lines += ["", f"harness error: {report['harness_error']}"]
        harness = [e for e in report.get("last_events", [])]
        lines += [f"  {e['t']:>8.2f} {e['kind']:<10} {e['detail']}" for e in harness]
    lines += ["", f"quiet cycle: {report['quiet_cycle']}", f"bites: {report.get('bites')}"]
    return "\n".join(lines)
