"""A person's sync timer is enabled once their token file exists, never before.

Without a token every sync could only FAIL (and page someone), so the hourly
run, which cannot mint tokens, leaves a new person's timer off; the admin run
mints the token and enables the timer in the same run. Sandbox --root, real
OpenBao, real `systemctl --root`.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from reconcile.common.exitcodes import Exit
from tests.support.world import World


def timer_state(world: World, user: str) -> str:
    result = subprocess.run(["systemctl", f"--root={world.root}", "is-enabled", f"claude-auth-sync@{user}.timer"],
                            capture_output=True, text=True)
    return result.stdout.strip() or "not-found"


def test_the_hourly_run_leaves_the_timer_off_until_the_admin_run_mints_the_token(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.write_roster({"alice": {}})
    monkeypatch.setenv("CLAUDE_AUTH_NO_ADMIN", "1")

    hourly = world.run("apply")
    assert hourly.code == Exit.OK, hourly.err
    assert "WARN alice: needs an admin run: token devvm-claude-auth-alice: no token yet; mint" in hourly.err
    assert (world.root / "home/alice/.config/claude-auth-sync").is_dir()  # the rest is done
    assert world.token("alice") is None
    assert timer_state(world, "alice") in ("disabled", "not-found")
    planned = world.run("plan")
    assert planned.code == Exit.CHANGES_PENDING
    assert [line for line in planned.lines if "claude-auth-sync@alice.timer" in line] == []  # it waits

    monkeypatch.delenv("CLAUDE_AUTH_NO_ADMIN")
    admin = world.run("apply")
    assert admin.code == Exit.OK, admin.err
    assert world.token("alice") is not None
    assert timer_state(world, "alice") == "enabled"  # in the same run as the mint
    world.assert_converged()


def test_a_token_file_another_host_writes_between_the_two_reads_enables_the_timer(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shared /home: the local read finds no token file, another host writes it, then the token
    observation reads it and finds it valid. The timer must not wait a whole run for that."""
    from reconcile.local import observe as local_observe
    world.write_roster({"alice": {}})
    assert world.run("apply").code == Exit.OK
    token_file = world.root / "home/alice/.config/claude-auth-sync/vault-token"
    written, st = token_file.read_bytes(), token_file.stat()
    token_file.unlink()
    subprocess.run(["systemctl", f"--root={world.root}", "disable", "claude-auth-sync@alice.timer"],
                   check=True, capture_output=True)
    original = local_observe.observe_local

    def then_another_host_writes(*args: object, **kwargs: object) -> object:
        observed = original(*args, **kwargs)  # type: ignore[arg-type]
        token_file.write_bytes(written)  # the other host's write lands here
        os.chown(token_file, st.st_uid, st.st_gid)
        token_file.chmod(0o600)
        return observed

    monkeypatch.setattr(local_observe, "observe_local", then_another_host_writes)
    result = world.run("apply")
    assert result.code == Exit.OK, result.err
    assert timer_state(world, "alice") == "enabled"
    monkeypatch.setattr(local_observe, "observe_local", original)
    world.assert_converged()
