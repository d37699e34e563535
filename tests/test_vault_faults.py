"""Vault faults against a real OpenBao behind a loopback proxy (tests/support/faultproxy.py).

A short outage and a leader election (307 to a dead leader) are ridden out by
the retry policy; a Vault that stops answering mid-apply ends the run quickly
with one line, the remaining Vault changes not attempted and the local ones
still made. The root checks go to OpenBao directly, not through the proxy.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from reconcile.common.exitcodes import Exit
from reconcile.vault.client import Vault
from reconcile.vault.values import Secret
from tests.support.faultproxy import FaultProxy
from tests.support.openbao import OpenBaoServer, free_port
from tests.support.world import World

REPO = Path(__file__).resolve().parent.parent
MINT = b"POST /v1/auth/token/create-orphan"


@pytest.fixture
def proxy(openbao: OpenBaoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    with FaultProxy(upstream_port=openbao.port) as fault:
        monkeypatch.setenv("VAULT_ADDR", fault.address)
        yield fault


def later(seconds: float, action: object) -> threading.Timer:
    timer = threading.Timer(seconds, action)  # type: ignore[arg-type]
    timer.daemon = True
    timer.start()
    return timer


def users(count: int) -> dict[str, dict[str, object]]:
    return {f"u{index:02d}": {} for index in range(count)}


def test_a_short_outage_is_ridden_out(world: World, proxy: FaultProxy) -> None:
    world.write_roster(users(3))
    proxy.refuse()
    later(3.0, proxy.passthrough)
    started = time.monotonic()
    result = world.run("apply")
    assert result.code == Exit.OK, result.err
    assert time.monotonic() - started >= 2.5  # it did wait for Vault to come back
    assert all(world.token(user) for user in users(3))
    world.assert_converged()


def test_a_leader_election_is_ridden_out_without_following_the_redirect(world: World,
                                                                        proxy: FaultProxy) -> None:
    world.write_roster(users(3))
    dead_leader = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proxy.redirect(dead_leader)
    later(3.0, proxy.passthrough)
    result = world.run("apply")
    assert result.code == Exit.OK, result.err
    world.assert_converged()


def test_an_outage_past_the_retries_is_one_line_and_exit_1(world: World, proxy: FaultProxy) -> None:
    world.write_roster(users(2))
    proxy.refuse()
    started = time.monotonic()
    result = world.run("plan")
    assert time.monotonic() - started < 15
    assert result.code == Exit.ERROR
    errors = [line for line in result.err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "unreachable" in errors[0] and proxy.address in errors[0], result.err


def test_a_hung_vault_ends_a_30_person_apply_quickly(world: World, proxy: FaultProxy, tmp_path: Path) -> None:
    """TCP open, no answer, after the 4th mint: one line, local changes made, well under a minute.

    Run as a process with a time limit: without a deadline each change would wait its own timeout.
    """
    people = users(30)
    world.write_roster(people)

    def stop_answering(head: bytes, number: int) -> None:
        if MINT in head and number == 5:  # the host token's mint is the first (issue 23)
            proxy.hang()
    proxy.count = (MINT,)
    proxy.on_request = stop_answering
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "reconcile", "apply", "--roster", str(world.roster_path),
                           "--root", str(world.root)], cwd=REPO, capture_output=True, text=True, timeout=45)
    elapsed = time.monotonic() - started
    world.texts += [done.stdout, done.stderr]
    assert elapsed < 30, elapsed
    assert done.returncode == Exit.ERROR
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, done.stderr  # the change that met the silence and all the rest
    assert errors[0].startswith("ERROR vault: 26 Vault change(s) not made (devvm-claude-auth-u04, "), errors
    assert "did not answer in time" in errors[0]
    minted = [user for user in people if world.token(user)]
    assert len(minted) == 4
    # Local changes need no Vault: every person's folders and the units were still made.
    assert all((world.root / "home" / user / ".local/state/claude-auth-sync").is_dir() for user in people)
    assert (world.root / "etc/systemd/system/claude-auth-sync@.timer").is_file()
    proxy.passthrough()
    world.run("apply")
    world.assert_converged()


def live_tool_tokens(world: World) -> set[str]:
    """Accessors of the live tokens the tool minted with this world's policies (root lists them all)."""
    found = set()
    client = world.client
    for accessor in client.list("auth/token/accessors")["data"]["keys"]:
        try:
            data = client.auth.token.lookup_accessor(accessor)["data"]
        except Exception:  # revoked meanwhile
            continue
        meta = data.get("meta") or {}
        if meta.get("managed_by") == "claude-auth" and meta.get("kind") != "host" and any(
                policy.startswith(world.prefix) for policy in data["policies"]):
            found.add(accessor)
    return found


def test_a_lost_mint_answer_is_not_retried_and_the_next_run_revokes_its_token(world: World,
                                                                             proxy: FaultProxy) -> None:
    world.write_roster(users(3))
    proxy.drop_after(MINT, nth=3)  # Vault mints u01's token (after the host token's, u00's); the answer never arrives
    first = world.run("apply")
    assert first.code == Exit.ERROR
    errors = [line for line in first.err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and errors[0].startswith("ERROR devvm-claude-auth-u01:"), first.err
    assert proxy.seen[MINT] == 4  # not sent again; u02 still minted
    assert world.token("u00") and world.token("u02") and not world.token("u01")
    assert len(live_tool_tokens(world)) == 3  # one of them is in nobody's file
    proxy.passthrough()
    plan = world.run("plan")
    assert "- token devvm-claude-auth-u01: minted by an interrupted run and in nobody's file; revoke" in plan.lines
    assert world.run("apply").code == Exit.OK
    world.assert_converged()
    in_files = {world.lookup(world.token(user) or "")["accessor"] for user in users(3)}  # type: ignore[index]
    assert live_tool_tokens(world) == in_files


def test_the_syncs_undecoded_backup_read_rides_out_a_leader_election_too(openbao: OpenBaoServer,
                                                                       proxy: FaultProxy) -> None:
    """kv_read_raw (the sync's read of a person's path) sends its request outside hvac's JSON adapter:
    a standby's 307 must still be retried, not read as a malformed KV answer."""
    path = f"faults/leader-{time.monotonic_ns()}"
    Vault(openbao.address, Secret(openbao.root_token)).kv_write_cas("secret", path, {"k": "v"}, 0)
    proxy.redirect(f"http://127.0.0.1:{free_port()}")
    later(2.0, proxy.passthrough)
    started = time.monotonic()
    secret = Vault(proxy.address, Secret(openbao.root_token)).kv_read_raw("secret", path)
    assert time.monotonic() - started >= 1.5  # it waited for the election to end
    assert secret is not None and secret.version == 1 and secret.fields == {"k": b'"v"'}
