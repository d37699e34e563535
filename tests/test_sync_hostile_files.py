"""`claude-auth sync` when the person's own files are not what they should be.

A FIFO, a link to /dev/zero, a 200 MB file: each of the files a sync opens
(`.credentials.json`, the Vault token file, the state folder's `lock` and
`sync.log`) is opened without blocking, checked to be a regular file and
capped in size. Each case must end in exactly one
`FAIL <user>: <file>: <why>` line, with no restore, nothing changed, the
sync lock released, and a peak memory (of the whole `python -m reconcile
sync` process, measured by a small parent with wait4's ru_maxrss) of at
most 40 MiB: all of these fail before claude would start.

Real OpenBao and the real claude CLI, through the users of test_sync_real.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Callable

import pytest

from bench.sync_bench import measure
from tests.test_sync_real import (REPO, SyncUser, claude_on_path, current_version, new_oauth,  # noqa: F401
                                  user)

PEAK_LIMIT_MIB = 40.0
CREDENTIALS = "~/.claude/.credentials.json"
TOKEN_FILE = "~/.config/claude-auth-sync/vault-token"


def run_measured(user: SyncUser) -> tuple[int, str, float]:
    """(exit status, output, peak RSS MiB) of one `python -m reconcile sync` run."""
    env = dict(user.environment())
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    [result] = measure([sys.executable, "-m", "reconcile", "sync", "--user", user.name], env, 1)
    user.outputs.append(result["output"])
    return int(result["exit"]), str(result["output"]), float(result["peak_rss_mib"])


def fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path, 0o600)


def dev_zero(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to("/dev/zero")


def nul_200mb(path: Path) -> None:
    with open(path, "wb") as handle:  # sparse: 200 MB of NUL bytes for a reader, no disk used
        handle.truncate(200 * 1024 * 1024)


def padded_json_200mb(path: Path) -> None:
    text = path.read_bytes()
    with open(path, "ab") as handle:
        block = b" " * (1024 * 1024)
        for _ in range(200):
            handle.write(block)
    assert json.loads(path.read_bytes()) == json.loads(text)  # still valid JSON, and the same login


CREDENTIAL_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "fifo": (fifo, "is a FIFO, not a regular file; refusing to use it"),
    "symlink to /dev/zero": (dev_zero, "is a character device, not a regular file; refusing to use it"),
    "200 MB of NUL bytes": (nul_200mb, "is 200.0 MiB, larger than the 1 MiB cap; refusing to read it"),
    "valid JSON padded to 200 MB": (padded_json_200mb, "is 200.0 MiB, larger than the 1 MiB cap; refusing to read it"),
}


def assert_lock_released(user: SyncUser) -> None:
    fd = os.open(user.state_dir / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if a sync still held it
    finally:
        os.close(fd)


@pytest.mark.parametrize("case", list(CREDENTIAL_CASES))
def test_hostile_credentials_file_is_one_fail_line_without_restore_in_bounded_memory(
        user: SyncUser, case: str) -> None:
    good = new_oauth("good")
    user.login(good)
    assert user.sync().status.value == "OK"  # a good backup exists: a restore would be possible
    version = current_version(user.root, user.kv_path)
    make, why = CREDENTIAL_CASES[case]
    make(user.credentials)
    before = os.lstat(user.credentials)

    code, output, peak = run_measured(user)

    assert code == 1
    assert output == f"FAIL {user.name}: {CREDENTIALS}: {why} (before the check); left untouched, nothing restored\n"
    assert peak <= PEAK_LIMIT_MIB, f"peak RSS {peak:.1f} MiB"
    after = os.lstat(user.credentials)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert user.kept_copies() == []
    assert current_version(user.root, user.kv_path) == version
    assert user.log.read_text().splitlines()[-1].endswith(output.strip())
    assert_lock_released(user)
    print(f"{case}: peak RSS {peak:.1f} MiB")


def test_credentials_linked_to_a_regular_file_are_followed(user: SyncUser) -> None:
    # A dotfile manager may keep the file elsewhere: a link to a regular file is the person's choice.
    oauth = new_oauth()
    user.login(oauth)
    kept_elsewhere = user.home / "dotfiles" / "claude-credentials.json"
    kept_elsewhere.parent.mkdir()
    user.credentials.rename(kept_elsewhere)
    user.credentials.symlink_to(kept_elsewhere)

    outcome = user.sync()

    assert outcome.status.value == "OK", outcome.line
    assert user.stored_oauth() == oauth
    assert user.credentials.is_symlink()


@pytest.mark.parametrize("make,why", [
    (fifo, "is a FIFO, not a regular file; refusing to use it"),
    (dev_zero, "is a symbolic link; refusing to follow it"),
    (nul_200mb, "is 200.0 MiB, larger than the 64 KiB cap; refusing to read it"),
], ids=["fifo", "symlink", "200 MB"])
def test_hostile_token_file_is_one_fail_line_in_bounded_memory(user: SyncUser, make: Callable[[Path], None],
                                                               why: str) -> None:
    raw = user.login(new_oauth())
    make(user.token_file)

    code, output, peak = run_measured(user)

    assert code == 1
    assert output == (f"FAIL {user.name}: {TOKEN_FILE}: {why}; run `claude-auth apply` as root; "
                      f"{CREDENTIALS} left untouched\n")
    assert peak <= PEAK_LIMIT_MIB, f"peak RSS {peak:.1f} MiB"
    assert user.credentials.read_bytes() == raw
    assert current_version(user.root, user.kv_path) == 0
    assert_lock_released(user)


@pytest.mark.parametrize("name,why", [
    # Opened for writing only: a FIFO without a reader cannot even be opened (ENXIO).
    ("sync.log", "is a FIFO, socket or device, not a regular file"),
    ("lock", "is a FIFO, not a regular file"),
])
def test_fifo_as_sync_log_or_lock_is_one_fail_line(user: SyncUser, name: str, why: str) -> None:
    raw = user.login(new_oauth())
    fifo(user.state_dir / name)

    code, output, peak = run_measured(user)

    assert code == 1
    assert output == f"FAIL {user.name}: ~/.local/state/claude-auth-sync/{name}: {why}; refusing to use it; " \
                     "nothing changed\n"
    assert peak <= PEAK_LIMIT_MIB
    assert user.credentials.read_bytes() == raw
    assert current_version(user.root, user.kv_path) == 0
    (user.state_dir / name).unlink()  # the leak check reads the log afterwards


def test_sync_log_linked_elsewhere_is_not_written_through(user: SyncUser) -> None:
    user.login(new_oauth())
    target = user.home / "not-the-log"
    target.write_text("")
    (user.state_dir / "sync.log").symlink_to(target)

    outcome = user.sync()

    assert outcome.status.value == "FAIL"
    assert outcome.line == (f"FAIL {user.name}: ~/.local/state/claude-auth-sync/sync.log: is a symbolic link; "
                            "refusing to follow it; nothing changed")
    assert target.read_text() == ""
