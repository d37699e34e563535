"""`claude-auth sync --backup-only` (issue 24) and the notice files, against a real OpenBao.

The backup on change runs no claude at all: the loopback Messages API must see
no request from it. Each test ends by searching all outputs and logs for every
token used (the `user` fixture of tests/test_sync_real.py).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reconcile.sync import flow, notice
from reconcile.sync.statuslog import Lock
from tests.test_sync_real import (REPO, SyncUser, claude_on_path, current_version, new_oauth,  # noqa: F401
                                  user)


def backup_only(user: SyncUser) -> flow.Outcome:
    out = io.StringIO()
    outcome = flow.run(user.name, user.environment(), out, backup_only=True)
    user.outputs.append(out.getvalue())
    return outcome


def rewrite(user: SyncUser, oauth: dict) -> None:
    """Claude's own way: a new file renamed over the old one (with a token the API accepts)."""
    user.remember(oauth)
    if oauth.get("accessToken"):
        user.api.accept(oauth["accessToken"])
    tmp = user.credentials.with_name(".credentials.json.tmp")
    tmp.write_text(json.dumps({"claudeAiOauth": oauth, "mcpOAuth": {"kept": True}}))
    tmp.rename(user.credentials)


def later(oauth: dict, ms: int = 3_600_000) -> dict:
    fresh = new_oauth("refreshed")
    fresh["expiresAt"] = oauth["expiresAt"] + ms
    return fresh


def test_a_refreshed_login_is_backed_up_without_a_probe_and_sync_log_untouched(user: SyncUser) -> None:
    first = new_oauth("first")
    user.login(first)
    assert user.sync().status.value == "OK"
    sync_log = user.log.read_bytes()
    refreshed = later(first)
    rewrite(user, refreshed)

    outcome = backup_only(user)

    assert outcome.status.value == "OK", outcome.line
    assert "backed up on change to" in outcome.line and "(version 2)" in outcome.line
    assert user.stored_oauth() == refreshed
    assert not user.api.saw(refreshed["accessToken"])  # no claude, no billed request
    assert user.log.read_bytes() == sync_log  # sync.log records proven logins only
    assert (user.state_dir / flow.BACKUP_LOG).read_text().splitlines()[-1].endswith(outcome.line)

    again = backup_only(user)
    assert again.status.value == "OK" and "backup unchanged" in again.line
    assert current_version(user.root, user.kv_path) == 2


@pytest.mark.parametrize(("shape", "phrase"), [
    ("older", "older than the backup"),
    ("broken", "holds a broken login"),
    ("setup token", "holds a setup token"),
    ("missing", "no login in"),
])
def test_what_is_never_backed_up_on_change(user: SyncUser, shape: str, phrase: str) -> None:
    first = new_oauth("first")
    user.login(first)
    assert user.sync().status.value == "OK"
    if shape == "older":
        rewrite(user, later(first, -60_000))
    elif shape == "broken":
        rewrite(user, {k: v for k, v in later(first).items() if k not in ("expiresAt", "scopes")})
    elif shape == "setup token":
        rewrite(user, {"accessToken": "sk-ant-oat01-" + "s" * 40, "expiresAt": first["expiresAt"] + 1,
                       "scopes": ["user:inference"]})
    else:
        user.credentials.unlink()

    outcome = backup_only(user)

    assert outcome.status.value == "SKIP", outcome.line
    assert phrase in outcome.line and outcome.exit_code == 0
    assert current_version(user.root, user.kv_path) == 1 and user.stored_oauth() == first


def test_a_burst_of_rewrites_makes_one_backup_of_the_last(user: SyncUser) -> None:
    first = new_oauth("first")
    user.login(first)
    assert user.sync().status.value == "OK"
    logins = [later(first, 1000 * (n + 1)) for n in range(100)]
    started = threading.Event()

    def burst() -> None:
        started.set()
        for login in logins:  # 100 rewrites in about 3 s
            rewrite(user, login)
            time.sleep(0.03)

    writer = threading.Thread(target=burst)
    writer.start()
    started.wait()
    outcome = backup_only(user)
    writer.join()

    assert outcome.status.value == "OK", outcome.line
    assert current_version(user.root, user.kv_path) == 2  # one new version for the whole burst
    assert user.stored_oauth() == logins[-1]


def test_a_running_sync_neither_blocks_the_backup_nor_is_skipped_for_it(user: SyncUser) -> None:
    first = new_oauth("first")
    user.login(first)
    assert user.sync().status.value == "OK"
    rewrite(user, later(first))
    sync_lock = Lock(user.state_dir / "lock")
    assert sync_lock.acquire()  # a sync is running
    try:
        outcome = backup_only(user)
    finally:
        sync_lock.release()
    assert outcome.status.value == "OK", outcome.line
    assert current_version(user.root, user.kv_path) == 2

    backup_lock = Lock(user.state_dir / flow.BACKUP_LOCK)
    assert backup_lock.acquire()  # a backup on change is settling: a sync starting now still runs
    try:
        assert user.sync().status.value == "OK"
    finally:
        backup_lock.release()


def test_a_second_backup_waits_for_the_first_then_gives_up(user: SyncUser, monkeypatch: pytest.MonkeyPatch) -> None:
    first = new_oauth("first")
    user.login(first)
    assert user.sync().status.value == "OK"
    rewrite(user, later(first))
    held = Lock(user.state_dir / flow.BACKUP_LOCK)
    assert held.acquire()
    release = threading.Timer(1.5, held.release)
    release.start()
    began = time.monotonic()
    outcome = backup_only(user)
    assert outcome.status.value == "OK", outcome.line
    assert time.monotonic() - began >= 1.4

    monkeypatch.setattr(flow, "BACKUP_LOCK_WAIT", 0.5)
    assert held.acquire()
    try:
        outcome = backup_only(user)
    finally:
        held.release()
    assert outcome.status.value == "SKIP" and "another backup on change holds its lock" in outcome.line


# --- the notice files --------------------------------------------------------------------------------


def test_a_login_only_the_person_can_fix_leaves_a_notice_that_the_next_ok_removes(user: SyncUser) -> None:
    bad = new_oauth("bad")
    user.login(bad, accepted=False)  # rejected, and no backup to restore

    failed = user.sync()

    assert failed.status.value == "FAIL" and notice.SSO_COMMAND in failed.line
    text = (user.state_dir / notice.NEEDS_YOU).read_text()
    assert text.count("\n") == 1 and f"Run: {notice.SSO_COMMAND}" in text
    assert "sk-ant" not in text

    user.api.outage = True  # an outage says nothing about the login: the notice stays
    try:
        assert user.sync().status.value == "FAIL"
    finally:
        user.api.outage = False
    assert (user.state_dir / notice.NEEDS_YOU).exists()

    user.login(new_oauth("good"))  # the person logged in again
    assert user.sync().status.value == "OK"
    assert not (user.state_dir / notice.NEEDS_YOU).exists()


def test_the_reauthentication_deadline_is_kept_from_the_login(user: SyncUser) -> None:
    login = new_oauth()
    login["refreshTokenExpiresAt"] = 1_900_000_000_000  # 2030-03-17
    user.login(login)
    assert user.sync().status.value == "OK"
    assert (user.state_dir / notice.REAUTH_BY).read_text() == f"1900000000 2030-03-17 {notice.SSO_COMMAND}\n"

    user.login(new_oauth())  # no refreshTokenExpiresAt (2.1.197 writes none): unknown
    assert user.sync().status.value == "OK"
    assert not (user.state_dir / notice.REAUTH_BY).exists()


# --- claude-auth whoami -----------------------------------------------------------------------------


def whoami(user: SyncUser, *extra: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "reconcile", "whoami", "--user", user.name, *extra],
                          env=user.environment(), cwd=REPO, capture_output=True, text=True, timeout=60)
    user.outputs += [done.stdout, done.stderr]
    return done


def test_whoami_shows_the_login_the_last_sync_and_the_backup(user: SyncUser) -> None:
    login = new_oauth()
    login["refreshTokenExpiresAt"] = int(time.time() * 1000) + 2 * 86_400_000  # two days: a next step
    user.login(login)
    assert user.sync().status.value == "OK"

    done = whoami(user, "--json")

    assert done.returncode == 0, done.stderr
    me = json.loads(done.stdout)
    assert (me["user"], me["login_mode"], me["login"]) == (user.name, "oauth", "ok")
    assert me["last_sync_result"] == "OK" and me["backup_version"] == 1 and me["backup_at"]
    assert 0 < me["vault_token_ttl_seconds"] <= 768 * 3600
    assert abs(me["reauth_deadline"] - login["refreshTokenExpiresAt"] / 1000) < 1
    assert abs(me["access_token_expires_at"] - login["expiresAt"] / 1000) < 1
    assert me["next_step"] == notice.SSO_COMMAND  # under three days left
    text = whoami(user).stdout
    assert "log in again by:" in text and f"next step: {notice.SSO_COMMAND}" in text


def test_whoami_after_a_fail_only_the_person_can_fix_names_the_command(user: SyncUser) -> None:
    user.login(new_oauth("bad"), accepted=False)
    assert user.sync().status.value == "FAIL"
    me = json.loads(whoami(user, "--json").stdout)
    assert me["last_sync_result"] == "FAIL" and me["next_step"] == notice.SSO_COMMAND
    assert me["needs_you"].startswith("claude-auth: your Claude login")


def test_whoami_with_vault_down_still_shows_everything_local(user: SyncUser) -> None:
    user.login(new_oauth())
    assert user.sync().status.value == "OK"
    user.address = "http://127.0.0.1:9"  # nothing listens there
    me = json.loads(whoami(user, "--json").stdout)
    assert me["login"] == "ok" and me["last_sync_result"] == "OK"
    assert me["backup_version"] is None and any(note.startswith("Vault: ") for note in me["notes"])
