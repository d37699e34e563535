"""Which host this is, and which people a host reconciles (the roster's per-user `hosts`).

Standard library only. The host name is what the tool writes into each
token's metadata (`host`) and what `hosts` patterns are matched against:
`$CLAUDE_AUTH_HOSTNAME` when set (tests give every simulated host its own),
else the kernel's host name (socket.gethostname()).
"""

from __future__ import annotations

import fnmatch
import os
import socket
from typing import Iterable

HOSTNAME_ENV = "CLAUDE_AUTH_HOSTNAME"


def this_host() -> str:
    return os.environ.get(HOSTNAME_ENV) or socket.gethostname()


def is_assigned(hosts: Iterable[str] | None, host: str) -> bool:
    """Whether a person whose roster entry lists `hosts` (None: every host) is reconciled on `host`.

    Each entry is a host name or a shell-style pattern (`build-*`, `ws[0-9]`),
    matched case-sensitively against the whole name.
    """
    if hosts is None:
        return True
    return any(fnmatch.fnmatchcase(host, pattern) for pattern in hosts)
