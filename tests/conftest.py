"""Shared fixtures: real OpenBao, the real pinned `claude`, a Messages API stand-in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import hvac
import pytest

from tests.support.leaks import assert_no_secrets  # noqa: F401  (re-exported for tests)
from tests.support.pinned import pinned_claude
from tests.support.messages_api import MessagesApiStandIn
from tests.support.openbao import OpenBaoServer
from tests.support.world import world  # noqa: F401  (a fixture: a sandbox --root on the shared OpenBao)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _umask_kept() -> Iterator[None]:
    """`claude-auth sync` sets its own umask; a test that calls it in-process must not pass it on."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


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
    path = Path(configured) if configured else pinned_claude()
    if not os.access(path, os.X_OK):
        pytest.fail(f"the pinned claude CLI is missing at {path}: run `make test`, which installs it")
    return path


@pytest.fixture
def messages_api() -> Iterator[MessagesApiStandIn]:
    with MessagesApiStandIn() as api:
        yield api
