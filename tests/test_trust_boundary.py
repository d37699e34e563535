"""Issue 21: root never trusts a person's home, and one person can only fail their own row.

Against real files owned by the test uids, a real OpenBao and `main(argv)` in process:

- races forced at the worst instant (a hard link raced into a name between root's open and its
  checks) and a real racer process, as the person, swapping links and folders during many applies;
- a person holding their own mint lock forever: the run waits on such locks for a few seconds in
  all, and each holder gets one WARN line;
- a 401-digit number at a person's own KV path fails only that person's status row;
- two roster people with one home: both refused;
- no mode depends on the umask (admin apply, hourly apply).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import stat
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from reconcile.local import homefs
from reconcile.local import homelock as local_homelock
from reconcile.local.accounts import Account
from reconcile.common.exitcodes import Exit
from reconcile.local.homefs import CONFIG_DIR, TOKEN_FILE, UnsafePath
from reconcile.local.homelock import MINT_LOCK_FILE
from reconcile.sync import setup_token as st
from tests.support.world import World

assert os.geteuid() == 0, "the trust-boundary tests need root (they give files to other uids)"

UID = GID = 5001


def mode_owner(path: Path) -> tuple[int, int, int]:
    st_ = path.lstat()
    return stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid


@pytest.fixture
def account(tmp_path: Path) -> Account:
    home = tmp_path / "home" / "eve"
    home.mkdir(parents=True)
    os.chown(home, UID, GID)
    return Account("eve", UID, GID, home)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A root-owned file the person may hard-link (group hers, rw: allowed by fs.protected_hardlinks=1)."""
    path = tmp_path / "etc" / "victim"
    path.parent.mkdir()
    path.write_bytes(b"root's secret\n")
    os.chown(path, 0, GID)
    path.chmod(0o660)
    return path


def race_after_open(monkeypatch: pytest.MonkeyPatch, leaf: str, on_open: Callable[[], None]) -> list[int]:
    """Run `on_open` right after root's os.open of `leaf` returns: the person's racer at its best."""
    real_open = os.open
    hits: list[int] = []

    def open_then_race(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, flags, *args, **kwargs)
        if path == leaf and not hits:
            hits.append(fd)
            on_open()
        return fd

    monkeypatch.setattr(homefs.os, "open", open_then_race)
    return hits


# --- the hard-link race, forced ------------------------------------------------------------


def test_a_hard_link_raced_into_the_mint_lock_is_never_given_to_the_person(
        account: Account, victim: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """She links a root file into `mint.lock` and unlinks it again just after root opened it: the
    link count root then sees is 1, but the file is root's. Today's main chowned it to her."""
    homefs.ensure_directory(account, CONFIG_DIR)
    lock = account.home / MINT_LOCK_FILE
    os.link(victim, lock)
    hits = race_after_open(monkeypatch, "mint.lock", lock.unlink)
    with pytest.raises(UnsafePath, match="owned by root, not by eve"):
        local_homelock.lock_private_file(account, MINT_LOCK_FILE, timeout=0.1)
    assert hits, "the race was not forced"
    assert mode_owner(victim) == (0o660, 0, GID) and victim.read_bytes() == b"root's secret\n"


@pytest.mark.parametrize("operation", ["fix_owner_mode", "read_private_file", "read_private_tail"])
def test_a_hard_link_raced_into_the_token_file_is_never_changed_or_read(
        account: Account, victim: Path, monkeypatch: pytest.MonkeyPatch, operation: str) -> None:
    homefs.ensure_directory(account, CONFIG_DIR)
    token = account.home / TOKEN_FILE
    os.link(victim, token)
    race_after_open(monkeypatch, "vault-token", token.unlink)
    with pytest.raises(UnsafePath, match="owned by root, not by eve"):
        if operation == "fix_owner_mode":
            homefs.fix_owner_mode(account, TOKEN_FILE, 0o600)
        elif operation == "read_private_file":
            homefs.read_private_file(account, TOKEN_FILE)
        else:
            homefs.read_private_tail(account, TOKEN_FILE)
    assert mode_owner(victim) == (0o660, 0, GID) and victim.read_bytes() == b"root's secret\n"


def test_a_folder_swapped_in_just_after_mkdir_is_not_given_away(
        account: Account, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root makes `~/.config/claude-auth-sync`; before it opens it, she renames a root folder of her home
    (an admin's, with content) into the name. Only an empty folder root just made is given to her."""
    (account.home / ".config").mkdir()
    os.chown(account.home / ".config", UID, GID)
    admins = account.home / ".config" / "admins"
    admins.mkdir(mode=0o755)
    (admins / "note").write_text("root's")
    real_mkdir = os.mkdir

    def mkdir_then_swap(path: Any, mode: int = 0o777, *args: Any, **kwargs: Any) -> None:
        real_mkdir(path, mode, *args, **kwargs)
        if path == "claude-auth-sync":
            target = account.home / ".config" / "claude-auth-sync"
            target.rmdir()
            admins.rename(target)

    monkeypatch.setattr(homefs.os, "mkdir", mkdir_then_swap)
    with pytest.raises(UnsafePath, match="changed while it was being created"):
        homefs.ensure_directory(account, CONFIG_DIR)
    assert mode_owner(account.home / ".config" / "claude-auth-sync") == (0o755, 0, 0)


# --- what a killed run half-made ------------------------------------------------------------


def half_made_folder(path: Path) -> None:
    """What a run killed between its mkdir and its chown leaves (or another host's run over a
    shared home, seen in that instant): an empty root folder of 0700."""
    path.mkdir(mode=0o700)
    os.chown(path, 0, 0)
    path.chmod(0o700)


@pytest.mark.parametrize("killed_after", ["mkdir .config", "mkdir claude-auth-sync", "create mint.lock"])
def test_a_half_made_folder_or_lock_is_adopted(account: Account, killed_after: str) -> None:
    """Each state a run killed between one create and its chown leaves: the next run finishes it."""
    config = account.home / ".config"
    folder = config / "claude-auth-sync"
    lock = account.home / MINT_LOCK_FILE
    half_made_folder(config)
    if killed_after != "mkdir .config":
        os.chown(config, UID, GID)
        half_made_folder(folder)
    if killed_after == "create mint.lock":
        os.chown(folder, UID, GID)
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))  # empty, root's, 0600
    os.close(local_homelock.lock_private_file(account, MINT_LOCK_FILE, timeout=0.1))
    assert mode_owner(config)[1:] == (UID, GID)
    assert mode_owner(folder) == (0o700, UID, GID)
    assert mode_owner(lock) == (0o600, UID, GID)


@pytest.mark.parametrize("shape", ["folder with content", "folder 0755", "lock with content", "lock 0644"])
def test_a_root_object_that_is_not_half_made_is_refused(account: Account, shape: str) -> None:
    """Only an empty root folder of at most 0700, or an empty root file of at most 0600, may be
    given to the person: anything else of root's may be an admin's, or a name for another file."""
    config = account.home / ".config"
    config.mkdir()
    os.chown(config, UID, GID)
    folder = config / "claude-auth-sync"
    half_made_folder(folder)
    lock = account.home / MINT_LOCK_FILE
    if shape == "folder with content":
        (folder / "note").write_text("root's")
    elif shape == "folder 0755":
        folder.chmod(0o755)
    else:
        lock.write_bytes(b"root's" if shape == "lock with content" else b"")
        lock.chmod(0o600 if shape == "lock with content" else 0o644)
        os.chown(folder, UID, GID)
    before = {p.name: mode_owner(p) for p in [folder, *folder.iterdir()]}
    with pytest.raises(UnsafePath, match="owned by root, not by eve"):
        if shape.startswith("folder"):
            homefs.ensure_directory(account, CONFIG_DIR)
        else:
            os.close(local_homelock.lock_private_file(account, MINT_LOCK_FILE, timeout=0.1))
    assert {p.name: mode_owner(p) for p in [folder, *folder.iterdir()]} == before


def test_a_folder_another_hosts_run_adopted_meanwhile_is_used(
        account: Account, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two hosts over one shared home: this run makes `~/.config`; the other host's run finds it
    half-made, gives it to the person and makes its own folder in it, all between this run's
    fstat and its emptiness check. The folder is the person's now: used, not refused."""
    config = account.home / ".config"
    real_listdir = os.listdir
    interleaved: list[bool] = []

    def other_host_first(fd: Any) -> list[str]:
        if not interleaved and isinstance(fd, int) and os.path.samestat(os.fstat(fd), config.stat()):
            interleaved.append(True)
            os.chown(config, UID, GID)
            config.chmod(0o755)
            (config / "claude-auth-sync").mkdir(mode=0o700)
            os.chown(config / "claude-auth-sync", UID, GID)
        return real_listdir(fd)

    monkeypatch.setattr(homefs.os, "listdir", other_host_first)
    homefs.ensure_directory(account, CONFIG_DIR)
    assert interleaved, "the interleaving was not forced"
    assert mode_owner(config)[1:] == (UID, GID)
    assert mode_owner(config / "claude-auth-sync") == (0o700, UID, GID)


def test_an_apply_killed_between_mkdir_and_chown_converges(world: World) -> None:
    """The next run finishes what the killed one left: root's empty folders and an empty lock."""
    world.write_roster({"alice": {}})
    home = world.root / "home" / "alice"
    (home / ".config" / "claude-auth-sync").mkdir(parents=True)
    for path in (home / ".config", home / ".config" / "claude-auth-sync"):
        os.chown(path, world.uids["alice"], world.uids["alice"])
    os.close(os.open(home / MINT_LOCK_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    half_made_folder(home / ".local")
    run = world.run("apply")
    assert run.code == Exit.OK, run.err
    for path in (home / ".config", home / ".config" / "claude-auth-sync", home / MINT_LOCK_FILE, home / ".local"):
        assert mode_owner(path)[1:] == (world.uids["alice"], world.uids["alice"]), path
    world.assert_converged()


# --- a real racer during many applies ------------------------------------------------------


def _racer(home_fd: int, victim_dir_fd: int, victim_dir: str, uid: int, swap_folders: bool) -> None:
    """As the person, forever: a root file linked into the lock and token names and unlinked again
    (or, `swap_folders`, the config folder swapped for a symbolic link to a root folder and back)."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    config = os.open(".config", os.O_RDONLY | os.O_DIRECTORY, dir_fd=home_fd)
    folder = os.open("claude-auth-sync", os.O_RDONLY | os.O_DIRECTORY, dir_fd=config)
    names = ("mint.lock", "mint.lock", "mint.lock", "vault-token")
    while True:
        if swap_folders:
            try:
                os.rename("claude-auth-sync", "real", src_dir_fd=config, dst_dir_fd=config)
                os.symlink(victim_dir, "claude-auth-sync", dir_fd=config)
                os.unlink("claude-auth-sync", dir_fd=config)
                os.rename("real", "claude-auth-sync", src_dir_fd=config, dst_dir_fd=config)
            except OSError:
                pass
            continue
        for name in names:
            try:
                os.unlink(name, dir_fd=folder)
            except OSError:
                pass
            try:
                os.link("victim", name, src_dir_fd=victim_dir_fd, dst_dir_fd=folder)
                os.unlink(name, dir_fd=folder)
            except OSError:
                pass


@pytest.fixture
def racer(world: World, tmp_path: Path) -> Iterator[Callable[[str, bool], None]]:
    victim_dir = tmp_path / "victims"
    victim_dir.mkdir(mode=0o755)
    (victim_dir / "victim").write_bytes(b"root's secret\n")
    pids: list[int] = []

    def start(user: str, swap_folders: bool) -> None:
        uid = world.uids[user]
        home_fd = os.open(world.root / "home" / user, os.O_RDONLY | os.O_DIRECTORY)
        dir_fd = os.open(victim_dir, os.O_RDONLY | os.O_DIRECTORY)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                _racer(home_fd, dir_fd, str(victim_dir), uid, swap_folders)
            finally:
                os._exit(0)
        os.close(home_fd)
        os.close(dir_fd)
        pids.append(pid)

    yield start
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


RACERS = ["eve", "fay", "gia", "ida"]


def test_racers_swapping_links_and_folders_never_win_over_many_applies(
        world: World, racer: Callable[[str, bool], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four people race a root file (root:<their group> 0660, which fs.protected_hardlinks=1 lets them
    link) into their lock and token names, a fifth swaps her folder for a link to a root folder, during
    60 applies, admin and hourly in turn. Today's main handed the root file over within them (at the
    homefs level, 37 of 2,000 lock attempts against one such racer)."""
    world.write_roster({"alice": {}, "mia": {}, **{user: {} for user in RACERS}})
    assert world.run("apply").code == Exit.OK
    victim_dir = tmp_path / "victims"
    victim = victim_dir / "victim"
    for user in RACERS:
        racer(user, False)
    racer("mia", True)
    codes = []
    for index in range(60):
        # The group of the file each racer may link: a different racer each time, the file itself root's.
        os.chown(victim, 0, world.uids[RACERS[index % len(RACERS)]])
        victim.chmod(0o660)
        before = {p.name: (mode_owner(p), p.read_bytes()) for p in victim_dir.iterdir()}
        if index % 2:
            monkeypatch.setenv("CLAUDE_AUTH_NO_ADMIN", "1")  # the hourly run
        else:
            monkeypatch.delenv("CLAUDE_AUTH_NO_ADMIN", raising=False)
        run = world.run("apply")
        codes.append(run.code)
        assert "Traceback" not in run.err and "ERROR alice" not in run.err, run.err
        assert {p.name: (mode_owner(p), p.read_bytes()) for p in victim_dir.iterdir()} == before, \
            f"apply {index} changed a root file through a link a racer planted"
    assert set(codes) <= {Exit.OK, Exit.ERROR}
    assert world.lookup(world.token("alice") or "") is not None


# --- a person holding their own lock --------------------------------------------------------


HOLDERS = [f"p{index:02d}" for index in range(20)]


def hold_locks(world: World, users: list[str]) -> list[int]:
    fds = []
    for user in users:
        fd = os.open(world.root / "home" / user / MINT_LOCK_FILE, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the person may, on their own file, forever
        fds.append(fd)
    return fds


@pytest.mark.parametrize("hourly", [True, False], ids=["hourly", "admin"])
def test_twenty_people_holding_their_locks_forever_delay_nobody(
        world: World, monkeypatch: pytest.MonkeyPatch, hourly: bool) -> None:
    world.write_roster({"alice": {}, **{user: {} for user in HOLDERS}})
    assert world.run("apply").code == Exit.OK
    fds = hold_locks(world, HOLDERS)
    try:
        for user in HOLDERS[:5]:  # their tokens are dead: the admin run would re-mint them
            world.token_path(user).write_text("hvs.dead\n")
        os.unlink(world.token_path("alice"))  # alice needs a mint too, and nobody may delay it
        if hourly:
            monkeypatch.setenv("CLAUDE_AUTH_NO_ADMIN", "1")
        started = time.monotonic()
        run = world.run("apply")
        elapsed = time.monotonic() - started
    finally:
        for fd in fds:
            os.close(fd)
    # Today's main waited 20 s per holder in turn (400 s here); the run's allowance is 3 s in all.
    assert elapsed < 15, f"the run took {elapsed:.1f} s with 20 people holding their locks"
    warn = [line for line in run.err.splitlines() if line.startswith("WARN p")]
    for user in HOLDERS:
        mine = [line for line in warn if line.startswith(f"WARN {user}: ")]
        assert len(mine) == 1, (user, run.err)
        assert "mint.lock is held by another process" in mine[0] and f"{user}'s row is skipped" in mine[0]
    assert "ERROR" not in run.err, run.err
    if hourly:
        assert run.code == Exit.OK, run.err
    else:
        assert run.code == Exit.OK, run.err
        assert world.lookup(world.token("alice") or "") is not None
    # Once they let go, the next run converges for everyone.
    monkeypatch.delenv("CLAUDE_AUTH_NO_ADMIN", raising=False)
    assert world.run("apply").code == Exit.OK
    world.assert_converged()


# --- numbers from a person's own data --------------------------------------------------------


def test_a_huge_number_at_a_persons_own_path_fails_only_her_row(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = tmp_path / "metrics.prom"
    world.write_roster({"alice": {"claude_login": "setup-token"}, "eve": {"claude_login": "setup-token"}})
    world.roster_path.write_text(world.roster_path.read_text() + f"status:\n  prometheus_textfile: {metrics}\n")
    assert world.run("apply").code == Exit.OK
    for user, expires in (("alice", 1_900_000_000_000), ("eve", "9" * 401)):
        token = f"sk-ant-oat01-{'t' * 40}{user}"
        world.secrets_seen.add(token)
        fields: dict[str, Any] = st.store_fields(token, "2026-11-29T00:00:00Z", 0)
        fields[st.FIELD_EXPIRES_AT_MS] = expires
        world.client.secrets.kv.v2.create_or_update_secret(path=f"{world.path_prefix}/{user}",
                                                           mount_point="secret", secret=fields)
    for admin in (True, False):
        if admin:
            monkeypatch.delenv("CLAUDE_AUTH_NO_ADMIN", raising=False)
        else:
            monkeypatch.setenv("CLAUDE_AUTH_NO_ADMIN", "1")
        status = world.run("status", "--json")
        assert status.code == Exit.OK, status.err
        rows = {row["user"]: row for row in json.loads(status.out)["users"]}
        assert rows["alice"]["setup_token_expires_at"] is not None
        assert rows["eve"]["setup_token_expires_at"] is None
        assert any("claude_setup_token_expires_at_ms" in note and "out of range" in note
                   for note in rows["eve"]["notes"]), rows["eve"]["notes"]
        metrics.unlink(missing_ok=True)
        applied = world.run("apply")
        assert applied.code == Exit.OK, applied.err
        assert 'claude_auth_setup_token_expiry_timestamp_seconds{user="alice"}' in metrics.read_text()
        assert "9" * 30 not in status.out + applied.out + applied.err


# --- two accounts, one home ------------------------------------------------------------------


def test_two_roster_people_with_one_home_are_both_refused(world: World) -> None:
    world.write_roster({"alice": {}, "bob": {}, "carol": {}})
    passwd = world.root / "etc" / "passwd"
    passwd.write_text(passwd.read_text().replace(":/home/bob:", ":/home/alice:"))
    run = world.run("apply")
    assert run.code == Exit.ERROR
    for user, other in (("alice", "bob"), ("bob", "alice")):
        lines = [line for line in run.err.splitlines() if line.startswith(f"ERROR {user}:")]
        assert len(lines) == 1 and f"is also the home of {other}" in lines[0], run.err
    assert not (world.root / "home" / "alice" / ".config").exists()
    assert world.token("carol") is not None
    assert world.token("alice") is None


def test_one_home_through_two_paths_is_one_home(world: World) -> None:
    world.write_roster({"alice": {}, "bob": {}})
    (world.root / "home" / "bob").rmdir()
    (world.root / "home" / "bob").symlink_to(world.root / "home" / "alice")
    run = world.run("plan")
    assert run.code == Exit.ERROR
    assert sum("is also the home of" in line for line in run.err.splitlines()) == 2, run.err


# --- the admin token and child processes ----------------------------------------------------


def test_systemctl_gets_no_vault_variable(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin run holds VAULT_TOKEN; the systemctl it runs (a long-lived one could be read by
    anything of root's) gets no Vault or OpenBao variable."""
    from reconcile.local import systemd

    records = tmp_path / "systemctl-env"
    records.mkdir()
    wrapper = tmp_path / "systemctl"
    wrapper.write_text(f'#!/bin/sh\nenv > "$(mktemp {records}/env.XXXXXX)"\nexec {shutil.which("systemctl")} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(systemd, "SYSTEMCTL", str(wrapper))
    monkeypatch.setenv("BAO_TOKEN", os.environ["VAULT_TOKEN"])
    world.write_roster({"alice": {}})
    assert world.run("apply").code == Exit.OK
    seen = [path.read_text() for path in records.iterdir()]
    assert seen, "systemctl was not run"
    for text in seen:
        assert "VAULT_" not in text and "BAO_" not in text and os.environ["VAULT_TOKEN"] not in text


# --- the umask -------------------------------------------------------------------------------


def modes_below(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): stat.S_IMODE(p.lstat().st_mode) for p in [path, *path.rglob("*")]
            if not p.is_symlink()}


@pytest.mark.parametrize("hourly", [False, True], ids=["admin", "hourly"])
def test_no_mode_depends_on_the_umask(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      hourly: bool) -> None:
    metrics = tmp_path / "node" / "textfile" / "claude-auth.prom"  # folders that do not exist yet
    world.write_roster({"alice": {}, "bob": {}})
    world.roster_path.write_text(world.roster_path.read_text() + f"status:\n  prometheus_textfile: {metrics}\n")
    if hourly:  # the tokens minted; then what the hourly run must make again itself, under umask 0
        assert world.run("apply").code == Exit.OK
        for user in ("alice", "bob"):
            shutil.rmtree(world.root / "home" / user / ".local")
        shutil.rmtree(metrics.parent.parent)
        monkeypatch.setenv("CLAUDE_AUTH_NO_ADMIN", "1")
    old = os.umask(0)
    try:
        run = world.run("apply")
    finally:
        os.umask(old)
    assert run.code == Exit.OK, run.err
    for folder in (metrics.parent, metrics.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
    assert stat.S_IMODE(metrics.stat().st_mode) == 0o644
    for user in ("alice", "bob"):
        home = world.root / "home" / user
        for rel, mode in modes_below(home / ".local").items():
            assert mode == 0o700, (user, rel, oct(mode))
        assert stat.S_IMODE((home / TOKEN_FILE).stat().st_mode) == 0o600
    for rel, mode in modes_below(world.root / "var").items():
        assert mode & 0o022 == 0, (rel, oct(mode))
    for rel, mode in modes_below(world.root / "etc" / "systemd").items():
        assert mode & 0o022 == 0, (rel, oct(mode))
