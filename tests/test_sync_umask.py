"""Issue 21: the sync's modes never depend on the umask it was started with (real OpenBao, real CLI)."""

from __future__ import annotations

import os
import shutil
import stat

from tests.test_sync_real import SyncUser, claude_on_path, new_oauth, user  # noqa: F401  (fixtures)


def test_a_sync_under_umask_000_makes_nothing_anyone_else_can_touch(user: SyncUser) -> None:  # noqa: F811
    shutil.rmtree(user.home / ".local")  # the sync makes its state folders itself
    good = new_oauth("good")
    user.login(good)
    old = os.umask(0)
    try:
        assert user.sync_subprocess().returncode == 0  # OK: backed up
        user.login(new_oauth("bad"), accepted=False)
        done = user.sync_subprocess()  # RECOVERED: a kept copy and a rewritten login file
    finally:
        os.umask(old)
    assert done.stdout.startswith("RECOVERED"), done.stdout + done.stderr
    for folder in (user.home / ".local", user.home / ".local" / "state", user.state_dir):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for path in [*user.state_dir.iterdir(), user.credentials]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # What the claude child wrote under ~/.claude inherits the sync's umask: private too.
    for path in (user.home / ".claude").rglob("*"):
        if not path.is_symlink():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
