"""`claude-auth status` against real OpenBao and a --root sandbox, and its Prometheus textfile."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconcile.commands.status_cmd import _short_time, render_table
from reconcile.engine.metrics import FAMILIES, UserMetrics, escape_label_value, render_textfile
from reconcile.engine.status import SyncRecord, UserStatus, _iso, parse_sync_log, parse_time
from tests.support.world import World

STATE = ".local/state/claude-auth-sync"
REQUIRED_FAMILIES = {"claude_auth_sync_last_success_timestamp_seconds",
                     "claude_auth_sync_last_run_timestamp_seconds", "claude_auth_sync_last_result",
                     "claude_auth_token_ttl_seconds", "claude_auth_backup_timestamp_seconds"}


def write_log(world: World, user: str, lines: list[str], name: str = "sync.log") -> None:
    path = world.root / "home" / user / STATE / name
    path.write_text("".join(f"{line}\n" for line in lines))
    os.chown(path, world.uids[user], world.uids[user])
    path.chmod(0o600)


def write_backup(world: World, user: str, backed_up_at: str) -> None:
    world.client.secrets.kv.v2.create_or_update_secret(
        path=f"{world.path_prefix}/{user}", mount_point="secret",
        secret={"claude_ai_oauth_json": '{"accessToken":"x"}', "backed_up_at": backed_up_at,
                "vaultwarden_master_password": "sibling"})


@pytest.fixture
def five_users(world: World) -> World:
    """healthy, parked, revoked token, never synced, last sync failed."""
    world.write_roster({"healthy": {}, "parked": {"parked": True}, "revoked": {}, "fresh": {},
                        "failing": {}, "off": {"claude_auth": False}})
    assert world.run("apply").code == 0
    write_log(world, "healthy", ["2026-11-28T00:00:00Z OK healthy: login works; backed up",
                                 "2026-11-28T06:00:00Z WARN healthy: CLAUDE_CODE_OAUTH_TOKEN removed",
                                 "2026-11-28T06:00:02Z OK healthy: login works; backup unchanged"])
    write_backup(world, "healthy", "2026-11-28T00:00:01Z")
    write_log(world, "failing", ["2026-11-28T00:00:00Z OK failing: login works",
                                 "2026-11-28T06:00:00Z FAIL failing: login rejected; backup no better"])
    token = world.token("revoked")
    assert token
    world.client.auth.token.revoke(token)
    return world


def test_status_json_for_each_kind_of_user(five_users: World) -> None:
    world = five_users
    run = world.run("status", "--json")
    assert run.code == 0, run.err
    rows = {row["user"]: row for row in json.loads(run.out)["users"]}
    assert set(rows) == {"healthy", "parked", "revoked", "fresh", "failing", "off"}

    healthy = rows["healthy"]
    assert (healthy["state"], healthy["policy"], healthy["token"], healthy["timer"]) == \
        ("enabled", "current", "alive", "enabled")
    assert 31 * 86400 < healthy["token_ttl_seconds"] <= 32 * 86400
    assert healthy["token_minted_at"] is not None
    assert healthy["last_sync_result"] == "OK"
    assert healthy["last_sync_at"].startswith("2026-11-28") and healthy["last_success_at"] is not None
    assert healthy["backup_version"] == 1 and healthy["backup_at"] is not None
    assert healthy["notes"] == []

    parked = rows["parked"]
    assert (parked["state"], parked["token"], parked["timer"]) == ("parked", "alive", "disabled")

    revoked = rows["revoked"]
    assert revoked["token"] == "dead" and revoked["token_ttl_seconds"] is None
    assert any(note.startswith("backup: ") for note in revoked["notes"]) or revoked["backup_version"] is None

    fresh = rows["fresh"]
    assert fresh["last_sync_result"] is None
    assert "last sync: never synced (no sync.log)" in fresh["notes"]
    assert "backup: no backup yet" in fresh["notes"]

    failing = rows["failing"]
    assert failing["last_sync_result"] == "FAIL"
    assert failing["last_sync_reason"] == "login rejected; backup no better"
    assert failing["last_success_at"] is not None  # the OK before the FAIL

    off = rows["off"]
    assert (off["state"], off["token"], off["policy"]) == ("claude_auth off", "not wanted", "current")


def test_status_table_fits_100_columns_and_explains_dashes(five_users: World) -> None:
    run = five_users.run("status")
    assert run.code == 0
    lines = run.out.splitlines()
    assert lines[0].split() == ["USER", "STATE", "POLICY", "TOKEN", "TIMER", "LAST", "SYNC", "BACKUP"]
    assert all(len(line) <= 100 for line in lines)
    row = {line.split()[0]: line for line in lines[1:7]}
    assert row["healthy"].split()[:6] == ["healthy", "enabled", "current", "alive", "32.0d", "enabled"]
    assert "FAIL" in row["failing"] and "dead" in row["revoked"]
    assert "Why some cells show —:" in lines
    assert "  fresh: last sync: never synced (no sync.log)" in lines


def test_status_without_admin_token_reads_backup_with_the_users_own_token(
        five_users: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDE_AUTH_NO_ADMIN", "1")
    run = five_users.run("status", "--json")
    assert run.code == 0
    rows = {row["user"]: row for row in json.loads(run.out)["users"]}
    assert rows["healthy"]["policy"] == "—"
    assert "policy: needs an admin token to read" in rows["healthy"]["notes"]
    assert rows["healthy"]["token"] == "alive"
    assert rows["healthy"]["backup_version"] == 1  # read with healthy's own scoped token
    assert rows["revoked"]["token"] == "dead"


def test_status_with_vault_down_still_reports_local_facts(five_users: World,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.openbao import free_port
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{free_port()}")
    run = five_users.run("status", "--json")
    assert run.code == 0
    healthy = {row["user"]: row for row in json.loads(run.out)["users"]}["healthy"]
    assert (healthy["policy"], healthy["token"], healthy["timer"], healthy["last_sync_result"]) == \
        ("—", "—", "enabled", "OK")
    assert any("unreachable" in note for note in healthy["notes"])


def test_status_does_not_follow_a_planted_sync_log_link(five_users: World) -> None:
    world = five_users
    secret_file = world.root / "root-only-secret"
    secret_file.write_text("2026-11-28T00:00:00Z OK healthy: planted\n")
    log = world.root / "home" / "healthy" / STATE / "sync.log"
    log.unlink()
    log.symlink_to(secret_file)
    run = world.run("status", "--json")
    healthy = {row["user"]: row for row in json.loads(run.out)["users"]}["healthy"]
    assert healthy["last_sync_result"] is None
    assert any("symbolic link" in note for note in healthy["notes"])


def test_prometheus_textfile_parses_and_holds_five_families(five_users: World, tmp_path: Path) -> None:
    target = tmp_path / "textfile" / "claude-auth.prom"
    run = five_users.run("status", "--prometheus", str(target))
    assert run.code == 0
    text = target.read_text()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert set(families) == {name for name, _ in FAMILIES}
    assert REQUIRED_FAMILIES | {"claude_auth_user_enabled"} <= set(families)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in families.values() for s in family.samples}
    assert samples[("claude_auth_sync_last_result", (("result", "FAIL"), ("user", "failing")))] == 1
    assert samples[("claude_auth_sync_last_result", (("result", "OK"), ("user", "failing")))] == 0
    assert samples[("claude_auth_sync_last_run_timestamp_seconds", (("user", "healthy"),))] == 1795845602
    assert samples[("claude_auth_backup_timestamp_seconds", (("user", "healthy"),))] == 1795824001
    assert samples[("claude_auth_token_ttl_seconds", (("user", "healthy"),))] > 31 * 86400
    assert samples[("claude_auth_token_ttl_seconds", (("user", "revoked"),))] == 0  # dead: 0 left
    assert ("claude_auth_token_ttl_seconds", (("user", "off"),)) not in samples  # not wanted
    assert not list(target.parent.glob(".*.tmp"))  # the temp file was renamed, not left behind


def test_textfile_escapes_label_values() -> None:
    text = render_textfile([UserMetrics(user='we"ird\\name\n', last_run=1.0, last_result="OK")])
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    families = {f.name: f for f in text_string_to_metric_families(text)}
    (sample,) = families["claude_auth_sync_last_run_timestamp_seconds"].samples
    assert sample.labels["user"] == 'we"ird\\name\n'


def test_parse_sync_log_table() -> None:
    last, success = parse_sync_log(
        "garbage line\n"
        "2026-11-28T00:00:00Z OK a: fine\n"
        "2026-11-28T06:00:00Z RECOVERED a: restored\n"
        "2026-11-28T12:00:00Z WARN a: something\n"
        "2026-11-28T12:00:01Z SKIP a: lock held\n")
    assert last == SyncRecord("SKIP", 1795867201.0, "lock held")
    assert success == 1795845600.0
    assert parse_sync_log("") == (None, None)


def test_table_of_literal_rows_is_within_100_columns() -> None:
    row = UserStatus(user="a" * 32, state="claude_auth off", policy="differs", token="unreadable",
                     timer="disabled", last_run=SyncRecord("RECOVERED", time.time(), "x"),
                     backup_version=123456, backup_at=time.time(), notes=("n" * 200,))
    assert all(len(line) <= 100 for line in render_table([row]).splitlines())


def test_apply_writes_the_textfile_when_the_roster_asks(world: World, tmp_path: Path) -> None:
    target = tmp_path / "node-exporter" / "claude-auth.prom"
    world.write_roster({"alice": {}})
    text = world.roster_path.read_text() + f"status:\n  prometheus_textfile: {target}\n"
    world.roster_path.write_text(text)
    assert world.run("apply").code == 0
    families = {f.name for f in text_string_to_metric_families(target.read_text())}
    assert families == {name for name, _ in FAMILIES}
    assert REQUIRED_FAMILIES <= families


def _samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(path.read_text()) for s in family.samples}


def test_user_enabled_is_written_for_every_roster_user(five_users: World, tmp_path: Path) -> None:
    target = tmp_path / "claude-auth.prom"
    assert five_users.run("status", "--prometheus", str(target)).code == 0
    samples = _samples(target)
    enabled = {labels[0][1]: value for (name, labels), value in samples.items()
               if name == "claude_auth_user_enabled"}
    assert enabled == {"healthy": 1, "parked": 0, "revoked": 1, "fresh": 1, "failing": 1, "off": 0}


def test_missing_or_unreadable_token_has_ttl_zero(five_users: World, tmp_path: Path) -> None:
    world = five_users
    world.token_path("fresh").unlink()
    world.token_path("failing").write_text("")  # holds no token
    target = tmp_path / "claude-auth.prom"
    assert world.run("status", "--prometheus", str(target)).code == 0
    samples = _samples(target)
    assert samples[("claude_auth_token_ttl_seconds", (("user", "fresh"),))] == 0
    assert samples[("claude_auth_token_ttl_seconds", (("user", "failing"),))] == 0
    assert samples[("claude_auth_token_ttl_seconds", (("user", "healthy"),))] > 31 * 86400


def test_ttl_is_left_out_when_vault_is_unreachable(five_users: World, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.openbao import free_port
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{free_port()}")
    target = tmp_path / "claude-auth.prom"
    assert five_users.run("status", "--prometheus", str(target)).code == 0
    samples = _samples(target)
    assert not [key for key in samples if key[0] == "claude_auth_token_ttl_seconds"]
    assert samples[("claude_auth_user_enabled", (("user", "healthy"),))] == 1


def test_a_success_rotated_into_sync_log_1_still_counts(five_users: World) -> None:
    world = five_users
    write_log(world, "failing", ["2026-11-28T06:00:00Z FAIL failing: login rejected"])
    write_log(world, "failing", ["2026-11-27T18:00:00Z OK failing: login works",
                                 "2026-11-28T00:00:00Z RECOVERED failing: restored"], "sync.log.1")
    write_log(world, "healthy", ["2026-11-27T00:00:00Z OK healthy: older, must not win"], "sync.log.1")
    write_log(world, "fresh", ["2026-11-28T00:00:00Z WARN fresh: only a warning"])
    write_log(world, "fresh", ["2026-11-27T18:00:00Z OK fresh: before the rotation"], "sync.log.1")
    run = world.run("status", "--json")
    assert run.code == 0
    rows = {row["user"]: row for row in json.loads(run.out)["users"]}
    assert rows["failing"]["last_sync_result"] == "FAIL"
    assert rows["failing"]["last_success_at"] == _iso(parse_time("2026-11-28T00:00:00Z"))
    assert rows["healthy"]["last_success_at"] == _iso(parse_time("2026-11-28T06:00:02Z"))
    assert rows["fresh"]["last_sync_result"] == "OK"  # sync.log holds no result: the run before
    assert rows["fresh"]["last_success_at"] == _iso(parse_time("2026-11-27T18:00:00Z"))
    assert not [note for note in rows["fresh"]["notes"] if note.startswith("last sync:")]


def test_status_does_not_follow_a_planted_sync_log_1_link(five_users: World) -> None:
    world = five_users
    secret_file = world.root / "root-only-secret"
    secret_file.write_text("2026-11-28T00:00:00Z OK failing: planted\n")
    write_log(world, "failing", ["2026-11-28T06:00:00Z FAIL failing: login rejected"])
    (world.root / "home" / "failing" / STATE / "sync.log.1").symlink_to(secret_file)
    run = world.run("status", "--json")
    failing = {row["user"]: row for row in json.loads(run.out)["users"]}["failing"]
    assert failing["last_sync_result"] == "FAIL" and failing["last_success_at"] is None
    assert any("symbolic link" in note for note in failing["notes"])


def test_hostile_times_in_user_files_do_not_crash_status(five_users: World, tmp_path: Path) -> None:
    """sync.log and the KV backup are the user's to write: out-of-range times are ignored."""
    world = five_users
    write_log(world, "failing", ["2026-11-28T00:00:00Z OK failing: login works",
                                 "2026-11-28T06:00:00Z FAIL failing: login rejected",
                                 "0001-01-01T00:00:00Z OK mallory: hi",
                                 "9999-12-31T23:59:59-14:00 OK mallory: hi"])
    write_backup(world, "healthy", "9999-12-31T23:59:59-14:00")
    table = world.run("status")
    assert table.code == 0
    assert "FAIL" in next(line for line in table.lines if line.startswith("failing "))
    run = world.run("status", "--json", "--prometheus", str(tmp_path / "claude-auth.prom"))
    assert run.code == 0
    rows = {row["user"]: row for row in json.loads(run.out)["users"]}
    assert rows["failing"]["last_sync_result"] == "FAIL"
    assert rows["failing"]["last_success_at"] == _iso(parse_time("2026-11-28T00:00:00Z"))
    assert rows["healthy"]["backup_version"] == 2 and rows["healthy"]["backup_at"] is None


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59-14:00",
                                  "1999-12-31T23:59:59Z", "2026-11-30T00:00:01Z", "not a time", ""])
def test_parse_time_rejects_times_outside_a_sane_range(text: str) -> None:
    now = parse_time("2026-11-28T23:59:59Z")
    assert now is not None
    assert parse_time(text, now=now) is None


def test_parse_time_accepts_times_up_to_a_day_ahead() -> None:
    now = 1795845600.0  # 2026-11-28T06:00:00Z
    assert parse_time("2000-01-01T00:00:00Z", now=now) == 946684800.0
    assert parse_time("2026-11-29T06:00:00Z", now=now) == now + 86400
    assert parse_time("2026-11-28T07:00:00+01:00", now=now) == now


@pytest.mark.parametrize("at", [-62135596800.0, 253402351199.0, 1e20, -1e20,
                                float("inf"), float("nan")])
def test_time_formatting_never_raises(at: float) -> None:
    assert _iso(at) is None
    assert _short_time(at) == "—"
    row = UserStatus(user="x", state="enabled", policy="current", token="alive", token_minted_at=at,
                     last_run=SyncRecord("OK", at, "r"), last_success_at=at, backup_version=1,
                     backup_at=at)
    assert row.as_json()["last_sync_at"] is None
    assert render_table([row]).splitlines()[1].split()[-2:] == ["v1", "—"]


def _row(user: str, **changes: Any) -> UserStatus:
    at = time.time()
    return replace(UserStatus(user=user, state="enabled", policy="current", token="alive",
                              token_ttl_seconds=32 * 86400, timer="enabled",
                              last_run=SyncRecord("OK", at, "fine"), backup_version=3, backup_at=at),
                   **changes)


def test_table_column_fits_a_32_character_name() -> None:
    long_name = "a" * 31 + "z"
    lines = render_table([_row("bob"), _row(long_name), _row("carol", state="parked", timer="disabled")]
                         ).splitlines()
    assert all(len(line) <= 100 for line in lines)
    assert lines[0].split() == ["USER", "STATE", "POLICY", "TOKEN", "TIMER", "LAST", "SYNC", "BACKUP"]
    for line, user in zip(lines[1:], ["bob", long_name, "carol"]):
        cells = line.split()
        assert cells[0] == user  # the whole name, separated from STATE
        assert cells[1] in ("enabled", "parked") and cells[2] == "current"
        assert cells[3:5] == ["alive", "32.0d"]
    # Columns line up: every STATE cell starts where the header's does.
    start = lines[0].index("STATE")
    assert all(line[start - 1] == " " and line[start] != " " for line in lines[1:4])


def test_table_cuts_cells_rather_than_run_them_together() -> None:
    row = _row("b" * 32, state="claude_auth off", policy="differs", token="drifted", token_ttl_seconds=9_999 * 86400,
               timer="disabled", last_run=SyncRecord("RECOVERED", time.time(), "x"), backup_version=12345678)
    lines = render_table([row]).splitlines()
    assert all(len(line) <= 100 for line in lines)
    cells = lines[1].split()
    assert cells[0].startswith("bbbbbbbb") and cells[0].endswith("…")
    assert cells[1:6] == ["off", "differs", "drifted", "9999.0d", "disabled"]
    assert cells[6] == "RECOVERED"


def test_status_with_an_unreadable_user_database_is_one_error_line(world: World) -> None:
    world.write_roster({"alice": {}})
    passwd = world.root / "etc" / "passwd"
    passwd.unlink()
    passwd.mkdir()
    run = world.run("status")
    assert run.code == 1
    assert run.out == ""
    assert run.err.startswith("ERROR: ") and len(run.err.strip().splitlines()) == 1
    assert "Traceback" not in run.err
