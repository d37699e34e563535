"""Where `make setup` put the pinned Claude Code CLI: .node/<CLAUDE_CODE_VERSION>/ (read from the Makefile).

For runs outside make (a bare `pytest`, the demo by hand); make itself passes the path in
CLAUDE_AUTH_TEST_CLAUDE / CLAUDE_AUTH_DEMO_CLAUDE.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def pinned_version() -> str:
    match = re.search(r"^CLAUDE_CODE_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError("the Makefile pins no CLAUDE_CODE_VERSION")
    return match.group(1)


def pinned_claude() -> Path:
    return REPO / ".node" / pinned_version() / "node_modules" / ".bin" / "claude"
