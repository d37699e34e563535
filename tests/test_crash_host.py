"""Kill -9 the hourly run while it re-mints or rotates with the host token alone (issue 23).

Each scenario: one admin `apply` enrolls the host and mints for six people;
then the hourly run (no admin token: CLAUDE_AUTH_NO_ADMIN=1, no VAULT_TOKEN,
the host token from `<root>/etc/claude-auth/host-token`) is killed at a precise
moment by the fault proxy:

- re-mint (three people's tokens revoked by root): before, in flight, or just
  after the Nth `auth/token/create/<role>` request;
- rotation (`vault.token_max_age: 2h`, the run's clock three hours ahead with
  libfaketime): the same around the first mint, and around the first
  `revoke-self` of a replaced token.

Then the hourly run goes again to completion (it must exit 0, and when a mint's
token may exist in nobody's file, say so in one WARN line: the host token cannot
list tokens), and one admin `apply` after it must leave: `plan` with nothing to
do, no outstanding intent, and zero live tokens the tool minted that neither a
file nor the state file references; nothing secret in any output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import hvac
import hvac.exceptions
import pytest
import yaml

from reconcile.common.exitcodes import Exit
from tests.support.faultproxy import FaultProxy
from tests.support.leaks import assert_no_secrets
from tests.support.openbao import OpenBaoServer
from tests.test_crash import host_tokens, kill_at, tool_tokens

REPO = Path(__file__).resolve().parent.parent
ROLE_MINT = b"/v1/auth/token/create/"
REVOKE_SELF = b"POST /v1/auth/token/revoke-self"
PEOPLE = [f"q{index}" for index in range(6)]
REVOKED = PEOPLE[1:4]
REMINT = [("remint", marker_when, nth) for nth in (1, 3) for marker_when in ("before", "in-flight", "after")]
ROTATE = [("rotate-mint", when, 1) for when in ("before", "in-flight", "after")] + \
         [("rotate-revoke", when, 2) for when in ("before", "in-flight", "after")]


@pytest.fixture(scope="module")
def bao() -> Iterator[OpenBaoServer]:
    with OpenBaoServer() as server:
        yield server


class HostSandbox:
    def __init__(self, base: Path, server: OpenBaoServer, proxy: FaultProxy, name: str, *, max_age: bool) -> None:
        self.server, self.proxy = server, proxy
        self.root = base / name / "root"
        self.prefix = f"{name}-"
        self.roster = base / name / "roster.yaml"
        self.outputs: list[str] = []
        (self.root / "etc").mkdir(parents=True)
        lines = ["root:x:0:0:root:/root:/bin/bash"]
        for index, user in enumerate(PEOPLE):
            uid = 7001 + index
            home = self.root / "home" / user
            home.mkdir(parents=True)
            os.chown(home, uid, uid)
            lines.append(f"{user}:x:{uid}:{uid}::/home/{user}:/bin/bash")
        (self.root / "etc/passwd").write_text("\n".join(lines) + "\n")
        vault = {"policy_prefix": self.prefix, "path_prefix": f"{name}/claude-users"}
        if max_age:
            vault["token_max_age"] = "2h"
        self.roster.write_text(yaml.safe_dump({"vault": vault, "users": {user: {} for user in PEOPLE}}))

    def env(self, *, admin: bool, clock_ahead: bool = False) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "CLAUDE_AUTH_", "BAO_"))}
        env.update(VAULT_ADDR=self.proxy.address, HOME=str(self.root.parent), CLAUDE_AUTH_HOSTNAME="crashhost")
        if admin:
            env["VAULT_TOKEN"] = self.server.root_token
        else:
            env["CLAUDE_AUTH_NO_ADMIN"] = "1"
        if clock_ahead:
            library = os.environ.get("CLAUDE_AUTH_FAKETIME_LIB") or str(REPO / ".tools/libfaketime.so.1")
            env.update(LD_PRELOAD=library, FAKETIME="+3h", FAKETIME_DONT_FAKE_MONOTONIC="1")
        return env

    def start(self, command: str, *, admin: bool, clock_ahead: bool = False) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "reconcile", command, "--roster", str(self.roster),
                                 "--root", str(self.root)], cwd=REPO, env=self.env(admin=admin, clock_ahead=clock_ahead),
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def run(self, command: str, *, admin: bool, clock_ahead: bool = False) -> tuple[int, str, str]:
        process = self.start(command, admin=admin, clock_ahead=clock_ahead)
        out, err = process.communicate(timeout=90)
        self.outputs += [out, err]
        return process.returncode, out, err

    def token_values(self) -> dict[str, str]:
        values = {}
        for user in PEOPLE:
            path = self.root / "home" / user / ".config/claude-auth-sync/vault-token"
            if path.exists():
                values[user] = path.read_text().strip()
        host = self.root / "etc/claude-auth/host-token"
        if host.exists():
            values["@host"] = host.read_text().strip()
        return values

    def state(self) -> dict[str, object]:
        return dict(json.loads((self.root / "var/lib/claude-auth/state.json").read_text()))



@pytest.mark.parametrize("scenario", REMINT + ROTATE, ids=lambda s: f"{s[0]}-{s[1]}-{s[2]}")
def test_a_killed_hourly_run_with_the_host_token_leaves_nothing_unaccounted_for(
        bao: OpenBaoServer, tmp_path: Path, scenario: tuple[str, str, int]) -> None:
    kind, when, nth = scenario
    client = hvac.Client(url=bao.address, token=bao.root_token)
    rotate = kind.startswith("rotate")
    with FaultProxy(upstream_port=bao.port) as proxy:
        name = f"{kind}-{when}-{nth}".replace("rotate-", "r")
        sandbox = HostSandbox(tmp_path, bao, proxy, name, max_age=rotate)
        code, out, err = sandbox.run("apply", admin=True)
        assert code == Exit.OK, err
        first = sandbox.token_values()
        if not rotate:
            for user in REVOKED:
                client.auth.token.revoke(first[user])

        process = sandbox.start("apply", admin=False, clock_ahead=rotate)
        marker = REVOKE_SELF if kind == "rotate-revoke" else ROLE_MINT
        killed = kill_at(sandbox, process, when, nth, marker)
        out, err = process.communicate(timeout=90)
        sandbox.outputs += [out, err]
        assert killed.is_set() and process.returncode == -signal.SIGKILL, (scenario, err)
        proxy.on_request = proxy.on_reply = proxy.after_reply = None

        code, out, err = sandbox.run("apply", admin=False, clock_ahead=rotate)
        assert code == Exit.OK, (scenario, err)
        warns = [line for line in err.splitlines() if line.startswith("WARN")]
        assert len(warns) <= 1, (scenario, err)
        if sandbox.state().get("intents"):
            assert warns and "an admin `claude-auth apply` on this host" in warns[0], (scenario, err)
        files = sandbox.token_values()
        for user in PEOPLE:  # every person has a working token again, without an admin
            assert client.auth.token.lookup(files[user])["data"]["meta"]["user"] == user, (scenario, user)

        code, out, err = sandbox.run("apply", admin=True)  # the next admin run resolves what is left
        assert code == Exit.OK, (scenario, err)
        code, out, err = sandbox.run("plan", admin=False, clock_ahead=False)
        assert (code, out.splitlines()[-1:]) == (Exit.OK, ["No changes."]), (scenario, out, err)

        state = sandbox.state()
        assert state.get("intents", {}) == {}, scenario
        files = sandbox.token_values()
        in_files = {str(client.auth.token.lookup(value)["data"]["accessor"]) for value in files.values()}
        tokens: dict[str, dict[str, str]] = state["tokens"]  # type: ignore[assignment]
        pending: list[str] = state["pending_revoke"]  # type: ignore[assignment]
        referenced = in_files | {entry["accessor"] for entry in tokens.values()} | set(pending)
        assert set(tool_tokens(client, sandbox.prefix)) - referenced == set(), scenario
        assert host_tokens(client, sandbox.prefix) <= in_files, scenario
        if rotate:  # every old token is gone: rotated and revoked, by the host or by the admin run
            alive = {user for user in PEOPLE
                     if _alive(client, first[user])}
            assert alive == set(), (scenario, alive)
        assert_no_secrets(sandbox.outputs, set(first.values()) | set(files.values()) | {bao.root_token})


def _alive(client: hvac.Client, token: str) -> bool:
    try:
        client.auth.token.lookup(token)
    except hvac.exceptions.Forbidden:
        return False
    return True
