"""The roster: an immutable, validated description of who gets what.

Loading lives in reconcile.roster.loader (YAML + schema + semantic checks);
this module only holds the typed value every other module reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from reconcile.roster.fleet import is_assigned
from reconcile.common.loginmode import DEFAULT as DEFAULT_LOGIN

@dataclass(frozen=True)
class VaultSettings:
    address: str | None = None
    """None means: use $VAULT_ADDR."""
    kv_mount: str = "secret"
    path_prefix: str = "workstation/claude-users"
    policy_prefix: str = "workstation-claude-"
    token_period: str = "768h"
    token_period_seconds: int = 768 * 3600
    token_max_age: str | None = None
    """Rotate each user's token once it is older than this; None: never rotated."""
    token_max_age_seconds: int = 0


@dataclass(frozen=True)
class SyncSettings:
    interval: str = "6h"
    interval_seconds: int = 6 * 3600
    randomized_delay: str = "10m"
    randomized_delay_seconds: int = 600
    model: str = "haiku"


@dataclass(frozen=True)
class StatusSettings:
    prometheus_textfile: str | None = None
    """Where the hourly reconcile writes node_exporter metrics; None = off."""


@dataclass(frozen=True)
class User:
    name: str
    claude_auth: bool = True
    parked: bool = False
    tier: str | None = None
    authentik_user: str | None = None
    k8s_user: str | None = None
    namespaces: tuple[str, ...] = ()
    code_layout: str | None = None
    repos: tuple[str, ...] = ()
    hosts: tuple[str, ...] | None = None
    """Host names or shell-style patterns this user is reconciled on; None: every host (reconcile.roster.fleet)."""
    claude_login: str = DEFAULT_LOGIN.value
    """oauth | setup-token (reconcile.common.loginmode)."""

    @property
    def wants_token(self) -> bool:
        """Parked users keep their token so unparking works at once."""
        return self.claude_auth

    @property
    def wants_timer(self) -> bool:
        return self.claude_auth and not self.parked


@dataclass(frozen=True)
class Roster:
    users: Mapping[str, User]
    vault: VaultSettings = field(default_factory=VaultSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    status: StatusSettings = field(default_factory=StatusSettings)
    source: str = "roster.yaml"

    def __post_init__(self) -> None:
        object.__setattr__(self, "users", MappingProxyType(dict(sorted(self.users.items()))))

    def for_host(self, host: str) -> "Roster":
        """The roster as one host reconciles it: only the users assigned to `host`."""
        users = {name: user for name, user in self.users.items() if is_assigned(user.hosts, host)}
        return Roster(users=users, vault=self.vault, sync=self.sync, status=self.status, source=self.source)

    def policy_name(self, user: str) -> str:
        return f"{self.vault.policy_prefix}{user}"

    def kv_path(self, user: str) -> str:
        return f"{self.vault.path_prefix}/{user}"
