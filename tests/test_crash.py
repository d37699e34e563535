"""Kill -9 `apply` at many points of a first apply of 30 people, then check the invariants.

Each scenario is a first apply (its own --root and policy prefix) on a fresh
OpenBao of this module's own, run as a process through the fault proxy; the
proxy kills it at a precise moment around the Nth create-orphan request:

- before: the request never reaches Vault (only the intent is on disk);
- in flight: Vault minted, the answer never reaches the process;
- after: the process has the answer and is killed a moment later (while it
  writes the token file, settles the intent, or sends its next request).

Then `apply` runs again to completion and must leave: exit 0, `plan` with
nothing to do, no outstanding intent, no temporary file of the tool's naming
anywhere under the root, and zero live tokens minted by the tool for these
people that neither a token file nor the state file references (every
accessor is listed and looked up with the root token). About 25 s on an idle
2-core machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import hvac
import hvac.exceptions
import pytest
import yaml

from reconcile.common.exitcodes import Exit
from reconcile.vault.retry import SCAN_BUDGET_ENV
from tests.support.faultproxy import FaultProxy
from tests.support.leaks import assert_no_secrets
from tests.support.openbao import OpenBaoServer
from tests.support.world import World

REPO = Path(__file__).resolve().parent.parent
MINT = b"POST /v1/auth/token/create-orphan"
PEOPLE = [f"p{index:02d}" for index in range(30)]
TEMP_NAMES = re.compile(r"^\..*(\.tmp-[0-9a-f]{16}|\.[0-9a-f]{12}\.tmp)$")
SCENARIOS = [(when, nth) for nth in (1, 13, 30) for when in ("before", "in-flight", "after")]


@pytest.fixture(scope="module")
def bao() -> Iterator[OpenBaoServer]:
    with OpenBaoServer() as server:
        yield server


class Sandbox:
    """One scenario's root, roster and prefix, driven by `python -m reconcile` processes."""

    def __init__(self, base: Path, server: OpenBaoServer, proxy: FaultProxy, name: str) -> None:
        self.server, self.proxy = server, proxy
        self.root = base / name / "root"
        self.prefix = f"{name}-"
        self.roster = base / name / "roster.yaml"
        self.outputs: list[str] = []
        (self.root / "etc").mkdir(parents=True)
        lines = ["root:x:0:0:root:/root:/bin/bash"]
        for index, user in enumerate(PEOPLE):
            uid = 6001 + index
            home = self.root / "home" / user
            home.mkdir(parents=True)
            os.chown(home, uid, uid)
            lines.append(f"{user}:x:{uid}:{uid}::/home/{user}:/bin/bash")
        (self.root / "etc/passwd").write_text("\n".join(lines) + "\n")
        self.roster.write_text(yaml.safe_dump({
            "vault": {"policy_prefix": self.prefix, "path_prefix": f"{name}/claude-users"},
            "users": {user: {} for user in PEOPLE}}))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "CLAUDE_AUTH_"))}
        env.update(VAULT_ADDR=self.proxy.address, VAULT_TOKEN=self.server.root_token,
                   HOME=str(self.root.parent))
        return env

    def start(self, command: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "reconcile", command, "--roster", str(self.roster),
                                 "--root", str(self.root)], cwd=REPO, env=self.env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def run(self, command: str) -> tuple[int, str, str]:
        process = self.start(command)
        out, err = process.communicate(timeout=60)
        self.outputs += [out, err]
        return process.returncode, out, err

    def token_values(self) -> dict[str, str]:
        values = {}
        for user in PEOPLE:
            path = self.root / "home" / user / ".config/claude-auth-sync/vault-token"
            if path.exists():
                values[user] = path.read_text().strip()
        return values

    def state(self) -> dict[str, object]:
        return dict(json.loads((self.root / "var/lib/claude-auth/state.json").read_text()))

    def host_token_accessor(self, client: hvac.Client) -> str | None:
        path = self.root / "etc/claude-auth/host-token"
        if not path.exists():
            return None
        value = path.read_text().strip()
        self.outputs.append("")  # the value is searched for below, with the people's tokens
        return str(client.auth.token.lookup(value)["data"]["accessor"])

    def temp_files(self) -> list[Path]:
        return [Path(folder) / name for folder, dirs, files in os.walk(self.root)
                for name in files + dirs if TEMP_NAMES.match(name)]


def tool_tokens(client: hvac.Client, prefix: str) -> dict[str, dict[str, object]]:
    """accessor -> lookup of every live token the tool minted with one of `prefix`'s policies."""
    found = {}
    for accessor in client.list("auth/token/accessors")["data"]["keys"]:
        try:
            data = client.auth.token.lookup_accessor(accessor)["data"]
        except hvac.exceptions.InvalidRequest:
            continue  # revoked meanwhile
        meta = data.get("meta") or {}
        if meta.get("managed_by") == "claude-auth" and meta.get("kind") != "host" and any(p.startswith(prefix) for p in data["policies"]):
            found[accessor] = data
    return found


def host_tokens(client: hvac.Client, prefix: str) -> set[str]:
    """Accessors of every live host token the tool minted under `prefix` (issue 23)."""
    found = set()
    for accessor in client.list("auth/token/accessors")["data"]["keys"]:
        try:
            data = client.auth.token.lookup_accessor(accessor)["data"]
        except hvac.exceptions.InvalidRequest:
            continue
        meta = data.get("meta") or {}
        if meta.get("kind") == "host" and any(p.startswith(prefix) for p in data["policies"]):
            found.add(accessor)
    return found


def kill_at(sandbox: Any, process: subprocess.Popen[str], when: str, nth: int,
            marker: bytes = MINT) -> threading.Event:
    """SIGKILL `process` before, in flight, or just after the `nth` request carrying `marker`
    (a sandbox's fault proxy watches for it)."""
    killed = threading.Event()

    def kill() -> None:
        if not killed.is_set():
            os.kill(process.pid, signal.SIGKILL)
            killed.set()

    def on_request(head: bytes, number: int) -> bool:
        if when == "before" and marker in head and number == nth:
            kill()
            return False
        return True

    def on_reply(head: bytes, number: int) -> bool:
        if when == "in-flight" and marker in head and number == nth:
            kill()
            return False
        return True

    def after_reply(head: bytes, number: int) -> None:
        if when == "after" and marker in head and number == nth:
            threading.Timer(0.002 * (nth % 5), kill).start()

    sandbox.proxy.seen.clear()
    sandbox.proxy.count = (marker,)
    sandbox.proxy.on_request, sandbox.proxy.on_reply, sandbox.proxy.after_reply = on_request, on_reply, after_reply
    return killed


def test_a_killed_first_apply_leaves_no_token_unaccounted_for(bao: OpenBaoServer, tmp_path: Path) -> None:
    client = hvac.Client(url=bao.address, token=bao.root_token)
    with FaultProxy(upstream_port=bao.port) as proxy:
        for index, (when, nth) in enumerate(SCENARIOS):
            sandbox = Sandbox(tmp_path, bao, proxy, f"k{index:02d}")
            process = sandbox.start("apply")
            killed = kill_at(sandbox, process, when, nth)
            out, err = process.communicate(timeout=60)
            sandbox.outputs += [out, err]
            assert killed.is_set() and process.returncode == -signal.SIGKILL, (when, nth, err)
            proxy.on_request = proxy.on_reply = proxy.after_reply = None

            code, out, err = sandbox.run("apply")
            assert code == Exit.OK, (when, nth, err)
            code, out, err = sandbox.run("plan")
            assert (code, out.splitlines()[-1:]) == (Exit.OK, ["No changes."]), (when, nth, out, err)

            state = sandbox.state()
            assert state.get("intents", {}) == {}, (when, nth)
            files = sandbox.token_values()
            assert sorted(files) == PEOPLE
            in_files = {str(client.auth.token.lookup(value)["data"]["accessor"]) for value in files.values()}
            tokens: dict[str, dict[str, str]] = state["tokens"]  # type: ignore[assignment]
            pending: list[str] = state["pending_revoke"]  # type: ignore[assignment]
            referenced = in_files | {entry["accessor"] for entry in tokens.values()} | set(pending)
            unreferenced = set(tool_tokens(client, sandbox.prefix)) - referenced
            assert unreferenced == set(), (when, nth)
            # The host token is the first mint of a first apply (nth 1): exactly one lives, the one in the file.
            assert host_tokens(client, sandbox.prefix) == {sandbox.host_token_accessor(client)}, (when, nth)
            assert sandbox.temp_files() == [], (when, nth)
            assert_no_secrets(sandbox.outputs, set(files.values()) | {bao.root_token})


def test_an_apply_killed_while_its_systemctl_makes_the_links_converges(bao: OpenBaoServer, tmp_path: Path) -> None:
    """The timers' links are made by a systemctl running beside the mints (docs/design.md, "Timer
    links alongside the mints"). Kill the apply while that systemctl is held before it starts, let
    the next apply run to the end, then let the orphaned systemctl make the same links: one more
    apply and plan find nothing to do and every token is accounted for."""
    real = shutil.which("systemctl")
    assert real
    bin_dir, gate, held, done = (tmp_path / name for name in ("bin", "gate", "held", "done"))
    bin_dir.mkdir()
    wrapper = bin_dir / "systemctl"
    wrapper.write_text(f"""#!/bin/sh
case " $* " in *" enable "*)
  touch {held}
  while [ ! -e {gate} ]; do sleep 0.02; done
  {real} "$@"; status=$?; touch {done}; exit $status;;
esac
exec {real} "$@"
""")
    wrapper.chmod(0o755)
    client = hvac.Client(url=bao.address, token=bao.root_token)
    with FaultProxy(upstream_port=bao.port) as proxy:
        sandbox = Sandbox(tmp_path, bao, proxy, "held")
        env = {**sandbox.env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        process = subprocess.Popen([sys.executable, "-m", "reconcile", "apply", "--roster", str(sandbox.roster),
                                    "--root", str(sandbox.root)], cwd=REPO, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not (held.exists() and len(sandbox.token_values()) >= 10):  # links held, mints under way
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        process.kill()
        sandbox.outputs += list(process.communicate(timeout=60))
        wants = sandbox.root / "etc/systemd/system/timers.target.wants"
        assert not wants.exists()  # the kill landed before any link

        code, out, err = sandbox.run("apply")  # the real systemctl, while the orphan still waits
        assert code == Exit.OK, err
        gate.touch()
        while not done.exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert sorted(link.name for link in wants.iterdir()) == sorted(
            ["claude-auth-reconcile.timer"] + [f"claude-auth-sync@{user}.timer" for user in PEOPLE])

        code, out, err = sandbox.run("apply")
        assert code == Exit.OK and out.splitlines()[-1:] == ["No changes."], out + err
        code, out, err = sandbox.run("plan")
        assert (code, out.splitlines()[-1:]) == (Exit.OK, ["No changes."]), out + err
        files = sandbox.token_values()
        assert sorted(files) == PEOPLE
        state = sandbox.state()
        in_files = {str(client.auth.token.lookup(value)["data"]["accessor"]) for value in files.values()}
        tokens: dict[str, dict[str, str]] = state["tokens"]  # type: ignore[assignment]
        pending: list[str] = state["pending_revoke"]  # type: ignore[assignment]
        referenced = in_files | {entry["accessor"] for entry in tokens.values()} | set(pending)
        assert set(tool_tokens(client, sandbox.prefix)) - referenced == set()
        assert sandbox.temp_files() == []
        assert_no_secrets(sandbox.outputs, set(files.values()) | {bao.root_token})


def test_apply_removes_stale_temporary_files_of_its_own_naming_only(world: World) -> None:
    """What a writer killed before its rename leaves: a token file's temp holds a live token."""
    world.write_roster({"alice": {}, "bob": {}})
    assert world.run("apply").code == Exit.OK
    config = world.root / "home/alice/.config/claude-auth-sync"
    units = world.root / "etc/systemd/system"
    ours = [config / ".vault-token.tmp-0123456789abcdef",
            units / "claude-auth-sync@bob.service.d/.home.conf.0123456789ab.tmp",
            units / ".claude-auth-sync@.timer.a1b2c3d4e5f6.tmp",
            world.root / "var/lib/claude-auth/.state.json.a1b2c3d4e5f6.tmp"]
    not_ours = [config / ".vault-token.tmp-notours", config / "notes.tmp",
                units / ".other.service.a1b2c3d4e5f6.tmp", units / "claude-auth-sync@bob.service.d/keep.conf"]
    for path in ours + not_ours:
        path.write_text("x")
    target = world.root / "precious"
    target.write_text("keep")
    planted = config / ".vault-token.tmp-fedcba9876543210"
    os.symlink(target, planted)  # a person's link with our name: not a file we wrote; never followed
    assert world.run("apply").code == Exit.OK
    assert [path for path in ours if path.exists()] == []
    assert planted.is_symlink() and target.read_text() == "keep"
    assert all(path.exists() for path in not_ours)


def test_an_intent_an_admin_token_cannot_search_for_is_kept_and_named(world: World,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    world.write_roster({"alice": {}, "bob": {}})
    assert world.run("apply").code == Exit.OK
    path = world.root / "var/lib/claude-auth/state.json"
    document = json.loads(path.read_text())
    document["intents"] = {"0123456789abcdef0123456789abcdef": {"user": "alice"}}
    path.write_text(json.dumps(document))
    monkeypatch.setenv("VAULT_TOKEN", world.admin_token(deny=("auth/token/accessors",)))
    (world.root / "home/bob/.config/claude-auth-sync/vault-token").unlink()
    applied = world.run("apply")
    assert applied.code == Exit.ERROR
    errors = [line for line in applied.err.splitlines() if line.startswith("ERROR")]
    assert errors == ["ERROR alice: a token minted by an interrupted run cannot be looked for: listing "
                      "auth/token/accessors was denied (the admin token needs list and sudo there)"]
    assert world.token("bob")  # everyone else is still applied
    assert json.loads(path.read_text())["intents"] == document["intents"]  # kept for a run that can look
    monkeypatch.setenv("VAULT_TOKEN", world.server.root_token)
    assert world.run("apply").code == Exit.OK
    assert json.loads(path.read_text())["intents"] == {}


def test_a_token_scan_that_runs_out_of_its_budget_warns_and_the_run_goes_on(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted mint's token in nobody's file; this run's scan for it is cut short (its budget
    made tiny, as a big or slow Vault would): one WARN line naming alice, bob still applied, the
    intent kept; the next run with the default budget finds and revokes the token."""
    world.write_roster({"alice": {}, "bob": {}})
    assert world.run("apply").code == Exit.OK
    nonce = "0123456789abcdef0123456789abcdef"
    stray = world.client.auth.token.create_orphan(
        policies=[world.policy_name("alice")], period="768h", no_default_policy=True,
        display_name="devvm-claude-auth-alice",
        meta={"managed_by": "claude-auth", "user": "alice", "host": socket.gethostname(), "mint_nonce": nonce})
    world.secrets_seen.add(str(stray["auth"]["client_token"]))
    accessor = str(stray["auth"]["accessor"])
    path = world.root / "var/lib/claude-auth/state.json"
    document = json.loads(path.read_text())
    document["intents"] = {nonce: {"user": "alice"}}
    path.write_text(json.dumps(document))
    (world.root / "home/bob/.config/claude-auth-sync/vault-token").unlink()

    monkeypatch.setenv(SCAN_BUDGET_ENV, "0.000001")
    applied = world.run("apply")
    assert applied.code == Exit.ERROR, applied.err
    [warning] = [line for line in applied.err.splitlines() if line.startswith(("WARN", "ERROR"))]
    assert re.fullmatch(rf"WARN token scan: looking up every token in Vault ran out of its 1e-06 s budget "
                        rf"\({SCAN_BUDGET_ENV}\) after 0 of [0-9,]+; the tokens interrupted runs minted for "
                        r"alice are not accounted for yet \(the next admin run looks again\)", warning), warning
    assert world.token("bob") and world.lookup(world.token("bob") or "")  # everyone else is still applied
    assert json.loads(path.read_text())["intents"] == document["intents"]  # kept for the next run
    assert world.client.auth.token.lookup_accessor(accessor)["data"]  # not found yet: still alive
    assert world.run("plan").code == Exit.ERROR  # plan says so too

    monkeypatch.delenv(SCAN_BUDGET_ENV)
    planned = world.run("plan")
    assert planned.out.splitlines()[0] == ("- token devvm-claude-auth-alice: minted by an interrupted run and "
                                           "in nobody's file; revoke"), planned.out
    healed = world.run("apply")
    assert healed.code == Exit.OK, healed.err
    assert json.loads(path.read_text())["intents"] == {}
    with pytest.raises(hvac.exceptions.InvalidRequest):
        world.client.auth.token.lookup_accessor(accessor)
    assert world.run("plan").out.splitlines()[-1:] == ["No changes."]
