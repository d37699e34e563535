"""Issue 23: the fleet runs itself. A host enrolled by one admin apply mints for its own people with its
host token alone, and that token can do nothing else. Real OpenBao throughout; the host token is read
from the file the admin apply wrote."""

from __future__ import annotations

import os
import stat
import time
from typing import Any

import hvac
import hvac.exceptions
import pytest
import yaml

from reconcile.cli import main
from reconcile.common.exitcodes import Exit
from reconcile.vault import observe as vault_observe
from tests.support.world import World
from tests.test_vault_real import short_period

HOST, OTHER = "h1", "h2"


def host_client(world: World) -> hvac.Client:
    token = world.host_token()
    assert token
    return hvac.Client(url=world.server.address, token=token)


def role(world: World, host: str = HOST) -> dict[str, Any] | None:
    try:
        return dict(world.client.adapter.get(f"/v1/auth/token/roles/{world.prefix}host.{host}")["data"])
    except hvac.exceptions.InvalidPath:
        return None


def hourly(world: World, monkeypatch: pytest.MonkeyPatch, *argv: str) -> Any:
    """A run as the hourly timer makes it: no admin token anywhere."""
    with monkeypatch.context() as patch:
        patch.delenv("VAULT_TOKEN", raising=False)
        patch.setenv("CLAUDE_AUTH_NO_ADMIN", "1")
        return world.run(*(argv or ("apply",)))


@pytest.fixture
def fleet(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    """alice on h1, bob on h2 only, carol everywhere; h1 enrolled by one admin apply."""
    monkeypatch.setenv("CLAUDE_AUTH_HOSTNAME", HOST)
    world.write_roster({"alice": {"hosts": [HOST]}, "bob": {"hosts": [OTHER]}, "carol": {}})
    first = world.run("apply")
    assert first.code == Exit.OK, first.err
    return world


def test_the_first_admin_apply_enrolls_the_host(fleet: World) -> None:
    world = fleet
    path = world.root / "etc/claude-auth/host-token"
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == 0
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text().count("\n") == 1
    looked = world.lookup(world.host_token() or "")
    assert looked is not None
    assert looked["policies"] == [f"{world.prefix}host.{HOST}"]
    assert looked["orphan"] is True and looked["period"] == 768 * 3600
    assert {k: v for k, v in looked["meta"].items() if k != "mint_nonce"} == {
        "managed_by": "claude-auth", "kind": "host", "host": HOST}
    held = role(world)
    assert held is not None
    assert sorted(held["allowed_policies"]) == [world.policy_name("alice"), world.policy_name("carol")]
    assert held["orphan"] is True and held["token_period"] == 768 * 3600 and held["token_no_default_policy"]
    world.assert_converged()


def test_the_host_token_can_mint_its_people_and_nothing_else(fleet: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world = fleet
    host = host_client(world)
    create = f"/v1/auth/token/create/{world.prefix}host.{HOST}"

    def refused(method: str, path: str, **body: Any) -> bool:
        try:
            getattr(host.adapter, method)(path, json=body) if body else getattr(host.adapter, method)(path)
        except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest):
            return True
        return False

    minted = host.adapter.post(create, json={"policies": [world.policy_name("alice")]})["auth"]
    world.secrets_seen.add(minted["client_token"])
    made = world.lookup(minted["client_token"])
    assert made is not None and made["policies"] == [world.policy_name("alice")] and made["orphan"] is True
    renewed = hvac.Client(url=world.server.address, token=minted["client_token"]).auth.token.renew_self()
    assert renewed["auth"]["lease_duration"] == 768 * 3600  # periodic through the role

    alice_token, bob_policy = world.token("alice") or "", world.policy_name("bob")
    assert refused("post", create, policies=[bob_policy])  # a person not assigned to this host
    assert refused("post", create, policies=[world.policy_name("alice"), "default"])
    assert refused("post", create, policies=[f"{world.prefix}host.{HOST}"])
    assert refused("post", create, policies=["root"])
    for extra in ({"no_parent": False}, {"period": "1h"}, {"ttl": "1h"}, {"explicit_max_ttl": "1h"},
                  {"num_uses": 1}, {"renewable": False}, {"no_default_policy": False}, {"type": "batch"}):
        assert refused("post", create, policies=[world.policy_name("alice")], **extra), extra
    assert refused("post", "/v1/auth/token/create", policies=[world.policy_name("alice")])
    assert refused("post", "/v1/auth/token/create-orphan", policies=[world.policy_name("alice")])
    kv = f"/v1/secret/data/{world.path_prefix}/alice"
    assert refused("get", kv)
    assert refused("post", kv, data={"x": "y"})
    assert refused("post", f"/v1/sys/policies/acl/{world.prefix}alice", policy="path \"*\" {}")
    assert refused("post", f"/v1/sys/policies/acl/{world.prefix}host.{HOST}", policy="path \"*\" {}")
    assert refused("post", "/v1/auth/token/lookup", token=alice_token)
    assert refused("post", "/v1/auth/token/revoke", token=alice_token)
    accessor = str((world.lookup(alice_token) or {})["accessor"])
    assert refused("post", "/v1/auth/token/lookup-accessor", accessor=accessor)
    assert refused("post", "/v1/auth/token/revoke-accessor", accessor=accessor)
    assert refused("list", "/v1/auth/token/accessors")
    # Enrolling another host: its role, its policy, a host token for it.
    assert refused("post", f"/v1/auth/token/roles/{world.prefix}host.{OTHER}", allowed_policies=[bob_policy])
    assert refused("post", f"/v1/auth/token/roles/{world.prefix}host.{HOST}", allowed_policies=[bob_policy])
    assert refused("post", "/v1/auth/token/create-orphan", policies=[f"{world.prefix}host.{OTHER}"])
    assert world.lookup(alice_token) is not None  # none of that touched alice's token

    # Reassigned away from h1 by one admin `apply --vault-only`: h1 may no longer mint for alice.
    world.write_roster({"alice": {"hosts": [OTHER]}, "bob": {"hosts": [OTHER]}, "carol": {}})
    again = world.run("apply", "--vault-only")
    assert again.code == Exit.OK, again.err
    assert refused("post", create, policies=[world.policy_name("alice")])
    assert not refused("get", f"/v1/auth/token/roles/{world.prefix}host.{HOST}")


def test_the_hourly_run_mints_for_a_new_person_after_one_vault_only_run(
        fleet: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world = fleet
    world.write_roster({"alice": {"hosts": [HOST]}, "bob": {"hosts": [OTHER]}, "carol": {}, "dave": {}})
    blocked = hourly(world, monkeypatch)
    assert blocked.code == Exit.OK
    assert "WARN dave: needs an admin run:" in blocked.err and "claude-auth apply --vault-only" in blocked.err
    assert world.token("dave") is None
    assert not (world.root / "etc/systemd/system/timers.target.wants/claude-auth-sync@dave.timer").exists()

    vault_only = world.run("apply", "--vault-only")
    assert vault_only.code == Exit.OK, vault_only.err
    assert any(line.startswith(f"+ policy {world.policy_name('dave')}") for line in vault_only.lines)
    assert any(line.startswith(f"~ host-role {world.prefix}host.{HOST}") for line in vault_only.lines)
    assert world.token("dave") is None  # nothing local

    from reconcile.vault.client import Vault
    one_by_one: list[str] = []
    read_policy = Vault.read_policy
    monkeypatch.setattr(Vault, "read_policy", lambda self, name: one_by_one.append(name) or read_policy(self, name))
    done = hourly(world, monkeypatch)
    assert done.code == Exit.OK, done.err
    assert "WARN" not in done.err, done.err
    assert one_by_one == []  # dave's policy was read pipelined (hostmode.grants): a hiring batch waits on no round trip each
    token = world.token("dave")
    assert token is not None
    info = world.lookup(token)
    assert info is not None and info["policies"] == [world.policy_name("dave")] and info["orphan"] is True
    assert info["meta"]["user"] == "dave" and info["meta"]["host"] == HOST
    assert (world.root / "etc/systemd/system/timers.target.wants/claude-auth-sync@dave.timer").is_symlink()
    assert world.state()["dave"] == info["accessor"]
    assert hourly(world, monkeypatch, "plan").lines[-1] == "No changes."


def test_the_hourly_run_re_mints_a_revoked_token(fleet: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world = fleet
    old = world.token("alice") or ""
    world.client.auth.token.revoke(old)
    done = hourly(world, monkeypatch)
    assert done.code == Exit.OK and "WARN" not in done.err, done.err
    new = world.token("alice")
    assert new and new != old
    assert world.lookup(new) is not None
    assert hourly(world, monkeypatch, "plan").lines[-1] == "No changes."
    world.assert_converged()  # and the admin agrees


def test_the_hourly_run_rotates_an_old_token_and_the_old_one_revokes_itself(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDE_AUTH_HOSTNAME", HOST)
    world.write_roster({"alice": {}, "bob": {}}, token_max_age="2h")
    assert world.run("apply").code == Exit.OK
    old = world.token("alice") or ""
    old_accessor = (world.lookup(old) or {})["accessor"]
    assert hourly(world, monkeypatch, "plan").lines[-1] == "No changes."

    real = time.time
    monkeypatch.setattr(vault_observe.time, "time", lambda: real() + 3 * 3600)  # Vault read 3 h later
    plan = hourly(world, monkeypatch, "plan")
    assert "~ token devvm-claude-auth-alice: token is 3h old, older than token_max_age 2h; rotate" in plan.lines
    done = hourly(world, monkeypatch)
    assert done.code == Exit.OK and "WARN" not in done.err, done.err
    new = world.token("alice")
    assert new and new != old and world.lookup(new) is not None
    assert world.lookup(old) is None  # revoked with its own hand
    assert world.state()["alice"] == (world.lookup(new) or {})["accessor"]
    assert old_accessor not in world.pending_revoke()
    monkeypatch.setattr(vault_observe.time, "time", real)
    assert hourly(world, monkeypatch, "plan").lines[-1] == "No changes."


def test_an_outdated_policy_or_a_missing_enrollment_is_one_warn_line(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDE_AUTH_HOSTNAME", HOST)
    world.write_roster({"alice": {}, "bob": {}})
    assert world.run("apply").code == Exit.OK
    world.client.sys.create_or_update_acl_policy(world.policy_name("alice"), 'path "x" { capabilities = ["read"] }')
    world.client.auth.token.revoke(world.token("alice") or "")
    world.client.auth.token.revoke(world.token("bob") or "")
    done = hourly(world, monkeypatch)
    assert done.code == Exit.OK
    warns = [line for line in done.err.splitlines() if line.startswith("WARN")]
    assert len(warns) == 1 and warns[0].startswith("WARN alice: needs an admin run:"), done.err
    assert "differs from the template" in warns[0] and "claude-auth apply --vault-only" in warns[0]
    assert world.lookup(world.token("bob") or "") is not None  # bob's re-mint went ahead


def test_the_host_token_file_is_refused_when_anyone_else_could_have_written_it(
        fleet: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world = fleet
    path = world.root / "etc/claude-auth/host-token"
    os.chmod(path, 0o644)
    world.client.auth.token.revoke(world.token("alice") or "")
    done = hourly(world, monkeypatch)
    assert "minting with this host's host token" not in done.err
    assert world.lookup(world.token("alice") or "") is None  # not minted with a token others could read
    plan = world.run("plan")
    assert "host token file" in plan.out and "mode 0600" in plan.out, plan.out
    os.chmod(path, 0o600)


def test_retire_host_revokes_its_host_token_and_deletes_its_role(fleet: World) -> None:
    world = fleet
    token = world.host_token() or ""
    assert main(["retire-host", HOST, "--roster", str(world.roster_path)]) == Exit.OK
    done = world.capsys.readouterr()
    world.texts += [done.out, done.err]
    assert "1 host token(s) revoked" in done.out, done.err
    assert world.lookup(token) is None
    assert role(world) is None
    names = world.client.sys.list_acl_policies()["data"]["keys"]
    assert f"{world.prefix}host.{HOST}" not in names
    assert world.lookup(world.token("alice") or "") is not None  # people's tokens are left alone
    assert main(["retire-host", HOST, "--roster", str(world.roster_path)]) == Exit.OK
    again = world.capsys.readouterr()
    world.texts += [again.out, again.err]
    assert "0 host token(s) revoked" in again.out


def test_vault_only_needs_an_admin_token_and_touches_nothing_local(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.write_roster({"alice": {}})
    monkeypatch.setenv("CLAUDE_AUTH_NO_ADMIN", "1")
    refused = world.run("apply", "--vault-only")
    assert refused.code == Exit.ERROR and "--vault-only needs an admin token" in refused.err
    monkeypatch.delenv("CLAUDE_AUTH_NO_ADMIN")
    plan = world.run("plan", "--vault-only")
    assert plan.code == Exit.CHANGES_PENDING
    assert plan.lines == [f"+ policy {world.policy_name('alice')}: no policy yet for user alice",
                          "Plan: 1 to add, 0 to change, 0 to remove."]
    assert world.run("apply", "--vault-only").code == Exit.OK
    assert not (world.root / "var").exists() and not (world.root / "home/alice/.config").exists()
    assert world.run("plan", "--vault-only").lines == ["No changes."]
    assert yaml.safe_load(world.roster_path.read_text())["users"] == {"alice": {}}


def test_the_hourly_run_renews_its_own_host_token(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    short_period(monkeypatch, "20s", 20)
    monkeypatch.setenv("CLAUDE_AUTH_HOSTNAME", HOST)
    world.write_roster({"alice": {}})
    assert world.run("apply").code == Exit.OK
    host_token = world.host_token() or ""
    time.sleep(11)  # the host token's TTL falls below half of the 20 s period (9 s to spare)
    done = hourly(world, monkeypatch)
    assert done.code == Exit.OK, done.err
    assert any(line.startswith(f"~ host-token claude-auth-host-{HOST}: renewed") for line in done.lines), done.out
    looked = world.lookup(host_token)
    assert looked is not None and looked["ttl"] > 10
    assert world.host_token() == host_token  # renewed, not replaced


def test_a_host_of_thousands_of_people_can_be_enrolled(openbao: Any) -> None:
    """OpenBao refuses a JSON body of more than 1,000 strings; the role's policy list of a big host
    must still be written whole, and read back equal (found by `make bench` at 1,000 people)."""
    from reconcile.vault.client import Vault
    from reconcile.vault.hosts import DesiredHost, role_drift
    from reconcile.vault.values import Secret

    want = DesiredHost(host="big", role="t-host.big", allowed_policies=tuple(f"t-u{i:05d}" for i in range(10_000)),
                       policy_text="", period="768h", period_seconds=768 * 3600)
    vault = Vault(openbao.address, Secret(openbao.root_token))
    vault.write_role(want.role, want.role_fields())
    have = vault.read_role(want.role)
    assert have is not None and role_drift(want, have) == []
    assert len(have["allowed_policies"]) == 10_000 and have["disallowed_policies_glob"] == []


def test_status_and_the_metrics_show_the_host_token(fleet: World, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Any) -> None:
    """A dead host token silently turns the hourly run back into warnings: status says so, and the
    metric the alert reads goes to 0 (absent when the host is not enrolled)."""
    import json

    world = fleet
    textfile = tmp_path / "claude-auth.prom"

    def host_samples() -> list[str]:
        return [line for line in textfile.read_text().splitlines()
                if line.startswith("claude_auth_host_token_ttl_seconds{")]

    shown = world.run("status", "--prometheus", str(textfile))
    assert shown.code == Exit.OK and f"Host token of {HOST}: alive, 32.0 days left." in shown.out
    (sample,) = host_samples()
    assert sample.startswith(f'claude_auth_host_token_ttl_seconds{{host="{HOST}"}} ')
    assert 31 * 86400 < float(sample.split()[-1]) <= 32 * 86400

    world.client.auth.token.revoke(world.host_token())
    dead = hourly(world, monkeypatch, "status", "--prometheus", str(textfile))
    assert f"Host token of {HOST}: dead; an admin `claude-auth apply` on this host mints a new one." in dead.out
    assert host_samples() == [f'claude_auth_host_token_ttl_seconds{{host="{HOST}"}} 0']
    as_json = json.loads(hourly(world, monkeypatch, "status", "--json").out)
    assert as_json["host_token"] == {"host": HOST, "state": "dead", "ttl_seconds": None, "note": None}

    (world.root / "etc/claude-auth/host-token").unlink()
    gone = hourly(world, monkeypatch, "status", "--prometheus", str(textfile))
    assert f"Host token of {HOST}: not enrolled" in gone.out
    assert host_samples() == []
    world.texts.append(textfile.read_text())  # searched for every token at teardown (the world fixture)


def test_a_killed_enrollments_temporary_file_is_removed(fleet: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL between the temporary host-token file's creation and its rename left it (holding a token,
    revoked by the admin scan) for good (seen in tests/test_crash.py under load); the next run removes it."""
    world = fleet
    left = world.root / "etc/claude-auth/.host-token.0123456789ab.tmp"
    left.write_text("hvs.left-by-a-killed-run\n")
    left.chmod(0o600)
    assert hourly(world, monkeypatch).code == Exit.OK
    assert not left.exists()
    assert world.host_token() is not None
