"""This host's identity in `status` and in the metrics: is its host token alive, and for how long.

A dead host token turns the hourly run back into one that can only warn (every
re-mint and new person then waits for an admin), so it is shown below the
status table, in `status --json`, and as claude_auth_host_token_ttl_seconds for
an alert (deploy/alerts). Read-only: the token is looked up (with the admin
token, or with itself), never renewed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reconcile.engine.hostfile import HostTokenFileError, read_host_token
from reconcile.engine.hostmode import observe_host_token
from reconcile.engine.metrics import HostMetrics
from reconcile.vault.client import Vault
from reconcile.vault.hosts import HostTokenState
from reconcile.vault.values import VaultError

ALIVE, DEAD, UNREADABLE, NOT_ENROLLED, UNKNOWN = "alive", "dead", "unreadable", "not enrolled", "unknown"


@dataclass(frozen=True)
class HostTokenStatus:
    host: str
    state: str
    ttl_seconds: int | None = None
    note: str = ""

    def metrics(self) -> HostMetrics:
        """0 seconds when it cannot work (dead, unreadable); nothing when not enrolled or not known."""
        ttl = {ALIVE: self.ttl_seconds, DEAD: 0, UNREADABLE: 0}.get(self.state)
        return HostMetrics(self.host, None if ttl is None else float(ttl))

    def as_json(self) -> dict[str, object]:
        return {"host": self.host, "state": self.state, "ttl_seconds": self.ttl_seconds, "note": self.note or None}

    def line(self) -> str:
        if self.state == ALIVE and self.ttl_seconds is not None:
            return f"Host token of {self.host}: alive, {self.ttl_seconds / 86400:.1f} days left."
        fixes = {DEAD: "; an admin `claude-auth apply` on this host mints a new one",
                 UNREADABLE: "; an admin `claude-auth apply` on this host writes it again",
                 NOT_ENROLLED: " (the hourly run can only warn; an admin `claude-auth apply` here enrolls it)"}
        return f"Host token of {self.host}: {self.state}{fixes.get(self.state, '')}" + (
            f" ({self.note})" if self.note else "") + "."


def host_token_status(root: Path, host: str, vault: Vault | None, *, admin: bool) -> HostTokenStatus:
    """The file is read once, through hostfile's checked descriptor (observe_host_token), whether or
    not Vault can be asked."""
    if vault is None:
        try:
            held = read_host_token(root)
        except HostTokenFileError as exc:
            return HostTokenStatus(host, UNREADABLE, note=str(exc))
        return HostTokenStatus(host, NOT_ENROLLED) if held is None else HostTokenStatus(
            host, UNKNOWN, note="Vault not reachable")
    try:
        observed, _ = observe_host_token(vault, root, admin=admin)
    except VaultError as exc:
        return HostTokenStatus(host, UNKNOWN, note=str(exc))
    if observed.state is HostTokenState.VALID and observed.info is not None:
        return HostTokenStatus(host, ALIVE, ttl_seconds=observed.info.ttl_seconds)
    if observed.state is HostTokenState.NO_FILE:
        return HostTokenStatus(host, NOT_ENROLLED)
    if observed.state is HostTokenState.UNREADABLE:
        return HostTokenStatus(host, UNREADABLE, note=observed.detail)
    return HostTokenStatus(host, DEAD)
