"""The login-shell snippet deploy/profile.d/claude-auth.sh (issue 24), run by real dash and bash.

It prints one line only in an interactive shell, only when the person's own state
files say so, and nothing a planted file could turn into terminal control or a
shell error. Its cost is measured by bench/notice_bench.py, never timed here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from reconcile.sync import notice

REPO = Path(__file__).resolve().parent.parent
SNIPPET = REPO / "deploy" / "profile.d" / "claude-auth.sh"
SHELLS = [shell for shell in ("dash", "bash") if shutil.which(shell)]


def login(shell: str, home: Path, *, interactive: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [shell, "-i", "-c", f". {SNIPPET}"] if interactive else [shell, "-c", f". {SNIPPET}"]
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "PS1": ""}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    # An interactive shell with no terminal says so; that line is this harness's, not the snippet's.
    done.stderr = "".join(line for line in done.stderr.splitlines(keepends=True)
                          if "job control" not in line and "terminal process group" not in line
                          and "can't access tty" not in line)
    return done


@pytest.fixture
def state(tmp_path: Path) -> Path:
    folder = tmp_path / ".local" / "state" / "claude-auth-sync"
    folder.mkdir(parents=True)
    return folder


def deadline_in(seconds: float, command: str = notice.SSO_COMMAND) -> str:
    at = int(time.time() + seconds)
    return f"{at} {time.strftime('%Y-%m-%d', time.gmtime(at))} {command}\n"


def test_both_shells_are_here() -> None:
    assert SHELLS == ["dash", "bash"]  # Debian's /bin/sh, and the usual login shell


@pytest.mark.parametrize("shell", SHELLS)
def test_nothing_to_say_prints_nothing(shell: str, state: Path) -> None:
    assert login(shell, state.parents[2]).stdout == ""
    (state / notice.REAUTH_BY).write_text(deadline_in(10 * 86400))
    done = login(shell, state.parents[2])
    assert (done.stdout, done.returncode) == ("", 0)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_login_that_needs_the_person_is_one_line(shell: str, state: Path) -> None:
    (state / notice.NEEDS_YOU).write_text(notice.needs_you_line(notice.SSO_COMMAND) + "\n")
    (state / notice.REAUTH_BY).write_text(deadline_in(3600))  # needs-you says it first, alone
    done = login(shell, state.parents[2])
    assert done.stdout.count("\n") == 1 and f"Run: {notice.SSO_COMMAND}" in done.stdout
    assert login(shell, state.parents[2], interactive=False).stdout == ""  # scripts, scp: silent


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(("left", "command", "shown"), [
    (2 * 86400, notice.SSO_COMMAND, True),
    (-86400, notice.SETUP_TOKEN_COMMAND, True),   # already past: still said
    (4 * 86400, notice.SSO_COMMAND, False),
])
def test_the_deadline_is_said_from_three_days_before(shell: str, state: Path, left: int, command: str,
                                                     shown: bool) -> None:
    (state / notice.REAUTH_BY).write_text(deadline_in(left, command))
    out = login(shell, state.parents[2]).stdout
    assert (f"must be renewed by" in out and f"Run: {command}" in out) is shown
    assert out.count("\n") == (1 if shown else 0)


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("planted", [
    "needs-you with escapes", "needs-you huge", "needs-you link", "reauth-by huge number",
    "reauth-by garbage", "reauth-by escapes", "needs-you folder",
])
def test_planted_files_print_no_control_characters_and_no_errors(shell: str, state: Path, tmp_path: Path,
                                                                 planted: str) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("from elsewhere\n")
    if planted == "needs-you with escapes":
        (state / notice.NEEDS_YOU).write_bytes(b"\x1b]0;owned\x07\x1b[2Jhello\rworld\n")
    elif planted == "needs-you huge":
        (state / notice.NEEDS_YOU).write_bytes(b"x" * 10_000_000)
    elif planted == "needs-you link":
        (state / notice.NEEDS_YOU).symlink_to(target)
    elif planted == "needs-you folder":
        (state / notice.NEEDS_YOU).mkdir()
    elif planted == "reauth-by huge number":
        (state / notice.REAUTH_BY).write_text("9" * 40 + " 2030-01-01 x\n")
    elif planted == "reauth-by garbage":
        (state / notice.REAUTH_BY).write_text("$(touch /tmp/pwned) `id` ; rm -rf /\n")
    else:
        (state / notice.REAUTH_BY).write_text(f"1 2001-01-01 \x1b[2Jrun\x07 me\n")

    done = login(shell, state.parents[2])

    assert done.stderr == "" and done.returncode == 0
    assert not any(ch in done.stdout for ch in "\x1b\x07\r\x00")
    assert len(done.stdout) <= 420 and "from elsewhere" not in done.stdout
    assert not Path("/tmp/pwned").exists()
