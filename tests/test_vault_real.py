"""plan / apply against a real OpenBao dev server, through `main(argv)` in-process.

Each test gets its own --root (etc/passwd with users at uid 5001.., homes
under it) and its own policy and KV prefixes, so the session-wide server is
shared safely. Every request the tool sends is logged at the HTTP layer
(independently of reconcile.vault's own count) to count writes. At the end of
each test, every token minted during it is searched for in every stdout,
stderr, JSON document, log record and the state file.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import hvac
import hvac.exceptions
import pytest

from reconcile.engine import homes as engine_homes
from reconcile.engine import session as engine_session
from reconcile.common.exitcodes import Exit
from reconcile.roster.loader import load_roster
from tests.support.openbao import OpenBaoServer, free_port
from tests.support.policy_text import expected_policy

from tests.support.world import World


def short_period(monkeypatch: pytest.MonkeyPatch, period: str, seconds: int) -> None:
    """The roster refuses periods under 1h; tests of expiry and renewal need seconds."""
    def load(path: str) -> Any:
        roster = load_roster(path)
        return dataclasses.replace(roster, vault=dataclasses.replace(
            roster.vault, token_period=period, token_period_seconds=seconds))
    monkeypatch.setattr(engine_session, "load_roster", load)


# --- the whole cycle ------------------------------------------------------------------------------


def test_fresh_plan_apply_then_nothing(world: World) -> None:
    world.write_roster({"alice": {}, "bob": {"parked": True}, "carol": {"claude_auth": False}, "erin_b": {}})
    plan = world.run("plan")
    assert plan.code == Exit.CHANGES_PENDING, plan.err
    for user in ("alice", "bob", "carol", "erin_b"):
        assert f"+ policy {world.prefix}{user}: no policy yet for user {user}" in plan.lines
    for user in ("alice", "bob", "erin_b"):  # parked bob too; carol has claude_auth false
        assert f"+ token devvm-claude-auth-{user}: no token yet; mint" in plan.lines
    assert not any("devvm-claude-auth-carol" in line for line in plan.lines)
    assert plan.lines[-1].startswith("Plan: ") and plan.lines[-1].endswith("to remove.")
    assert world.writes() == []  # plan changes nothing

    as_json = world.run("plan", "--json")
    assert as_json.code == Exit.CHANGES_PENDING
    document = json.loads(as_json.out)
    assert all(set(item) == {"action", "kind", "name", "reason"} for item in document)
    assert {"action": "create", "kind": "token", "name": "devvm-claude-auth-alice",
            "reason": "no token yet; mint"} in document

    applied = world.run("apply")
    assert applied.code == Exit.OK, applied.err
    assert f"+ policy {world.prefix}alice: created" in applied.lines
    assert "+ token devvm-claude-auth-alice: minted and written" in applied.lines

    for user in ("alice", "bob", "erin_b"):
        path = world.token_path(user)
        assert (path.stat().st_mode & 0o777, path.stat().st_uid) == (0o600, world.uids[user])
        assert (path.parent.stat().st_mode & 0o777, path.parent.stat().st_uid) == (0o700, world.uids[user])
        info = world.lookup(world.token(user) or "")
        assert info is not None
        assert info["policies"] == [world.policy_name(user)]
        assert info["orphan"] is True and info["period"] == 768 * 3600
        assert info["display_name"] == f"token-devvm-claude-auth-{user.replace('_', '-')}"
        meta = dict(info["meta"])
        assert len(meta.pop("mint_nonce")) == 32  # the intent it was written ahead under (statefile)
        assert meta == {"managed_by": "claude-auth", "user": user, "host": socket.gethostname()}
    assert world.token("carol") is None
    state_file = world.root / "var/lib/claude-auth/state.json"
    assert state_file.stat().st_mode & 0o777 == 0o600 and state_file.parent.stat().st_mode & 0o777 == 0o700
    assert set(world.state()) == {"alice", "bob", "erin_b"}

    world.assert_converged()
    assert world.run("plan", "--json").out.strip() == "[]"

    second = world.run("apply")
    assert second.code == Exit.OK
    assert second.lines == ["No changes."]
    assert world.writes() == []  # zero Vault writes, counted on the wire
    # capabilities-self + one policy LIST + one lookup per token, + the host token's lookup and its role's read
    assert len(world.http) == 2 + 3 + 2

    second_json = world.run("apply", "--json")
    assert json.loads(second_json.out) == {"changes": [], "results": [], "warnings": [], "errors": []}


def test_a_policy_listing_larger_than_16_mib_is_read(world: World) -> None:
    """Every policy's text comes in one listing: 17 MiB at 10,000 people, which the 16 MiB cap of
    ordinary answers refused (`make bench`); the listing has a bound of its own (transport.MAX_LISTING_BYTES)."""
    world.write_roster({"alice": {}})
    assert world.run("apply").code == Exit.OK
    filler = "# " + "x" * (1024 * 1024) + "\npath \"secret/data/nobody\" {\n  capabilities = [\"read\"]\n}\n"
    for index in range(18):  # other tools' policies: 18 MiB of listing
        world.client.sys.create_or_update_acl_policy(name=f"other-tool-{index}", policy=filler)
    planned = world.run("plan")
    assert planned.code == Exit.OK, planned.err
    assert planned.lines[-1] == "No changes."


def test_apply_json_reports_results(world: World) -> None:
    world.write_roster({"alice": {}})
    run = world.run("apply", "--json")
    assert run.code == Exit.OK
    document = json.loads(run.out)
    assert set(document) == {"changes", "results", "warnings", "errors"}
    assert {"name": "devvm-claude-auth-alice", "kind": "token", "action": "create", "ok": True,
            "error": None} in document["results"]
    assert all(set(r) == {"name", "kind", "action", "ok", "error"} for r in document["results"])


def test_diff_shows_policy_text_never_a_token(world: World) -> None:
    world.write_roster({"alice": {}})
    assert world.run("apply").code == Exit.OK
    world.client.sys.create_or_update_acl_policy(world.policy_name("alice"), 'path "secret/*" {\n  capabilities = ["read"]\n}\n')
    run = world.run("plan", "--diff")
    assert run.code == Exit.CHANGES_PENDING
    assert f"~ policy {world.prefix}alice: text differs from the template" in run.lines
    assert '    -path "secret/*" {' in run.lines
    assert any(line.startswith("    +path \"secret/data/") for line in run.lines)


# --- drift, detected and repaired by the next admin apply -----------------------------------------


def _edit_policy(w: World) -> str:
    w.client.sys.create_or_update_acl_policy(w.policy_name("alice"), 'path "secret/*" {\n  capabilities = ["read", "list"]\n}\n')
    return f"~ policy {w.prefix}alice: text differs from the template"


def _delete_policy(w: World) -> str:
    w.client.sys.delete_acl_policy(w.policy_name("alice"))
    return f"+ policy {w.prefix}alice: no policy yet for user alice"


def _revoke_token(w: World) -> str:
    w.client.auth.token.revoke_accessor(w.state()["alice"])
    return "~ token devvm-claude-auth-alice: token is expired, revoked or unknown; re-mint"


def _expire_token(w: World) -> str:
    w.put_token("alice", w.mint_like_tool("alice", period="2s"))
    time.sleep(3.5)
    return "~ token devvm-claude-auth-alice: token is expired, revoked or unknown; re-mint"


def _delete_token_file(w: World) -> str:
    w.token_path("alice").unlink()
    return "~ token devvm-claude-auth-alice: token file is missing; re-mint"


def _bobs_token_in_alices_file(w: World) -> str:
    w.put_token("alice", w.token("bob") or "")
    return f"~ token devvm-claude-auth-alice: policies are [{w.prefix}bob], want [{w.prefix}alice]"


def _extra_policy(w: World) -> str:
    w.put_token("alice", w.mint_like_tool("alice", policies=[w.policy_name("alice"), w.policy_name("bob")]))
    return f"~ token devvm-claude-auth-alice: policies are [{w.prefix}alice, {w.prefix}bob], want [{w.prefix}alice]"


DRIFTS = {
    "policy-edited": _edit_policy,
    "policy-deleted": _delete_policy,
    "token-revoked": _revoke_token,
    "token-expired": _expire_token,
    "token-file-deleted": _delete_token_file,
    "token-of-another-user": _bobs_token_in_alices_file,
    "token-extra-policy": _extra_policy,
}


@pytest.mark.parametrize("drift", list(DRIFTS))
def test_drift_is_detected_and_repaired(world: World, drift: str) -> None:
    world.write_roster({"alice": {}, "bob": {}})
    assert world.run("apply").code == Exit.OK
    first_alice = world.token("alice") or ""
    bob_token = world.token("bob") or ""
    file_token_before = None

    expected_line = DRIFTS[drift](world)
    if world.token_path("alice").exists():
        file_token_before = world.token("alice")
    plan = world.run("plan")
    assert plan.code == Exit.CHANGES_PENDING, plan.out + plan.err
    assert any(line.startswith(expected_line) for line in plan.lines), plan.out

    applied = world.run("apply")
    assert applied.code == Exit.OK, applied.out + applied.err
    world.assert_converged()

    alice = world.token("alice") or ""
    info = world.lookup(alice)
    assert info is not None and info["policies"] == [world.policy_name("alice")]
    assert world.state()["alice"] == info["accessor"]
    if drift.startswith("token"):
        assert alice not in (first_alice, file_token_before)
        assert world.lookup(first_alice) is None  # the replaced token of alice's is revoked
        if file_token_before and file_token_before != bob_token:
            assert world.lookup(file_token_before) is None
    else:
        assert alice == first_alice  # a policy repair does not touch the token
    # bob is never touched, even when his token sat in alice's file
    assert world.token("bob") == bob_token and world.lookup(bob_token) is not None


def test_unsafe_token_file_is_a_user_problem_others_proceed(world: World) -> None:
    world.write_roster({"alice": {}, "bob": {}})
    config = world.root / "home/alice/.config"
    config.mkdir(parents=True)
    target = world.root / "elsewhere"
    target.mkdir()
    (config / "claude-auth-sync").symlink_to(target)
    run = world.run("apply")
    assert run.code == Exit.ERROR
    assert any(line.startswith("ERROR alice: ") and "symbolic link" in line for line in run.err.splitlines())
    assert "+ token devvm-claude-auth-bob: minted and written" in run.lines
    assert not any("devvm-claude-auth-alice" in line for line in run.lines)
    assert list(target.iterdir()) == []


# --- the minted tokens keep users apart -------------------------------------------------------------


def test_cross_user_isolation(world: World) -> None:
    world.write_roster({"alice": {}, "bob": {}})
    assert world.run("apply").code == Exit.OK
    alice = hvac.Client(url=world.server.address, token=world.token("alice"))
    mine, bobs = f"{world.path_prefix}/alice", f"{world.path_prefix}/bob"
    kv = alice.secrets.kv.v2

    kv.create_or_update_secret(path=mine, secret={"k": "1"}, cas=0, mount_point="secret")
    read = kv.read_secret_version(path=mine, mount_point="secret", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"k": "1"}
    kv.create_or_update_secret(path=mine, secret={"k": "2"}, cas=1, mount_point="secret")
    assert kv.read_secret_metadata(path=mine, mount_point="secret")["data"]["current_version"] == 2
    alice.auth.token.lookup_self()
    alice.auth.token.renew_self()

    world.client.secrets.kv.v2.create_or_update_secret(path=bobs, secret={"b": "1"}, mount_point="secret")
    denied: list[Callable[[], object]] = [
        lambda: kv.read_secret_version(path=bobs, mount_point="secret", raise_on_deleted_version=True),
        lambda: kv.create_or_update_secret(path=bobs, secret={"x": "1"}, mount_point="secret"),
        lambda: kv.read_secret_metadata(path=bobs, mount_point="secret"),
        lambda: kv.list_secrets(path=world.path_prefix, mount_point="secret"),
        lambda: alice.sys.read_acl_policy(world.policy_name("bob")),
        lambda: alice.sys.list_acl_policies(),
        lambda: alice.sys.create_or_update_acl_policy("evil", 'path "*" {\n  capabilities = ["sudo"]\n}\n'),
        lambda: alice.auth.token.create(policies=[world.policy_name("alice")]),
        lambda: alice.auth.token.create_orphan(policies=[world.policy_name("alice")]),
        lambda: alice.auth.token.lookup(world.token("bob")),
    ]
    for attempt in denied:
        with pytest.raises(hvac.exceptions.Forbidden):
            attempt()


# --- without an admin token (the hourly run) -------------------------------------------------------


def test_hourly_renews_warns_and_changes_nothing_else(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    short_period(monkeypatch, "8s", 8)
    world.write_roster({"alice": {}, "bob": {}})
    assert world.run("apply").code == Exit.OK
    world.assert_converged()
    alice, bob = world.token("alice") or "", world.token("bob") or ""
    world.client.auth.token.revoke_accessor(world.state()["bob"])  # needs an admin to re-mint
    edited = 'path "secret/*" {\n  capabilities = ["read"]\n}\n'
    world.client.sys.create_or_update_acl_policy(world.policy_name("bob"), edited)  # unseen without an admin
    accessors_before = set(world.client.auth.token.list_accessors()["data"]["keys"])
    state_before = world.state()
    time.sleep(5)  # alice's TTL falls below half of the 8s period

    monkeypatch.setenv("CLAUDE_AUTH_NO_ADMIN", "1")  # the hourly service; VAULT_TOKEN stays set and unused
    run = world.run("apply")
    assert run.code == Exit.OK, run.out + run.err
    assert any(line.startswith("~ token-renewal devvm-claude-auth-alice: renewed") for line in run.lines), run.out
    warns = [line for line in run.err.splitlines() if line.startswith("WARN ")]
    # The host token may not mint for bob either: his policy is not the template's (issue 23).
    assert warns == ["WARN bob: needs an admin run: token devvm-claude-auth-bob: "
                     "token refused its own lookup-self (expired, revoked, or its policy changed); re-mint "
                     f"(policy {world.policy_name('bob')} differs from the template; an admin runs "
                     "`claude-auth apply --vault-only`)"]
    # The only writes: alice's own token renews itself, and so does the host token (same 8 s period).
    assert world.writes() == [("POST", "/v1/auth/token/renew-self")] * 2
    assert world.lookup(alice)["ttl"] > 5  # type: ignore[index]
    # nothing else changed: no token minted or revoked, files and state untouched
    assert set(world.client.auth.token.list_accessors()["data"]["keys"]) == accessors_before
    assert (world.token("alice"), world.token("bob")) == (alice, bob)
    assert world.state() == state_before
    assert world.policy_text("bob") == edited

    plan = world.run("plan")  # still lists what needs the admin, exit 2
    assert plan.code == Exit.CHANGES_PENDING
    assert plan.lines == ["~ token devvm-claude-auth-bob: token refused its own lookup-self "
                          "(expired, revoked, or its policy changed); re-mint "
                          f"(policy {world.policy_name('bob')} differs from the template; an admin runs "
                          "`claude-auth apply --vault-only`)", "Plan: 0 to add, 1 to change, 0 to remove."]

    monkeypatch.delenv("CLAUDE_AUTH_NO_ADMIN")
    assert world.run("apply").code == Exit.OK
    assert world.lookup(world.token("bob") or "") is not None


@pytest.mark.parametrize("kind", ["scoped", "default-policy", "no-sudo"])
@pytest.mark.parametrize("command", ["plan", "apply"])
def test_a_valid_non_admin_token_is_an_error(world: World, monkeypatch: pytest.MonkeyPatch,
                                            kind: str, command: str) -> None:
    """`t3-provision-users` with the wrong token must not pass for a provisioning run."""
    world.write_roster({"alice": {}, "bob": {}})
    assert world.run("apply").code == Exit.OK
    world.token_path("bob").unlink()  # something for a wrong run to change
    token = {"scoped": lambda: world.token("alice") or "",  # may not even ask capabilities-self
             "default-policy": world.plain_token,
             "no-sudo": lambda: world.admin_token(deny=("auth/token/create-orphan",))}[kind]()
    monkeypatch.setenv("VAULT_TOKEN", token)
    before = _tree(world.root)
    run = world.run(command)
    assert run.code == Exit.ERROR and run.out == ""
    lines = run.err.splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("ERROR: the Vault token (VAULT_TOKEN or ~/.vault-token) is not an admin token at "
                               f"VAULT_ADDR={world.server.address}: it lacks ")
    mint = "update and sudo on auth/token/create-orphan"
    policies = f"create or update on sys/policies/acl/{world.prefix}*"
    assert mint in lines[0] and (policies in lines[0]) is (kind != "no-sudo")
    assert "CLAUDE_AUTH_NO_ADMIN=1" in lines[0]
    assert world.writes() == [] and _tree(world.root) == before


def test_without_any_token_or_with_no_admin_set_the_run_is_hourly(world: World,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    world.write_roster({"alice": {}})
    assert world.run("apply").code == Exit.OK
    monkeypatch.delenv("VAULT_TOKEN")  # and no ~/.vault-token: HOME is the test's own folder
    run = world.run("plan")
    assert run.code == Exit.OK and run.lines == ["No changes."]
    assert "NOTE: running without an admin token (no Vault token" in run.err
    monkeypatch.setenv("VAULT_TOKEN", world.token("alice") or "")  # a non-admin token, told to go hourly
    monkeypatch.setenv("CLAUDE_AUTH_NO_ADMIN", "1")
    run = world.run("apply")
    assert run.code == Exit.OK and run.lines == ["No changes."]


def test_status_reads_with_a_non_admin_token(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """`status` is read-only: a non-admin token gives the hourly view, not an error."""
    world.write_roster({"alice": {}})
    assert world.run("apply").code == Exit.OK
    monkeypatch.setenv("VAULT_TOKEN", world.plain_token())
    run = world.run("status", "--json")
    assert run.code == Exit.OK, run.err
    alice = {row["user"]: row for row in json.loads(run.out)["users"]}["alice"]
    assert alice["token"] == "alive"  # looked up with its own lookup-self
    assert alice["policy"] == "—" and "policy: needs an admin token to read" in alice["notes"]


# --- Vault errors: one line naming VAULT_ADDR, exit 1, nothing changed -----------------------------


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_rejected_admin_token(world: World, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    world.write_roster({"alice": {}})
    before = _tree(world.root)
    monkeypatch.setenv("VAULT_TOKEN", "s.not-a-real-token")
    world.secrets_seen.add("s.not-a-real-token")
    run = world.run(command)
    assert run.code == Exit.ERROR and run.out == ""
    lines = run.err.splitlines()
    assert len(lines) == 1 and "rejected" in lines[0] and f"VAULT_ADDR={world.server.address}" in lines[0]
    assert _tree(world.root) == before


@pytest.mark.parametrize("admin", [True, False])
def test_unreachable_vault(world: World, monkeypatch: pytest.MonkeyPatch, admin: bool) -> None:
    world.write_roster({"alice": {}})
    before = _tree(world.root)
    address = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("VAULT_ADDR", address)
    if not admin:
        monkeypatch.setenv("CLAUDE_AUTH_NO_ADMIN", "1")
    run = world.run("apply")
    assert run.code == Exit.ERROR and run.out == ""
    lines = run.err.splitlines()
    assert len(lines) == 1 and f"VAULT_ADDR={address}" in lines[0] and "unreachable" in lines[0]
    assert _tree(world.root) == before


def test_missing_vault_address(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.write_roster({"alice": {}})
    monkeypatch.delenv("VAULT_ADDR")
    run = world.run("plan")
    assert run.code == Exit.ERROR
    assert "VAULT_ADDR" in run.err


# --- offboarding --------------------------------------------------------------------------------------


def test_prune_removes_offboarded_user_keeps_kv(world: World) -> None:
    world.write_roster({"alice": {}, "dave": {}})
    assert world.run("apply").code == Exit.OK
    dave_token = world.token("dave") or ""
    kv_path = f"{world.path_prefix}/dave"
    world.client.secrets.kv.v2.create_or_update_secret(path=kv_path, secret={"keep": "me"}, mount_point="secret")
    world.write_roster({"alice": {}})

    plan = world.run("plan")
    # Orphans are not pending; the host's role and policy that still allow dave are (issue 23).
    assert plan.lines[-1] == "Plan: 0 to add, 2 to change, 0 to remove.", plan.out
    assert f"~ host-role {world.prefix}host.{socket.gethostname().lower()}: allows 2 policies, want 1" in plan.lines
    assert (f"! policy {world.prefix}dave: user dave is not in the roster (apply --prune removes the policy)"
            in plan.lines)
    assert ("! token devvm-claude-auth-dave: user dave is not in the roster (apply --prune removes the token)"
            in plan.lines)
    orphaned = [item for item in json.loads(world.run("plan", "--json").out) if item["action"] == "orphaned"]
    assert {(item["kind"], item["name"]) for item in orphaned} >= {
        ("policy", f"{world.prefix}dave"), ("token", "devvm-claude-auth-dave")}

    assert world.run("apply").code == Exit.OK  # without --prune: nothing is touched
    assert world.policy_text("dave") is not None and world.lookup(dave_token) is not None
    assert "dave" in world.state()

    pruned = world.run("apply", "--prune")
    assert pruned.code == Exit.OK, pruned.err
    assert f"- policy {world.prefix}dave: deleted" in pruned.lines
    assert "- token devvm-claude-auth-dave: revoked" in pruned.lines
    assert world.policy_text("dave") is None
    assert world.lookup(dave_token) is None
    assert "dave" not in world.state()
    kept = world.client.secrets.kv.v2.read_secret_version(path=kv_path, mount_point="secret",
                                                          raise_on_deleted_version=True)
    assert kept["data"]["data"] == {"keep": "me"}
    assert world.policy_text("alice") is not None and world.lookup(world.token("alice") or "") is not None
    world.assert_converged()


def test_claude_auth_false_revokes_the_token_keeps_the_policy(world: World) -> None:
    world.write_roster({"alice": {}})
    assert world.run("apply").code == Exit.OK
    token = world.token("alice") or ""
    world.write_roster({"alice": {"claude_auth": False}})
    plan = world.run("plan")
    assert plan.code == Exit.CHANGES_PENDING
    assert "- token devvm-claude-auth-alice: claude_auth is false for user alice; revoke" in plan.lines
    assert world.run("apply").code == Exit.OK
    assert world.lookup(token) is None and world.policy_text("alice") is not None
    world.assert_converged()


def test_write_failure_revokes_the_new_token(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.write_roster({"alice": {}})
    minted: list[str] = []
    from reconcile.vault import client as vault_client
    original = vault_client.Vault.create_orphan_token

    def spy(self: Any, **kwargs: Any) -> Any:
        result = original(self, **kwargs)
        if kwargs["display_name"].startswith("claude-auth-host-"):
            return result  # the host token (written to root's own folder, which works)
        minted.append(result.token.reveal())
        world.secrets_seen.add(result.token.reveal())
        return result

    def fail(account: Any, rel: str, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
        from reconcile.local.homefs import UnsafePath
        raise UnsafePath("~/.config/claude-auth-sync is a symbolic link; refusing to follow it")

    monkeypatch.setattr(vault_client.Vault, "create_orphan_token", spy)
    monkeypatch.setattr(engine_homes, "write_private_file", fail)
    run = world.run("apply")
    assert run.code == Exit.ERROR
    assert ("ERROR devvm-claude-auth-alice: writing the token file failed (~/.config/claude-auth-sync is a "
            "symbolic link; refusing to follow it); the new token was revoked") in run.err.splitlines()
    assert len(minted) == 1 and world.lookup(minted[0]) is None
    # The intent written before the mint is settled: nothing is recorded and nothing is outstanding.
    state = json.loads((world.root / "var/lib/claude-auth/state.json").read_text())
    assert state["tokens"] == {} and state["intents"] == {}


def test_fresh_server_of_its_own(fresh_openbao: OpenBaoServer, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same cycle on an empty server: only this tool's policies exist afterwards."""
    world.server = fresh_openbao
    monkeypatch.setenv("VAULT_ADDR", fresh_openbao.address)
    monkeypatch.setenv("VAULT_TOKEN", fresh_openbao.root_token)
    world.secrets_seen.add(fresh_openbao.root_token)
    world.write_roster({"alice": {}, "bob": {}})
    assert world.run("apply").code == Exit.OK
    names = set(world.client.sys.list_acl_policies()["data"]["keys"])
    assert names == {"default", "root", world.policy_name("alice"), world.policy_name("bob"),
                     f"{world.prefix}host.{socket.gethostname().lower()}"}  # and this host's host policy (issue 23)
    world.assert_converged()


# --- only the tool's own policies are ever removed ---------------------------------------------------


def test_prune_leaves_hand_made_policies_under_the_prefix(world: World) -> None:
    world.write_roster({"alice": {}, "dave": {}})
    assert world.run("apply").code == Exit.OK
    hand_made = 'path "secret/data/admins/*" {\n  capabilities = ["read"]\n}\n'
    world.client.sys.create_or_update_acl_policy(f"{world.prefix}admins", hand_made)  # not a tool header
    world.client.sys.create_or_update_acl_policy(f"{world.prefix}zed", hand_made)  # a user name, no header
    world.write_roster({"alice": {}})

    plan = world.run("plan", "--prune")
    assert plan.code == Exit.CHANGES_PENDING, plan.out + plan.err
    assert f"- policy {world.prefix}dave: user dave is not in the roster; delete" in plan.lines
    assert not any("admins" in line or "zed" in line for line in plan.lines), plan.out
    assert not any("admins" in line or "zed" in line for line in world.run("plan").lines)

    pruned = world.run("apply", "--prune")
    assert pruned.code == Exit.OK, pruned.err
    assert world.policy_text("dave") is None
    assert world.policy_text("admins") == hand_made and world.policy_text("zed") == hand_made
    world.assert_converged()

    # A hand-made policy named for a roster user is still brought to the template.
    world.write_roster({"alice": {}, "zed": {"claude_auth": False}})
    plan = world.run("plan")
    assert f"~ policy {world.prefix}zed: text differs from the template" in plan.lines
    assert world.run("apply").code == Exit.OK
    assert world.policy_text("zed") == expected_policy("zed", f"{world.path_prefix}/zed")


# --- a replaced token that could not be revoked is not forgotten ---------------------------------------


def test_failed_revoke_of_a_replaced_token_is_retried_by_the_next_admin_run(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.write_roster({"alice": {}})
    assert world.run("apply").code == Exit.OK
    first = world.token("alice") or ""
    first_accessor = world.state()["alice"]
    world.token_path("alice").unlink()  # drift: re-mint, then revoke the recorded token

    # An admin token that may do everything but revoke by accessor.
    monkeypatch.setenv("VAULT_TOKEN", world.admin_token(deny=("auth/token/revoke-accessor",)))
    run = world.run("apply")
    assert run.code == Exit.ERROR
    errors = [line for line in run.err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and errors[0].startswith(
        "ERROR devvm-claude-auth-alice: minted and written, but revoking the replaced token failed (")
    assert run.lines[-1] == "Applied: 0 done, 1 failed, 0 need an admin run."
    second = world.token("alice") or ""
    assert second != first and world.lookup(second) is not None
    assert world.lookup(first) is not None  # still alive: it must not be forgotten
    assert world.state() == {"alice": world.lookup(second)["accessor"]}  # type: ignore[index]
    assert world.pending_revoke() == [first_accessor]

    monkeypatch.setenv("VAULT_TOKEN", world.server.root_token)  # the next admin run cleans up
    plan = world.run("plan")
    assert plan.code == Exit.CHANGES_PENDING
    assert plan.lines == ["- token devvm-claude-auth-alice: replaced token still alive; revoke",
                          "Plan: 0 to add, 0 to change, 1 to remove."]
    applied = world.run("apply")
    assert applied.code == Exit.OK, applied.err
    assert "- token devvm-claude-auth-alice: revoked" in applied.lines
    assert world.lookup(first) is None and world.lookup(second) is not None
    assert world.token("alice") == second and world.pending_revoke() == []
    world.assert_converged()


def test_a_pending_token_already_gone_is_dropped(world: World) -> None:
    world.write_roster({"alice": {}})
    assert world.run("apply").code == Exit.OK
    gone = world.mint_like_tool("alice")
    gone_accessor = world.lookup(gone)["accessor"]  # type: ignore[index]
    world.client.auth.token.revoke_accessor(gone_accessor)
    state = world.root / "var/lib/claude-auth/state.json"
    document = json.loads(state.read_text())
    document["pending_revoke"] = [gone_accessor]
    state.write_text(json.dumps(document))
    plan = world.run("plan")
    assert plan.code == Exit.OK and plan.lines == ["No changes."]
    assert world.run("apply").code == Exit.OK
    assert world.pending_revoke() == []


def test_a_recorded_token_replaced_in_the_file_is_revoked_in_the_same_run(world: World) -> None:
    """What a re-mint killed before its record leaves: the file's good token supersedes the record."""
    world.write_roster({"alice": {}})
    assert world.run("apply").code == Exit.OK
    first = world.token("alice") or ""
    world.put_token("alice", world.mint_like_tool("alice"))  # another token of ours, otherwise as desired
    plan = world.run("plan")
    assert plan.lines == ["- token devvm-claude-auth-alice: replaced token still alive; revoke",
                          "Plan: 0 to add, 0 to change, 1 to remove."], plan.lines
    run = world.run("apply")
    assert run.code == Exit.OK, run.err
    assert "- token devvm-claude-auth-alice: revoked" in run.lines
    second = world.token("alice") or ""
    assert world.state()["alice"] == world.lookup(second)["accessor"]  # type: ignore[index]
    assert world.pending_revoke() == []
    assert world.lookup(first) is None and world.lookup(second) is not None
    world.assert_converged()


# --- one ERROR line, never a traceback -------------------------------------------------------------------


TRIGGERS = sorted(["claude-auth-reconcile.timer", "claude-auth-sync@alice.timer", "claude-auth-sync@bob.timer",
                   "claude-auth-backup@alice.path", "claude-auth-backup@bob.path"])
"""What an apply of alice and bob enables: the reconcile timer, and each person's timer and path unit."""


def test_a_failing_timer_batch_fails_each_timer_change(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from reconcile.local import apply as local_apply
    from reconcile.local.systemd import SystemdError

    def fail(changes: Any, ctx: Any) -> Any:
        raise SystemdError("systemctl daemon-reload failed: Access denied")

    monkeypatch.setattr(local_apply, "link_timers", fail)
    world.write_roster({"alice": {}, "bob": {}})
    run = world.run("apply")
    assert run.code == Exit.ERROR
    timer_errors = [line for line in run.err.splitlines() if line.startswith("ERROR ")]
    assert timer_errors == [f"ERROR {timer}: systemctl daemon-reload failed: Access denied" for timer in TRIGGERS]
    assert "Traceback" not in run.err
    assert run.lines[-1].startswith("Applied: ") and run.lines[-1].endswith(" 5 failed, 0 need an admin run.")
    assert world.token("alice") and world.token("bob")  # everything else was applied


def test_timer_links_are_made_while_the_tokens_are_minted(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """`systemctl enable` of many timers is slow (it searches every unit folder per name), so its
    links are made alongside the mints rather than after them. Each mint here waits until the
    links have begun: it cannot see that when they come after it."""
    from reconcile.vault import apply as vault_apply
    from reconcile.local import apply as local_apply

    linking = threading.Event()
    seen_by_mints: list[bool] = []
    written_first: list[bool] = []  # the links name the unit files: those come first
    real_link, real_mint = local_apply.link_timers, vault_apply._mint

    def link(changes: Any, ctx: Any) -> Any:
        units = world.root / "etc/systemd/system"
        written_first.append(all((units / name).exists() for name in
                                 ("claude-auth-sync@.timer", "claude-auth-reconcile.timer")))
        linking.set()
        return real_link(changes, ctx)

    def mint(order: Any, ctx: Any) -> Any:
        seen_by_mints.append(linking.wait(timeout=5 if not seen_by_mints else 0))
        return real_mint(order, ctx)

    monkeypatch.setattr(local_apply, "link_timers", link)
    monkeypatch.setattr(vault_apply, "_mint", mint)
    world.write_roster({"alice": {}, "bob": {}})
    run = world.run("apply")
    assert run.code == Exit.OK, run.err
    assert seen_by_mints == [True, True] and written_first == [True]
    timer_lines = [line for line in run.lines if " timer " in line]
    assert timer_lines == [f"+ timer {unit}: enabled" for unit in TRIGGERS]
    assert run.lines.index(timer_lines[0]) > max(i for i, line in enumerate(run.lines) if " unit " in line)
    world.assert_converged()


def test_a_live_root_starts_each_timer_only_after_every_token_is_written(world: World,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A new timer runs its first sync as soon as it starts (OnBootSec= has long passed): the start
    must wait for the token files, though the links need not."""
    from reconcile.vault import apply as vault_apply
    from reconcile.local import systemd
    from reconcile.local import apply as local_apply

    started: list[tuple[str, bool]] = []
    start_called = threading.Event()
    mints: list[Any] = []
    real_mint = vault_apply._mint

    def start(units: Any) -> None:
        started.extend((unit, all(world.token(user) for user in ("alice", "bob"))) for unit in units)
        start_called.set()

    def mint(order: Any, ctx: Any) -> Any:
        mints.append(order)  # the first one waits: a start that does not wait for tokens comes first
        start_called.wait(timeout=1.5 if len(mints) == 1 else 0)
        return real_mint(order, ctx)

    monkeypatch.setattr(local_apply.LocalContext, "is_live", property(lambda self: True))
    monkeypatch.setattr(systemd, "start", start)
    monkeypatch.setattr(vault_apply, "_mint", mint)
    monkeypatch.setattr(systemd, "daemon_reload", lambda: None)
    world.write_roster({"alice": {}, "bob": {}})
    run = world.run("apply")
    assert run.code == Exit.OK, run.err
    assert started == [(unit, True) for unit in TRIGGERS]
    assert "+ timer claude-auth-sync@bob.timer: enabled and started" in run.lines


def test_user_database_that_is_a_folder(world: World) -> None:
    world.write_roster({"alice": {}})
    passwd = world.root / "etc" / "passwd"
    passwd.unlink()
    passwd.mkdir()
    before = _tree(world.root)
    for command in ("plan", "apply", "apply"):
        run = world.run(command)
        assert run.code == Exit.ERROR and run.out == ""
        assert run.err.splitlines() == [f"ERROR: cannot read the user database {passwd}: Is a directory"]
    lock = ["var", "var/lib", "var/lib/claude-auth", "var/lib/claude-auth/lock"]  # apply's lock, released
    assert world.writes() == [] and _tree(world.root) == sorted(before + lock)


@pytest.mark.parametrize("error", [OSError(13, "Permission denied", "/etc/systemd/system/x.timer"),
                                   ValueError("cannot put 'a b' on a systemd command line")])
def test_local_observation_errors_are_one_line(world: World, monkeypatch: pytest.MonkeyPatch,
                                               error: Exception) -> None:
    from reconcile.local import observe as local_observe

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(local_observe, "observe_local", fail)
    world.write_roster({"alice": {}})
    run = world.run("plan")
    assert run.code == Exit.ERROR and run.out == ""
    expected = ("ERROR: local state: Permission denied: /etc/systemd/system/x.timer" if isinstance(error, OSError)
                else "ERROR: local state: cannot put 'a b' on a systemd command line")
    assert run.err.splitlines() == [expected]


@pytest.mark.parametrize("command", ["plan", "apply", "status"])
def test_unparsable_vault_addr(world: World, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    world.write_roster({"alice": {}})
    monkeypatch.setenv("VAULT_ADDR", "http://[::1")
    before = _tree(world.root)
    run = world.run(command)
    assert "Traceback" not in run.err
    if command == "status":  # read-only: local facts, the reason in the notes
        assert run.code == Exit.OK
        assert "VAULT_ADDR='http://[::1' is not a valid Vault address" in run.out
        return
    assert run.code == Exit.ERROR and run.out == ""
    lines = run.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: VAULT_ADDR='http://[::1' is not a valid Vault address")
    assert _tree(world.root) == before


def test_unparsable_vault_address_in_the_roster(world: World) -> None:
    world.write_roster({"alice": {}}, address="http://[::1")
    for command in ("plan", "apply"):
        run = world.run(command)
        assert run.code == Exit.ERROR
        lines = run.err.splitlines()
        assert len(lines) == 1 and "vault.address" in lines[0] and "is not a valid URL" in lines[0], run.err


# --- the apply lock ----------------------------------------------------------------------------------


def test_a_second_apply_waits_for_nobody(world: World) -> None:
    import fcntl
    import os
    world.write_roster({"alice": {}})
    lock = world.root / "var/lib/claude-auth/lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the running apply would
        run = world.run("apply")
        assert run.code == Exit.ERROR and run.out == ""
        assert run.err.splitlines() == [f"ERROR: another claude-auth apply is running (lock {lock})"]
        assert world.writes() == [] and world.token("alice") is None
        plan = world.run("plan")  # plan takes no lock
        assert plan.code == Exit.CHANGES_PENDING
    assert world.run("apply").code == Exit.OK  # released: the next one runs
    assert world.run("apply").code == Exit.OK  # and releases its own lock when done
    assert (lock.stat().st_mode & 0o777, lock.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    assert os.stat(lock).st_size == 0


def test_the_apply_lock_never_follows_a_link(world: World) -> None:
    world.write_roster({"alice": {}})
    target = world.root / "elsewhere"
    target.write_text("keep\n")
    target.chmod(0o644)
    lock = world.root / "var/lib/claude-auth/lock"
    lock.parent.mkdir(parents=True)
    lock.symlink_to(target)
    run = world.run("apply")
    assert run.code == Exit.ERROR and run.out == ""
    lines = run.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ERROR: lock {lock} cannot be taken"), run.err
    assert target.read_text() == "keep\n" and target.stat().st_mode & 0o777 == 0o644
    assert world.token("alice") is None


# --- the state file ----------------------------------------------------------------------------------


def _write_state(world: World, document: object) -> Path:
    path = world.root / "var/lib/claude-auth/state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("document", [
    {"version": 2, "tokens": {"alice": {"accessor": None}}},
    {"version": 2, "tokens": {"alice": {"accessor": ""}}},
    {"version": 2, "tokens": {"alice": {"accessor": 7}}},
    {"version": 1, "tokens": {"alice": {"accessor": None}}},
    {"version": 2, "tokens": {}, "pending_revoke": [None]},
    {"version": 3, "tokens": {}, "intents": {"abc": {"user": None}}},
    {"version": 3, "tokens": {}, "intents": ["abc"]},
    {"version": 2, "tokens": {}, "pending_revoke": "acc"},
    {"version": 4, "tokens": {}},
    {"version": True, "tokens": {}},
])
def test_an_invalid_state_file_is_one_error(world: World, document: object) -> None:
    world.write_roster({"alice": {}})
    path = _write_state(world, document)
    run = world.run("plan")
    assert run.code == Exit.ERROR and run.out == ""
    assert run.err.splitlines() == [f"ERROR: state file {path} is not valid (expected version 3, every accessor "
                                    "a non-empty string); fix it or move it away"]


def test_a_version_1_state_file_is_still_read(world: World) -> None:
    world.write_roster({"alice": {}})
    assert world.run("apply").code == Exit.OK
    accessor = world.state()["alice"]
    path = _write_state(world, {"version": 1, "tokens": {"alice": {"accessor": accessor}}})
    world.assert_converged()
    assert world.run("apply").lines == ["No changes."]
    assert json.loads(path.read_text())["version"] == 1  # nothing changed, nothing rewritten
    world.token_path("alice").unlink()
    assert world.run("apply").code == Exit.OK  # re-mint: revokes the recorded token, writes version 3
    written = json.loads(path.read_text())
    assert written["version"] == 3 and written["pending_revoke"] == [] and written["intents"] == {}
    assert world.client.auth.token.lookup_accessor  # the old one is revoked:
    with pytest.raises(hvac.exceptions.InvalidRequest):
        world.client.auth.token.lookup_accessor(accessor)


def test_a_tokenless_client_does_not_pick_up_vault_token(openbao: OpenBaoServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """hvac falls back to $VAULT_TOKEN when given none; the hourly run's tokenless client must not."""
    from reconcile.vault.client import Vault
    from reconcile.vault.values import VaultError
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    with pytest.raises(VaultError):
        Vault(openbao.address, None).lookup_self()
