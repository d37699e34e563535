"""reconcile.local.homefs: root acting below a user's home folder never follows what the user planted.

Real files, real owners: the tests run as root and give the homes to numeric
uids (5001...) that exist only in these tests.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from reconcile.local import homefs
from reconcile.local.accounts import Account
from reconcile.local.homefs import CONFIG_DIR, STATE_DIR, TOKEN_FILE, EntryState, HomeFsError, UnsafePath

# These tests give files to other uids, which needs root; CI runs as root. Not skipped
# elsewhere: a run that cannot prove the link-safety must fail, not pass quietly.
assert os.geteuid() == 0, "tests/test_homefs.py needs root (it gives files to other uids)"

UID = GID = 5001


@pytest.fixture
def account(tmp_path: Path) -> Account:
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    os.chown(home, UID, GID)
    home.chmod(0o700)
    return Account("alice", UID, GID, home)


@pytest.fixture
def victim_dir(tmp_path: Path) -> Path:
    """A root-owned folder outside the home, with a root-owned file in it."""
    folder = tmp_path / "etc" / "victim"
    folder.mkdir(parents=True)
    folder.chmod(0o755)
    (folder / "config").write_bytes(b"root's own config\n")
    (folder / "config").chmod(0o644)
    return folder


@pytest.fixture
def victim_file(tmp_path: Path) -> Path:
    """A root-owned file outside the home (same file system, so it can be hard-linked)."""
    path = tmp_path / "etc" / "shadow"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"root:$6$secret:19000::::::\n")
    path.chmod(0o640)
    return path


def snapshot(path: Path) -> dict[str, tuple[int, int, int, bytes | None]]:
    """Every entry below (and including) path: (mode, uid, gid, content of files)."""
    result = {}
    paths = [path]
    if path.is_dir() and not path.is_symlink():
        paths += sorted(path.rglob("*"))
    for entry in paths:
        st = entry.lstat()
        content = entry.read_bytes() if stat.S_ISREG(st.st_mode) else None
        result[str(entry)] = (st.st_mode, st.st_uid, st.st_gid, content)
    return result


def mode_owner(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


# --- primitives -----------------------------------------------------------


def test_ensure_directory_creates_intermediates_owned_by_the_user(account: Account) -> None:
    homefs.ensure_directory(account, CONFIG_DIR)
    homefs.ensure_directory(account, STATE_DIR)
    home = account.home
    for folder in (".config", ".config/claude-auth-sync", ".local", ".local/state", ".local/state/claude-auth-sync"):
        assert mode_owner(home / folder) == (0o700, UID, GID), folder


def test_ensure_directory_keeps_the_mode_of_existing_intermediates(account: Account) -> None:
    config = account.home / ".config"
    config.mkdir()
    config.chmod(0o755)
    os.chown(config, UID, GID)
    homefs.ensure_directory(account, CONFIG_DIR)
    assert mode_owner(config) == (0o755, UID, GID)
    assert mode_owner(config / "claude-auth-sync") == (0o700, UID, GID)


def test_ensure_directory_fixes_mode_and_group_of_the_persons_final_folder(account: Account) -> None:
    folder = account.home / ".config" / "claude-auth-sync"
    folder.mkdir(parents=True)
    folder.chmod(0o755)
    os.chown(folder, UID, 0)  # the person's, of root's group, 0755
    homefs.ensure_directory(account, CONFIG_DIR)
    assert mode_owner(folder) == (0o700, UID, GID)


def test_ensure_directory_never_gives_away_a_folder_root_did_not_just_create(account: Account) -> None:
    folder = account.home / ".config" / "claude-auth-sync"
    folder.mkdir(parents=True)
    folder.chmod(0o755)  # root's (an admin's `sudo mkdir`), 0755
    with pytest.raises(UnsafePath, match=r"~/\.config/claude-auth-sync is owned by root, not by alice"):
        homefs.ensure_directory(account, CONFIG_DIR)
    assert mode_owner(folder) == (0o755, 0, 0)


def test_ensure_directory_refuses_a_file_in_the_way(account: Account) -> None:
    (account.home / ".config").write_text("not a folder")
    with pytest.raises(UnsafePath, match=r"~/\.config is a regular file, not a folder"):
        homefs.ensure_directory(account, CONFIG_DIR)


def test_write_private_file_is_atomic_private_and_owned_by_the_user(account: Account) -> None:
    homefs.write_private_file(account, TOKEN_FILE, b"first\n")
    homefs.write_private_file(account, TOKEN_FILE, b"second\n")
    path = account.home / TOKEN_FILE
    assert path.read_bytes() == b"second\n"
    assert mode_owner(path) == (0o600, UID, GID)
    assert mode_owner(path.parent) == (0o700, UID, GID)
    assert sorted(os.listdir(path.parent)) == ["vault-token"]  # no temporary file left


def test_read_private_file(account: Account) -> None:
    assert homefs.read_private_file(account, TOKEN_FILE) is None  # parents missing
    homefs.ensure_directory(account, CONFIG_DIR)
    assert homefs.read_private_file(account, TOKEN_FILE) is None  # file missing
    homefs.write_private_file(account, TOKEN_FILE, b"hvs.token\n")
    assert homefs.read_private_file(account, TOKEN_FILE) == b"hvs.token\n"


def test_read_private_file_refuses_special_and_large_files(account: Account) -> None:
    homefs.ensure_directory(account, CONFIG_DIR)
    token = account.home / TOKEN_FILE
    os.mkfifo(token)
    with pytest.raises(UnsafePath, match="not a regular file"):
        homefs.read_private_file(account, TOKEN_FILE)  # and does not hang on the FIFO
    token.unlink()
    token.write_bytes(b"x" * 100)
    with pytest.raises(UnsafePath, match="owned by root, not by alice"):
        homefs.read_private_file(account, TOKEN_FILE)  # root's file in her folder: never read
    os.chown(token, UID, GID)
    with pytest.raises(UnsafePath, match="larger than 10 bytes"):
        homefs.read_private_file(account, TOKEN_FILE, max_bytes=10)
    assert homefs.read_private_file(account, TOKEN_FILE, max_bytes=100) == b"x" * 100


def test_inspect(account: Account, victim_dir: Path) -> None:
    assert homefs.inspect(account, CONFIG_DIR) == homefs.MISSING
    homefs.ensure_directory(account, CONFIG_DIR)
    assert homefs.inspect(account, CONFIG_DIR) == EntryState("directory", 0o700, UID, GID, 2)
    assert homefs.inspect(account, TOKEN_FILE).kind == "missing"
    homefs.write_private_file(account, TOKEN_FILE, b"t")
    assert homefs.inspect(account, TOKEN_FILE) == EntryState("file", 0o600, UID, GID, 1, size=1)
    os.symlink(victim_dir, account.home / STATE_DIR.split("/")[0])  # ~/.local -> victim
    assert homefs.inspect(account, ".local").kind == "symlink"  # the final component: reported
    with pytest.raises(UnsafePath, match=r"~/\.local is a symbolic link; refusing to follow it"):
        homefs.inspect(account, STATE_DIR)  # a parent: refused


def test_fix_owner_mode(account: Account) -> None:
    homefs.write_private_file(account, TOKEN_FILE, b"t")
    token = account.home / TOKEN_FILE
    os.chown(token, UID, 0)
    token.chmod(0o644)
    homefs.fix_owner_mode(account, TOKEN_FILE, 0o600)
    assert mode_owner(token) == (0o600, UID, GID)
    os.chown(token, 0, 0)
    token.chmod(0o644)
    with pytest.raises(UnsafePath, match="owned by root, not by alice; refusing to change it"):
        homefs.fix_owner_mode(account, TOKEN_FILE, 0o600)
    assert mode_owner(token) == (0o644, 0, 0)
    with pytest.raises(HomeFsError, match="does not exist"):
        homefs.fix_owner_mode(account, ".config/claude-auth-sync/other", 0o600)


def test_a_missing_home_is_a_clear_error(tmp_path: Path) -> None:
    ghost = Account("ghost", 5009, 5009, tmp_path / "home" / "ghost")
    with pytest.raises(HomeFsError, match=r"home folder .*/home/ghost does not exist"):
        homefs.ensure_directory(ghost, CONFIG_DIR)


@pytest.mark.parametrize("bad", ["/etc/passwd", "../x", ".config/../../x", "", ".config//x", "./x"])
def test_only_plain_relative_paths(account: Account, bad: str) -> None:
    with pytest.raises(ValueError):
        homefs.inspect(account, bad)


# --- attacks --------------------------------------------------------------
# Each: the user plants a link; every root operation that could reach the
# victim refuses (or replaces the link itself) and the victim stays
# byte-identical in content, owner and mode.


def test_attack_config_folder_symlink_to_root_folder(account: Account, victim_dir: Path) -> None:
    (account.home / ".config").mkdir()
    os.symlink(victim_dir, account.home / CONFIG_DIR)
    before = snapshot(victim_dir)
    with pytest.raises(UnsafePath, match=r"~/\.config/claude-auth-sync is a symbolic link; refusing to follow it"):
        homefs.ensure_directory(account, CONFIG_DIR)
    with pytest.raises(UnsafePath, match="symbolic link"):
        homefs.fix_owner_mode(account, CONFIG_DIR, 0o700)
    with pytest.raises(UnsafePath, match="symbolic link"):
        homefs.write_private_file(account, TOKEN_FILE, b"token")
    with pytest.raises(UnsafePath, match="symbolic link"):
        homefs.read_private_file(account, ".config/claude-auth-sync/config")
    assert snapshot(victim_dir) == before


def test_attack_dot_config_symlink(account: Account, victim_dir: Path) -> None:
    os.symlink(victim_dir, account.home / ".config")
    before = snapshot(victim_dir)
    with pytest.raises(UnsafePath, match=r"~/\.config is a symbolic link; refusing to follow it"):
        homefs.ensure_directory(account, CONFIG_DIR)
    with pytest.raises(UnsafePath, match=r"~/\.config is a symbolic link"):
        homefs.write_private_file(account, TOKEN_FILE, b"token")
    with pytest.raises(UnsafePath, match=r"~/\.config is a symbolic link"):
        homefs.read_private_file(account, ".config/config")
    assert snapshot(victim_dir) == before


def test_attack_dot_local_symlink(account: Account, victim_dir: Path) -> None:
    os.symlink(victim_dir, account.home / ".local")
    before = snapshot(victim_dir)
    with pytest.raises(UnsafePath, match=r"~/\.local is a symbolic link; refusing to follow it"):
        homefs.ensure_directory(account, STATE_DIR)
    assert snapshot(victim_dir) == before


def test_attack_state_folder_symlink(account: Account, victim_dir: Path) -> None:
    (account.home / ".local" / "state").mkdir(parents=True)
    os.symlink(victim_dir, account.home / STATE_DIR)
    before = snapshot(victim_dir)
    with pytest.raises(UnsafePath, match=r"~/\.local/state/claude-auth-sync is a symbolic link"):
        homefs.ensure_directory(account, STATE_DIR)
    with pytest.raises(UnsafePath, match="symbolic link"):
        homefs.fix_owner_mode(account, STATE_DIR, 0o700)
    assert snapshot(victim_dir) == before


def test_attack_token_file_symlink_to_root_file(account: Account, victim_file: Path) -> None:
    homefs.ensure_directory(account, CONFIG_DIR)
    token = account.home / TOKEN_FILE
    os.symlink(victim_file, token)
    before = snapshot(victim_file)
    with pytest.raises(UnsafePath, match=r"~/\.config/claude-auth-sync/vault-token is a symbolic link"):
        homefs.read_private_file(account, TOKEN_FILE)
    with pytest.raises(UnsafePath, match="symbolic link"):
        homefs.fix_owner_mode(account, TOKEN_FILE, 0o600)
    assert homefs.inspect(account, TOKEN_FILE).kind == "symlink"
    # Writing replaces the link itself; the file it pointed to is untouched.
    homefs.write_private_file(account, TOKEN_FILE, b"new token")
    assert not token.is_symlink() and token.read_bytes() == b"new token"
    assert mode_owner(token) == (0o600, UID, GID)
    assert snapshot(victim_file) == before


def test_attack_token_file_hard_link_to_root_file(account: Account, victim_file: Path) -> None:
    homefs.ensure_directory(account, CONFIG_DIR)
    token = account.home / TOKEN_FILE
    os.link(victim_file, token)
    before = snapshot(victim_file)
    assert homefs.inspect(account, TOKEN_FILE).nlink == 2
    with pytest.raises(UnsafePath, match=r"vault-token has 2 hard links .*refusing to change it"):
        homefs.fix_owner_mode(account, TOKEN_FILE, 0o600)
    with pytest.raises(UnsafePath, match="has 2 hard links"):
        homefs.read_private_file(account, TOKEN_FILE)
    # Writing renames a fresh file over the link; the linked file keeps content, owner, mode.
    homefs.write_private_file(account, TOKEN_FILE, b"new token")
    assert token.read_bytes() == b"new token" and token.stat().st_ino != victim_file.stat().st_ino
    assert mode_owner(token) == (0o600, UID, GID)
    assert snapshot(victim_file) == before


def test_attack_fifo_and_folder_in_place_of_the_token(account: Account) -> None:
    homefs.ensure_directory(account, CONFIG_DIR)
    token = account.home / TOKEN_FILE
    token.mkdir()
    with pytest.raises(UnsafePath, match="is a folder"):
        homefs.write_private_file(account, TOKEN_FILE, b"t")
    token.rmdir()
    os.mkfifo(token)
    with pytest.raises(UnsafePath, match="special file"):
        homefs.fix_owner_mode(account, TOKEN_FILE, 0o600)
