"""Broken login shapes from the field: restored at once, never backed up (issue 22).

Against the real OpenBao dev server and the real claude CLI. Each shape is one
that anthropics/claude-code users reported Claude itself writing: the logged-out
stub of a process that lost a refresh race (#76561), a refresh that dropped
`expiresAt` and `scopes` (#85262), tokens blanked while the refresh token still
had time (#83464), and shapes nothing can use (no `user:inference`, a past
expiry with no refresh token). The sync must see each without a probe (the
broken access token never reaches the API), restore the backup, prove the
restore with one probe, and never write a broken shape to Vault.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.test_sync_real import (SyncUser, claude_on_path, current_version, new_oauth,  # noqa: F401
                                  user)

CREDENTIALS = "~/.claude/.credentials.json"


def _without(*keys: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda login: {k: v for k, v in login.items() if k not in keys}


def _with(**changes: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda login: {**login, **changes}


SHAPES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "logged-out stub (#76561)": lambda login: {"accessToken": "", "refreshToken": "", "expiresAt": 0,
                                                "scopes": [], "subscriptionType": None},
    "no expiresAt, no scopes (#85262)": _without("expiresAt", "scopes"),
    "no scopes": _without("scopes"),
    "no user:inference scope": _with(scopes=["user:profile", "user:sessions:claude_code"]),
    "access token blanked (#83464)": _with(accessToken="", refreshTokenExpiresAt=int(time.time() * 1000) + 86_400_000),
    "refresh token blanked": _with(refreshToken=""),
    "expiresAt 0": _with(expiresAt=0),
    "expiresAt not a number": _with(expiresAt="tomorrow", refreshToken=7),
    "past expiry, no refresh token": lambda login: {**_without("refreshToken")(login), "expiresAt": 1_000},
}


@pytest.mark.parametrize("shape", SHAPES)
def test_a_broken_shape_is_restored_at_once_and_the_restore_proven(user: SyncUser, shape: str) -> None:
    user.extra_env["CLAUDE_AUTH_LOGIN"] = "oauth"  # as the unit's drop-in says (else the installed shape decides)
    good = new_oauth("good")
    user.login(good)
    assert user.sync().status.value == "OK"  # the backup holds the good login (version 1)
    broken = SHAPES[shape](new_oauth("broken"))
    user.remember(broken)
    mcp = {"github|x": {"serverName": "github", "accessToken": "mcp-kept-aaaaaaaaaaaaaaaa"}}
    user.remember(mcp)
    user.credentials.write_text(json.dumps({"claudeAiOauth": broken, "mcpOAuth": mcp}))
    if isinstance(broken.get("accessToken"), str) and broken["accessToken"]:
        user.api.accept(broken["accessToken"])  # even an access token the API would take is never probed

    outcome = user.sync()

    assert outcome.status.value == "RECOVERED", outcome.line
    assert f"{CREDENTIALS} holds a broken login (claudeAiOauth." in outcome.line
    assert "restored the backup" in outcome.line and "login works" in outcome.line
    after = json.loads(user.credentials.read_text())
    assert after == {"claudeAiOauth": good, "mcpOAuth": mcp}
    kept = user.kept_copies()
    assert [json.loads(p.read_text()) for p in kept] == [{"claudeAiOauth": broken}]
    assert current_version(user.root, user.kv_path) == 1  # nothing written: the restore equals the backup
    assert user.stored_oauth() == good
    if isinstance(broken.get("accessToken"), str) and broken["accessToken"]:
        assert not user.api.saw(broken["accessToken"])  # no probe spent on the broken login


@pytest.mark.parametrize("shape", ["logged-out stub (#76561)", "no expiresAt, no scopes (#85262)"])
def test_a_broken_shape_without_a_backup_is_fail_and_never_backed_up(user: SyncUser, shape: str) -> None:
    broken = SHAPES[shape](new_oauth("broken"))
    user.remember(broken)
    raw = json.dumps({"claudeAiOauth": broken}).encode()
    user.credentials.parent.mkdir(mode=0o700)
    user.credentials.write_bytes(raw)

    outcome = user.sync()

    assert outcome.status.value == "FAIL", outcome.line
    assert "holds a broken login" in outcome.line and "no usable backup" in outcome.line
    assert user.credentials.read_bytes() == raw
    assert current_version(user.root, user.kv_path) == 0


def _claude_that_breaks_the_file_once(user: SyncUser, real_claude: Path) -> None:
    """A claude that answers like the real one, then (first run only) rewrites the login without
    `expiresAt` and `scopes`, as the refresh of #85262 did: the file turns broken between the
    sync's check and its backup's read."""
    wrapper = user.bin_dir / "claude"
    wrapper.unlink()
    wrapper.write_text(f"""#!{sys.executable}
import json, os, pathlib, subprocess, sys
done = subprocess.run([{str(real_claude)!r}] + sys.argv[1:])
home = pathlib.Path(os.environ["HOME"])
marker = home / ".broke-once"
if not marker.exists():
    marker.touch()
    path = home / ".claude" / ".credentials.json"
    document = json.loads(path.read_text())
    for key in ("expiresAt", "scopes"):
        document["claudeAiOauth"].pop(key, None)
    path.write_text(json.dumps(document))
sys.exit(done.returncode)
""")
    wrapper.chmod(0o755)


def test_a_login_that_turns_broken_after_the_check_is_restored_not_backed_up(
        user: SyncUser, claude_bin: Path) -> None:
    good = new_oauth("good")
    user.login(good)
    assert user.sync().status.value == "OK"
    newer = new_oauth("newer")
    user.login(newer)
    _claude_that_breaks_the_file_once(user, claude_bin)

    outcome = user.sync()

    assert outcome.status.value == "RECOVERED", outcome.line
    assert "holds a broken login (claudeAiOauth.expiresAt" in outcome.line
    assert json.loads(user.credentials.read_text())["claudeAiOauth"] == good
    assert current_version(user.root, user.kv_path) == 1 and user.stored_oauth() == good


def test_a_login_that_turns_broken_after_the_check_is_never_the_first_backup(
        user: SyncUser, claude_bin: Path) -> None:
    user.login(new_oauth("first"))
    _claude_that_breaks_the_file_once(user, claude_bin)

    outcome = user.sync()

    assert outcome.status.value == "FAIL", outcome.line
    assert "holds a broken login" in outcome.line and "no usable backup" in outcome.line
    assert current_version(user.root, user.kv_path) == 0
