"""`make demo` runs the whole lifecycle, exits 0, and leaves nothing running."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A folder the demo's users (uid 5001..) can enter; pytest's tmp_path is 0700."""
    folder = Path(tempfile.mkdtemp(prefix="claude-auth-demo-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_demo_runs_the_whole_lifecycle_and_leaves_nothing_running(reachable_dir: Path, claude_bin: Path) -> None:
    sandbox = reachable_dir / "demo"
    env = {**os.environ, "CLAUDE_AUTH_DEMO_DIR": str(sandbox), "CLAUDE_AUTH_DEMO_CLAUDE": str(claude_bin)}
    env.pop("VAULT_TOKEN", None)
    result = subprocess.run([sys.executable, str(REPO / "demo" / "run_demo.py")], env=env,
                            capture_output=True, text=True, timeout=120)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "the real Claude Code CLI" in out
    steps = [line for line in out.splitlines() if line.startswith("==> ")]
    assert len(steps) == 14
    for expected in ("valid, 4 users", "Plan: 36 to add, 0 to change, 0 to remove.",
                     "+ host-token claude-auth-host-", "No changes.",
                     "minting with this host's host token", "~ token devvm-claude-auth-alice: minted and written",
                     "OK alice: login works", "vaultwarden_master_password", "RECOVERED alice:",
                     "USER   STATE", "- token devvm-claude-auth-dave: revoked",
                     "- policy workstation-claude-dave: deleted", 'CLAUDE_AUTH_LOGIN=setup-token"',
                     "OK dave: setup token works and is stored at secret/data/workstation/claude-users/dave",
                     "OK dave: setup token works (expires ", "Login mode setup-token (everyone else: oauth):",
                     "  dave: token expires "):
        assert expected in out, expected
    seconds = float(re.search(r"Demo finished in ([\d.]+) s", out).group(1))
    assert seconds < 60
    port = int(re.search(r"OpenBao http://127\.0\.0\.1:(\d+)", out).group(1))
    assert _processes_mentioning(f"127.0.0.1:{port}") == []
    assert _processes_mentioning(str(sandbox)) == []
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens there any more
    # Nothing secret in the demo's output: the demo's credentials and the root token.
    assert "demo-good-access" not in out and "demo-refresh" not in out and "devroot-" not in out
    assert "sk-ant-oat01-demogood" not in out + result.stderr
