"""What one person controls fails only that person, against a real OpenBao.

A person controls their token file and, with their own scoped token, the data
at their KV path. Garbage in either must leave every other person observed,
planned, applied and reported, with one line naming the person.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from reconcile.common.exitcodes import Exit
from tests.support.world import World

GARBAGE = {"bob": "b.!!!!", "carol": "hvb.AAAAAQ%%%%"}
"""OpenBao answers 400 to the admin lookup of these and 500 to their own lookup-self."""


def four_people(world: World, tmp_path: Path) -> Path:
    """alice, bob, carol, dave applied; returns the metrics textfile the roster names."""
    metrics = tmp_path / "metrics.prom"
    world.write_roster({name: {} for name in ("alice", "bob", "carol", "dave")})
    world.roster_path.write_text(world.roster_path.read_text()
                                 + f"status:\n  prometheus_textfile: {metrics}\n")
    assert world.run("apply").code == Exit.OK
    return metrics


def state_folder(world: World, user: str) -> Path:
    return world.root / "home" / user / ".local/state/claude-auth-sync"


def test_garbage_token_files_are_re_minted_by_the_admin_run_and_nobody_else_is_held_up(
        world: World, tmp_path: Path) -> None:
    four_people(world, tmp_path)
    for user, value in GARBAGE.items():
        world.put_token(user, value)
    shutil.rmtree(state_folder(world, "dave"))  # someone else's drift must still be planned and fixed
    plan = world.run("plan")
    assert plan.code == Exit.CHANGES_PENDING, plan.err
    for user in GARBAGE:
        assert f"~ token devvm-claude-auth-{user}: token is expired, revoked or unknown; re-mint" in plan.lines
    assert any("dave" in line and "claude-auth-sync" in line for line in plan.lines), plan.out
    applied = world.run("apply")
    assert applied.code == Exit.OK, applied.err
    for user in GARBAGE:
        assert world.token(user) not in GARBAGE.values() and world.lookup(world.token(user) or "")
    assert state_folder(world, "dave").is_dir()
    world.assert_converged()


def test_garbage_token_files_fail_only_their_owners_in_the_hourly_run(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = four_people(world, tmp_path)
    for user, value in GARBAGE.items():
        world.put_token(user, value)
    shutil.rmtree(state_folder(world, "dave"))
    metrics.unlink()
    monkeypatch.setenv("CLAUDE_AUTH_NO_ADMIN", "1")
    plan = world.run("plan")
    assert plan.code == Exit.ERROR
    errors = [line for line in plan.err.splitlines() if line.startswith("ERROR")]
    assert sorted(line.split(":")[0] for line in errors) == ["ERROR bob", "ERROR carol"], plan.err
    assert any("dave" in line for line in plan.lines), plan.out  # dave's drift is still planned
    applied = world.run("apply")
    assert applied.code == Exit.ERROR  # something failed, and it says who
    errors = [line for line in applied.err.splitlines() if line.startswith("ERROR")]
    assert sorted(line.split(":")[0] for line in errors) == ["ERROR bob", "ERROR carol"], applied.err
    assert state_folder(world, "dave").is_dir()  # everyone else's changes were made
    assert metrics.is_file()


def admin_then_hourly(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run the loop body once with the admin token, then once as the hourly run does."""
    yield
    monkeypatch.setenv("CLAUDE_AUTH_NO_ADMIN", "1")
    yield


def status_rows(world: World) -> dict[str, dict[str, Any]]:
    status = world.run("status", "--json")
    assert status.code == Exit.OK, status.err
    return {row["user"]: row for row in json.loads(status.out)["users"]}


def test_garbage_token_files_leave_everyone_else_in_status(world: World, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    four_people(world, tmp_path)
    for user, value in GARBAGE.items():
        world.put_token(user, value)
    for _ in admin_then_hourly(monkeypatch):
        rows = status_rows(world)
        assert rows["alice"]["token"] == rows["dave"]["token"] == "alive"
        assert rows["bob"]["token"] != "alive" and rows["carol"]["token"] != "alive"


def put_raw(world: World, user: str, body: bytes) -> None:
    """Store `body` (the JSON of a KV v2 write) at the person's path, as their own token may."""
    url = f"{world.server.address}/v1/secret/data/{world.path_prefix}/{user}"
    answer = requests.post(url, data=body, headers={"X-Vault-Token": world.token(user) or ""}, timeout=60)
    assert answer.status_code == 200, answer.text[:200]


DEEP = b'{"data": {"nest": ' + b"[" * 3000 + b"]" * 3000 + b"}}"
HUGE = b'{"data": {"blob": "' + b"x" * (17 * 1024 * 1024) + b'"}}'
WRONG = b'{"data": {"backed_up_at": {"not": "a time"}, "claude_ai_oauth_json": 7}}'


@pytest.mark.parametrize("body, why", [(DEEP, "nests deeper than 64 levels"),
                                       (HUGE, "larger than 16 MiB"),
                                       (WRONG, None)], ids=["deep", "huge", "wrong-types"])
def test_hostile_data_at_a_kv_path_fails_only_that_persons_backup_cell(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: bytes, why: str | None) -> None:
    metrics = four_people(world, tmp_path)
    put_raw(world, "bob", body)
    for _ in admin_then_hourly(monkeypatch):
        rows = status_rows(world)
        assert rows["alice"]["token"] == rows["bob"]["token"] == rows["dave"]["token"] == "alive"
        assert rows["bob"]["backup_at"] is None
        if why is not None:  # the answer cannot be read at all: one note, in the table too
            assert rows["bob"]["backup_version"] is None
            assert any(why in note for note in rows["bob"]["notes"]), rows["bob"]
            table = world.run("status")
            assert any(line.strip().startswith("bob: backup:") and why in line
                       for line in table.out.splitlines()), table.out
        else:  # readable, but its time is no time
            assert rows["bob"]["backup_version"] == 1
        metrics.unlink(missing_ok=True)
        applied = world.run("apply")  # its metrics read every backup too
        assert applied.code == Exit.OK, applied.err
        assert metrics.is_file()
