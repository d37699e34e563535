"""What a child process of ours may inherit: never the Vault credentials this run holds.

An admin's `VAULT_TOKEN` (or OpenBao's `BAO_TOKEN`) is in the environment of an admin
run; neither `claude` nor `systemctl` needs it, and a child's environment can be read
by anything running as that child's uid for its whole life (/proc/PID/environ).
"""

from __future__ import annotations

import os
from typing import Mapping

VAULT_PREFIXES = ("VAULT_", "BAO_")
"""Vault's and OpenBao's own client variables (token, address, TLS, namespace)."""


def without_vault(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `environ` (default: this process's) without any Vault or OpenBao variable."""
    source = os.environ if environ is None else environ
    return {name: value for name, value in source.items() if not name.startswith(VAULT_PREFIXES)}
