"""Shared fixtures: real OpenBao, the real pinned `claude`, a Messages API stand-in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import hvac
import pytest

from tests.support.messages_api import MessagesApiStandIn
from tests.support.openbao import OpenBaoServer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBaoServer]:
    """One real OpenBao dev server for the whole session (tests use their own users/prefixes)."""
    with OpenBaoServer() as server:
        yield server


@pytest.fixture
def fresh_openbao() -> Iterator[OpenBaoServer]:
    """A real OpenBao dev server of this test's own (empty; may be stopped by the test)."""
    server = OpenBaoServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def root_client(openbao: OpenBaoServer) -> hvac.Client:
    return hvac.Client(url=openbao.address, token=openbao.root_token)


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    """The real Claude Code CLI from the pinned npm package that `make test` installs."""
    configured = os.environ.get("CLAUDE_AUTH_TEST_CLAUDE")
    path = Path(configured) if configured else REPO / ".node" / "node_modules" / ".bin" / "claude"
    if not os.access(path, os.X_OK):
        pytest.fail(f"the pinned claude CLI is missing at {path}: run `make test`, which installs it")
    return path


@pytest.fixture
def messages_api() -> Iterator[MessagesApiStandIn]:
    with MessagesApiStandIn() as api:
        yield api


def assert_no_secrets(texts: Iterable[str | bytes], secrets: Iterable[str]) -> None:
    """Fail if any secret value appears in any of the texts (outputs, logs, files)."""
    secrets = [s for s in secrets if s]
    assert secrets, "a leak check needs at least one secret to look for"
    for index, text in enumerate(texts):
        blob = text.decode(errors="replace") if isinstance(text, bytes) else text
        for secret in secrets:
            # Report only the position, never the value itself.
            assert secret not in blob, f"a secret leaked into output #{index} (secret of length {len(secret)})"
