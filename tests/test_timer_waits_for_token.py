"""A person's sync timer is enabled once their token file exists, never before.

Without a token every sync could only FAIL (and page someone), so the hourly
run, which cannot mint tokens, leaves a new person's timer off; the admin run
mints the token and enables the timer in the same run. Sandbox --root, real
OpenBao, real `systemctl --root`.
"""

from __future__ import annotations

import subprocess

import pytest

from reconcile.exitcodes import Exit
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
