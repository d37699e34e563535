"""What the real pinned claude CLI does around the sync: its refresh lock and its telemetry.

- While the sync holds Claude's refresh lock, a claude that needs a refresh
  (its access token expired) does not refresh: it retries the lock (5 tries,
  1-2 s apart, about 7 s) and then goes on without refreshing. Once the lock
  is released during its retries, it takes the lock and refreshes. (No
  refresh can succeed here: its OAuth host is not reachable from tests; the
  debug log shows the attempt.)
- With CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1, as the probe sets it,
  ~/.claude/telemetry is never written; without it, it grows on every run.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from reconcile.sync import claudelock, livecheck
from tests.support.messages_api import MessagesApiStandIn


def set_up_home(home: Path, api: MessagesApiStandIn, *, expired: bool) -> None:
    (home / ".claude").mkdir(parents=True, mode=0o700)
    access = "sk-ant-oat01-" + secrets.token_urlsafe(32)
    api.accept(access)
    offset = -3_600_000 if expired else 3_600_000
    (home / ".claude" / ".credentials.json").write_text(json.dumps({"claudeAiOauth": {
        "accessToken": access, "refreshToken": "sk-ant-ort01-" + secrets.token_urlsafe(32),
        "expiresAt": int(time.time() * 1000) + offset, "scopes": ["user:inference"],
        "subscriptionType": "enterprise"}}))


def probe_env(home: Path, api: MessagesApiStandIn, claude_bin: Path) -> dict[str, str]:
    base = {"PATH": f"{claude_bin.parent}:/usr/bin:/bin", "HOME": str(home), "ANTHROPIC_BASE_URL": api.base_url}
    env, _ = livecheck.child_environment(base)
    return env


def run_probe(env: dict[str, str], home: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(livecheck.command("haiku") + list(extra), env=env, cwd=home, capture_output=True,
                          text=True, timeout=120)


def debug_events(home: Path) -> list[tuple[float, str]]:
    """(time, text) of the auth lines of claude's --debug log."""
    events = []
    for log in (home / ".claude" / "debug").glob("*.txt"):
        for line in log.read_text().splitlines():
            match = re.match(r"(\S+Z) \[\w+\] (.*)", line)
            if match and ("OAuth" in match.group(2) or "API:auth" in match.group(2)):
                stamp = datetime.fromisoformat(match.group(1).replace("Z", "+00:00")).timestamp()
                events.append((stamp, match.group(2)))
    return sorted(events)


def tree_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


@pytest.fixture
def api() -> Any:
    with MessagesApiStandIn() as stand_in:
        yield stand_in


def test_claude_waits_for_our_lock_and_does_not_refresh_while_we_hold_it(
        tmp_path: Path, api: MessagesApiStandIn, claude_bin: Path) -> None:
    home = tmp_path / "home"
    set_up_home(home, api, expired=True)
    env = probe_env(home, api, claude_bin)
    main, _ = claudelock.lock_paths(home / ".claude")

    with claudelock.held(home / ".claude", wait=1):
        inode = os.stat(main).st_ino
        started = time.time()
        done = run_probe(env, home, "--debug")
        elapsed = time.time() - started
        assert os.stat(main).st_ino == inode  # claude neither removed nor took over our (fresh) lock

    events = debug_events(home)
    texts = [text for _, text in events]
    assert elapsed >= 5, elapsed  # five lock retries, 1-2 s apart
    # Both go on with the expired token (the stand-in accepts it). 2.1.332 does so because our owner
    # record names a live holder ("lock_busy"); with no record it exits 1 instead ("lock_timeout",
    # which the sync takes as SKIP: livecheck.REFRESHING_RULES).
    assert done.stdout.strip() == "AUTH_OK", done.stdout + done.stderr
    if not knows_owner_record(claude_bin):  # 2.1.197's debug lines (gone in 2.1.332)
        assert "[API:auth] OAuth token check starting" in texts
        assert "[API:auth] OAuth token check complete" in texts
        check = [t for t, text in events if "token check starting" in text][0]
        complete = [t for t, text in events if "token check complete" in text][0]
        assert complete - check >= 5
    assert not any("refresh failed" in text for text in texts), texts  # it never got to refresh


def test_claude_refreshes_once_our_lock_is_released(tmp_path: Path, api: MessagesApiStandIn,
                                                    claude_bin: Path) -> None:
    home = tmp_path / "home"
    set_up_home(home, api, expired=True)
    env = probe_env(home, api, claude_bin)
    released: list[float] = []
    entered = threading.Event()

    def hold_briefly() -> None:
        with claudelock.held(home / ".claude", wait=1):
            entered.set()
            time.sleep(2.5)
            released.append(time.time())

    holder = threading.Thread(target=hold_briefly)
    holder.start()
    assert entered.wait(5)
    done = run_probe(env, home, "--debug")
    holder.join()

    events = debug_events(home)
    assert done.stdout.strip() == "AUTH_OK"
    refresh = [t for t, text in events if "OAuth refresh" in text and "lock" not in text]
    assert refresh, [text for _, text in events]  # it did try to refresh (the OAuth host is unreachable here)
    assert refresh[0] >= released[0]  # but only after our lock was released
    assert not claudelock.lock_paths(home / ".claude")[0].exists()  # and it released its own lock


def test_the_probe_writes_no_telemetry_and_without_the_switch_claude_does(
        tmp_path: Path, api: MessagesApiStandIn, claude_bin: Path) -> None:
    quiet_home, chatty_home = tmp_path / "quiet", tmp_path / "chatty"
    set_up_home(quiet_home, api, expired=False)
    set_up_home(chatty_home, api, expired=False)
    quiet_env = probe_env(quiet_home, api, claude_bin)
    assert quiet_env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    chatty_env = {k: v for k, v in probe_env(chatty_home, api, claude_bin).items()
                  if k != "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"}

    quiet_sizes, chatty_sizes = [], []
    for _ in range(2):
        assert livecheck.run("haiku", quiet_env, 120, cwd=str(quiet_home)).is_ok
        quiet_sizes.append(tree_size(quiet_home / ".claude" / "telemetry"))
        assert run_probe(chatty_env, chatty_home).stdout.strip() == "AUTH_OK"
        chatty_sizes.append(tree_size(chatty_home / ".claude" / "telemetry"))

    assert quiet_sizes == [0, 0]
    assert not (quiet_home / ".claude" / "telemetry").exists()
    assert 0 < chatty_sizes[0] < chatty_sizes[1], chatty_sizes  # grows on every run without the switch
    print(f"telemetry after two runs: with the switch {quiet_sizes}, without it {chatty_sizes} bytes")


def knows_owner_record(claude_bin: Path) -> bool:
    """Whether this CLI writes and honours ~/.claude/.oauth_refresh.lock.owner (2.1.332 does, 2.1.197 not)."""
    found = subprocess.run(["grep", "-a", "-q", "-F", ".oauth_refresh.lock.owner", os.path.realpath(claude_bin)])
    return found.returncode == 0


def test_a_real_claude_takes_over_the_lock_of_a_killed_sync(tmp_path: Path, api: MessagesApiStandIn,
                                                            claude_bin: Path) -> None:
    """A sync SIGKILLed while it holds Claude's refresh lock leaves a fresh lock and our owner record;
    a Claude that reads owner records takes it over once its retries are done (well before its 60 s
    stale time) and refreshes. Without our record it would give up (seen: `another Claude Code process
    is holding the refresh lock`, exit 1) for a whole minute."""
    if not knows_owner_record(claude_bin):
        pytest.skip("this CLI has no owner record (2.1.197: a dead holder's lock is stale after 10 s)")
    home = tmp_path / "home"
    set_up_home(home, api, expired=True)
    env = probe_env(home, api, claude_bin)
    main, legacy = claudelock.lock_paths(home / ".claude")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from reconcile.sync import claudelock\n"
        f"with claudelock.held(Path({str(home / '.claude')!r}), wait=1):\n"
        "    print('held', flush=True); time.sleep(600)\n")], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    inode = os.stat(main).st_ino
    assert json.loads((home / ".claude" / ".oauth_refresh.lock.owner").read_text())["pid"] == holder.pid
    holder.kill()
    holder.wait()

    done = run_probe(env, home, "--debug")

    assert done.returncode == 0 and done.stdout.strip() == "AUTH_OK", done.stdout + done.stderr
    assert not main.exists() or os.stat(main).st_ino != inode, "claude did not take over the dead sync's lock"
    assert not legacy.exists()
    log = "\n".join(p.read_text() for p in (home / ".claude" / "debug").glob("*.txt"))
    assert "OAuth refresh failed" in log  # it went on to refresh (the OAuth host is unreachable here)
