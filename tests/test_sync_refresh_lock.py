"""Claude's own refresh lock around the restore and the backup's read of `.credentials.json`.

First claudelock alone on a real file system (the lock folders, their mtime,
stale take-over, release on every way out), then the whole sync against
real OpenBao and the real claude CLI with the lock held by "Claude" (a
folder kept fresh the way proper-lockfile keeps it).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from reconcile.sync import claudelock, credentials, flow, ownerrecord
from reconcile.sync.claudelock import ClaudeRefreshing
from tests.test_sync_real import (KV_MOUNT, SyncUser, claude_on_path, current_version, new_oauth,  # noqa: F401
                                  user)


class ForeignHolder:
    """Another process's proper-lockfile lock: a folder whose mtime is refreshed until released."""

    def __init__(self, path: Path, every: float = 0.5) -> None:
        self.path = path
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def __enter__(self) -> "ForeignHolder":
        os.mkdir(self.path)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.path.exists():
            os.rmdir(self.path)

    def __exit__(self, *exc: object) -> None:
        self.release()


@pytest.fixture
def claude_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "home" / ".claude"
    folder.mkdir(parents=True)
    return folder


def test_lock_folders_are_named_as_claude_names_them(tmp_path: Path, claude_dir: Path) -> None:
    linked = tmp_path / "linked-claude"
    linked.symlink_to(claude_dir)
    main, legacy = claudelock.lock_paths(linked)
    assert main == linked / ".oauth_refresh.lock"
    assert legacy == tmp_path / "home" / ".claude.lock"  # beside the real folder, as realpath + ".lock"


def test_both_locks_are_held_inside_and_gone_after(claude_dir: Path) -> None:
    main, legacy = claudelock.lock_paths(claude_dir)
    with claudelock.held(claude_dir, wait=1):
        assert main.is_dir() and legacy.is_dir()
    assert not main.exists() and not legacy.exists()


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_locks_are_released_on_ctrl_c_and_errors(claude_dir: Path, error: type[BaseException]) -> None:
    main, legacy = claudelock.lock_paths(claude_dir)
    with pytest.raises(error):
        with claudelock.held(claude_dir, wait=1):
            raise error()
    assert not main.exists() and not legacy.exists()


def test_mtime_is_kept_fresh_while_held(claude_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(claudelock, "UPDATE_SECONDS", 0.05)
    main, legacy = claudelock.lock_paths(claude_dir)
    with claudelock.held(claude_dir, wait=1):
        old = time.time() - 60
        os.utime(main, (old, old))
        os.utime(legacy, (old, old))
        time.sleep(0.3)
        assert os.stat(main).st_mtime > time.time() - 5
        assert os.stat(legacy).st_mtime > time.time() - 5


@pytest.mark.parametrize("which", ["main", "legacy"])
def test_a_live_foreign_lock_makes_it_wait_then_give_up(claude_dir: Path, which: str) -> None:
    main, legacy = claudelock.lock_paths(claude_dir)
    path = main if which == "main" else legacy
    with ForeignHolder(path):
        started = time.monotonic()
        with pytest.raises(ClaudeRefreshing) as caught:
            with claudelock.held(claude_dir, wait=1.5, home=claude_dir.parent):
                pytest.fail("entered while Claude held its lock")
        waited = time.monotonic() - started
        assert path.is_dir()  # someone else's lock is never removed
    assert 1.5 <= waited < 5
    assert str(caught.value) == f"~/{path.name if which == 'legacy' else '.claude/' + path.name} " \
                                "held for more than 1.5 s"
    assert not (legacy if which == "main" else main).exists()  # ours was let go while waiting


def test_a_lock_released_during_the_wait_is_taken(claude_dir: Path) -> None:
    main, _ = claudelock.lock_paths(claude_dir)
    holder = ForeignHolder(main).__enter__()
    threading.Timer(0.6, holder.release).start()
    started = time.monotonic()
    with claudelock.held(claude_dir, wait=5):
        assert 0.5 <= time.monotonic() - started < 3
        assert main.is_dir()
    assert not main.exists()


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_stale_lock_is_taken_over(claude_dir: Path, kind: str) -> None:
    main, _ = claudelock.lock_paths(claude_dir)
    if kind == "folder":
        main.mkdir()
    else:
        main.write_text("")
    old = time.time() - claudelock.STALE_SECONDS - 1  # its holder died 61 s ago
    os.utime(main, (old, old))
    started = time.monotonic()
    with claudelock.held(claude_dir, wait=5):
        assert time.monotonic() - started < 0.5
        assert main.is_dir() and os.stat(main).st_mtime > time.time() - 5
    assert not main.exists()


def test_a_lock_just_under_stale_is_not_taken_over(claude_dir: Path) -> None:
    main, _ = claudelock.lock_paths(claude_dir)
    main.mkdir()
    recent = time.time() - claudelock.STALE_SECONDS + 3
    os.utime(main, (recent, recent))
    with pytest.raises(ClaudeRefreshing):
        with claudelock.held(claude_dir, wait=0.5):
            pass
    assert main.is_dir()


def test_the_stale_time_is_the_longest_either_claude_honours() -> None:
    # 2.1.332 counts its lock stale after 60 s (2.1.197: 10 s): taking over a 15 s old lock would
    # break a refresh the newest Claude is still doing. The mtime is refreshed within 2.1.197's 10 s.
    assert claudelock.STALE_SECONDS == 60 and claudelock.UPDATE_SECONDS <= 5


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def plant_record(main: Path, legacy: Path, pid: int, *, born: float | None = None) -> None:
    """A lock held by `pid`, with the owner record Claude 2.1.332 writes beside it."""
    main.mkdir()
    legacy.mkdir()
    record = {"pid": pid, "pidDomain": ownerrecord.pid_domain(), "pidSpace": ownerrecord.pid_space(),
              "lockBirthtimeMs": born if born is not None else ownerrecord.birthtime_ms(main),
              "legacyLockBirthtimeMs": ownerrecord.birthtime_ms(legacy)}
    start = ownerrecord.process_start(pid)
    if start is not None:
        record["procStart"] = start
    ownerrecord.record_path(main).write_text(json.dumps(record))


def test_a_fresh_lock_whose_record_proves_its_holder_dead_is_taken_over_at_once(claude_dir: Path) -> None:
    main, legacy = claudelock.lock_paths(claude_dir)
    plant_record(main, legacy, dead_pid())
    started = time.monotonic()
    with claudelock.held(claude_dir, wait=5):
        assert time.monotonic() - started < 1
        mine = json.loads(ownerrecord.record_path(main).read_text())
        assert mine["pid"] == os.getpid() and mine["lockBirthtimeMs"] == ownerrecord.birthtime_ms(main)
    assert not main.exists() and not legacy.exists() and not ownerrecord.record_path(main).exists()


@pytest.mark.parametrize("case", ["holder alive", "record of an earlier lock", "another pid space", "no record"])
def test_a_fresh_lock_is_never_taken_over_unless_its_holder_is_proven_dead(claude_dir: Path, case: str) -> None:
    main, legacy = claudelock.lock_paths(claude_dir)
    holder = subprocess.Popen(["sleep", "30"])
    try:
        plant_record(main, legacy, holder.pid if case == "holder alive" else dead_pid(),
                     born=1.0 if case == "record of an earlier lock" else None)
        record_path = ownerrecord.record_path(main)
        if case == "another pid space":
            record_path.write_text(record_path.read_text().replace(ownerrecord.pid_space(), "elsewhere#pid:[1]"))
        elif case == "no record":
            record_path.unlink()
        inode = os.stat(main).st_ino
        with pytest.raises(ClaudeRefreshing):
            with claudelock.held(claude_dir, wait=0.6):
                pytest.fail("took over a lock whose holder may be alive")
        assert os.stat(main).st_ino == inode
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("content", [b"[" * 2000 + b"]" * 2000, b"x" * 5000, b"{\"pid\": 1e999}", b"[]"])
def test_a_hostile_owner_record_is_no_record(claude_dir: Path, content: bytes) -> None:
    """The record lives in the person's own ~/.claude: nested 2,000 deep (within the 4 KiB Claude reads), oversized, of the wrong
    shape, it is treated as absent (the lock is then only taken over when 60 s stale)."""
    main, legacy = claudelock.lock_paths(claude_dir)
    main.mkdir()
    ownerrecord.record_path(main).write_bytes(content)
    assert ownerrecord.read(main) is None
    with pytest.raises(ClaudeRefreshing):
        with claudelock.held(claude_dir, wait=0.3):
            pass


def test_replace_oauth_takes_the_lock(claude_dir: Path) -> None:
    # Anything installing a login through replace_oauth (a restore, a setup token) waits for Claude.
    path = claude_dir / ".credentials.json"
    path.write_text(json.dumps({"claudeAiOauth": {"accessToken": "a" * 20, "refreshToken": "r" * 20,
                                                  "expiresAt": 1}}))
    before = path.read_bytes()
    main, legacy = claudelock.lock_paths(claude_dir)
    seen: list[bool] = []
    with ForeignHolder(main):
        with pytest.raises(ClaudeRefreshing):
            credentials.replace_oauth(path, {"accessToken": "b" * 20, "refreshToken": "s" * 20, "expiresAt": 2},
                                      lock_wait=0.5)
    assert path.read_bytes() == before
    credentials.replace_oauth(path, {"accessToken": "b" * 20, "refreshToken": "s" * 20, "expiresAt": 2},
                              keep=lambda previous: seen.append(main.is_dir() and legacy.is_dir()), lock_wait=0.5)
    assert seen == [True]  # held while the replaced login was kept and the file renamed
    assert json.loads(path.read_text())["claudeAiOauth"]["expiresAt"] == 2


# --- the whole sync, real OpenBao and the real claude CLI --------------------------------------------


@pytest.fixture
def rejected_with_backup(user: SyncUser) -> Iterator[tuple[SyncUser, dict[str, object], bytes]]:
    """A user whose backup holds a good login and whose file holds a rejected one (a restore is due)."""
    good = new_oauth("good")
    user.login(good)
    assert user.sync().status.value == "OK"
    raw = user.login(new_oauth("rejected"), accepted=False)
    user.extra_env["CLAUDE_AUTH_REFRESH_LOCK_WAIT"] = "2"
    yield user, good, raw


def test_restore_waits_for_a_held_refresh_lock_then_skips_writing_nothing(
        rejected_with_backup: tuple[SyncUser, dict[str, object], bytes]) -> None:
    user, _, raw = rejected_with_backup
    main = user.home / ".claude" / ".oauth_refresh.lock"
    with ForeignHolder(main):
        started = time.monotonic()
        outcome = user.sync()
        waited = time.monotonic() - started
        assert main.is_dir()

    assert outcome.status.value == "SKIP" and outcome.exit_code == 0
    assert outcome.line.startswith(f"SKIP {user.name}: claude is refreshing the login "
                                   "(~/.claude/.oauth_refresh.lock held for more than 2 s); "
                                   "the API rejected the login (HTTP 401)")
    assert outcome.line.endswith("nothing restored, nothing written")
    assert waited >= 2
    assert user.credentials.read_bytes() == raw
    assert user.kept_copies() == []
    assert current_version(user.root, user.kv_path) == 1
    assert not (user.home / ".claude.lock").exists()


def test_restore_takes_over_a_stale_refresh_lock(
        rejected_with_backup: tuple[SyncUser, dict[str, object], bytes]) -> None:
    user, good, _ = rejected_with_backup
    main = user.home / ".claude" / ".oauth_refresh.lock"
    main.mkdir()
    old = time.time() - claudelock.STALE_SECONDS - 1
    os.utime(main, (old, old))

    outcome = user.sync()

    assert outcome.status.value == "RECOVERED", outcome.line
    assert json.loads(user.credentials.read_text())["claudeAiOauth"] == good
    assert not main.exists() and not (user.home / ".claude.lock").exists()


def test_restore_skips_when_claude_changed_the_login_before_the_lock_was_free(
        rejected_with_backup: tuple[SyncUser, dict[str, object], bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    user, _, _ = rejected_with_backup
    refreshed = new_oauth("refreshed")
    real_latest = flow.backup.latest_backup

    def latest_then_claude_refreshes(*args: object, **kwargs: object) -> object:
        found = real_latest(*args, **kwargs)  # type: ignore[arg-type]
        user.login(refreshed)  # Claude's refresh lands between the check and the restore
        return found

    monkeypatch.setattr(flow.backup, "latest_backup", latest_then_claude_refreshes)
    outcome = user.sync()

    assert outcome.status.value == "SKIP", outcome.line
    assert "changed since it was checked" in outcome.line and "nothing restored" in outcome.line
    assert json.loads(user.credentials.read_text())["claudeAiOauth"] == refreshed
    assert user.kept_copies() == []


def test_ctrl_c_during_the_restore_releases_claudes_lock(
        rejected_with_backup: tuple[SyncUser, dict[str, object], bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    user, _, raw = rejected_with_backup

    def interrupted(*args: object, **kwargs: object) -> Path:
        assert (user.home / ".claude" / ".oauth_refresh.lock").is_dir()
        raise KeyboardInterrupt

    monkeypatch.setattr(credentials, "_write_temp", interrupted)
    outcome = user.sync()

    assert outcome.line == f"FAIL {user.name}: interrupted"
    assert not (user.home / ".claude" / ".oauth_refresh.lock").exists()
    assert not (user.home / ".claude.lock").exists()
    assert json.loads(user.credentials.read_bytes())["claudeAiOauth"] == json.loads(raw)["claudeAiOauth"]


def test_backup_read_waits_for_a_held_refresh_lock_then_skips(user: SyncUser) -> None:
    first = new_oauth("first")
    user.login(first)
    assert user.sync().status.value == "OK"
    user.login(new_oauth("rotated"))  # claude rotated the login: a backup is due
    user.extra_env["CLAUDE_AUTH_REFRESH_LOCK_WAIT"] = "1.5"

    with ForeignHolder(user.home / ".claude.lock"):  # the legacy lock alone is enough
        outcome = user.sync()

    assert outcome.status.value == "SKIP", outcome.line
    assert outcome.line == (f"SKIP {user.name}: claude is refreshing the login (~/.claude.lock held for more "
                            "than 1.5 s); the login works; nothing backed up")
    assert user.stored_oauth() == first
    assert current_version(user.root, user.kv_path) == 1
    assert user.sync().status.value == "OK"  # and once Claude is done, the next run backs up
    assert current_version(user.root, user.kv_path) == 2
    assert KV_MOUNT in (user.outputs[-1])


def test_a_refresh_starting_right_after_a_restore_keeps_recovered_and_skips_only_the_backup(
        rejected_with_backup: tuple[SyncUser, dict[str, object], bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    user, good, _ = rejected_with_backup
    holder = ForeignHolder(user.home / ".claude" / ".oauth_refresh.lock")
    checks: list[object] = []
    real_check = flow._Steps.live_check

    def check_then_claude_refreshes(self: flow._Steps, env: object) -> object:
        result = real_check(self, env)  # type: ignore[arg-type]
        checks.append(result)
        if len(checks) == 2:
            holder.__enter__()  # a claude session starts a refresh just after the check of the restore
        return result

    monkeypatch.setattr(flow._Steps, "live_check", check_then_claude_refreshes)
    try:
        outcome = user.sync()
    finally:
        holder.release()

    assert outcome.status.value == "RECOVERED", outcome.line
    assert "restored the backup" in outcome.line
    assert outcome.line.endswith("claude is refreshing the login (~/.claude/.oauth_refresh.lock held for more "
                                 "than 2 s); the login works; nothing backed up")
    assert json.loads(user.credentials.read_text())["claudeAiOauth"] == good
