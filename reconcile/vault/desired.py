"""The Vault side the roster asks for, pure: one ACL policy per user, one scoped token per user.

`desired_vault(roster, host)`: one policy per roster user (policies are
fleet-wide) and one scoped token per user with `claude_auth: true` assigned to
this host (parked users too, so unparking works at once).

Ownership. A token is "minted for" a user when its metadata says this tool
minted it for that user; only such a token is ever revoked (`is_ours_to_revoke`):
a token found in a user's file that belongs to someone else is replaced there
but left alone in Vault. A policy is observed, and reconciled for roster users,
when its name is under the policy prefix; it is orphaned or deleted only when
this tool wrote it (`is_tool_policy`: a POSIX user name after the prefix and the
template's header line naming that user), so hand-made policies under the prefix
stay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from reconcile.roster.fleet import is_assigned
from reconcile.common.identity import token_display_name, vault_display_name
from reconcile.roster.values import Roster
from reconcile.common.templating import render
from reconcile.vault.values import TokenInfo


TOOL = "claude-auth"
NONCE_META = "mint_nonce"
"""The token metadata key that carries the nonce of the intent written before its mint."""
POLICY_TEMPLATE = "policy.hcl.j2"
RESERVED_POLICIES = frozenset({"root", "default"})
"""Never managed, whatever the prefix."""
POLICY_HEADER_START = "# Managed by claude-auth for user "
"""The template's first line starts so, followed by the user name (a test checks the template)."""
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
"""A POSIX account name, as the roster requires."""


# --- desired (pure) -------------------------------------------------------------


@dataclass(frozen=True)
class DesiredPolicy:
    name: str
    user: str
    text: str


@dataclass(frozen=True)
class DesiredToken:
    user: str
    policy: str
    display_name: str
    """As requested at creation (`devvm-claude-auth-alice`); also the change name."""
    period: str
    """The roster's text (`768h`), handed to Vault as is."""
    period_seconds: int
    meta: Mapping[str, str]
    max_age_seconds: int = 0
    """Rotate the token once it is older than this (the roster's vault.token_max_age); 0: never."""
    role_prefix: str = ""
    """Names of the hosts' token roles start so: a token minted through one takes its period from the
    role (its lookup shows none), which every admin run keeps equal to token_period."""

    @property
    def vault_display_name(self) -> str:
        """What Vault's lookup shows for `display_name`."""
        return vault_display_name(self.display_name)


@dataclass(frozen=True)
class DesiredVault:
    policy_prefix: str
    policies: Mapping[str, DesiredPolicy]
    """By policy name."""
    tokens: Mapping[str, DesiredToken]
    """By user name: only users with claude_auth true."""
    users: frozenset[str]
    """Every roster user."""
    host: str = ""
    """This host's name, as written into the metadata of every token it mints."""
    here: frozenset[str] | None = None
    """Roster users assigned to this host (the roster's `hosts`); None: every roster user."""

    def is_here(self, user: str) -> bool:
        return self.here is None or user in self.here


def render_policy(roster: Roster, user: str) -> str:
    return render(POLICY_TEMPLATE, user=user, kv_mount=roster.vault.kv_mount, kv_path=roster.kv_path(user))


def desired_vault(roster: Roster, host: str) -> DesiredVault:
    """What Vault should hold for this roster (pure apart from reading the template).

    Policies are fleet-wide: one per roster user whatever the host. Tokens are
    per host: only for users assigned to `host` (reconcile.roster.fleet).
    """
    prefix = roster.vault.policy_prefix.lower()  # Vault stores policy names lower-cased
    policies: dict[str, DesiredPolicy] = {}
    tokens: dict[str, DesiredToken] = {}
    for name, user in roster.users.items():
        policy = f"{prefix}{name}"
        policies[policy] = DesiredPolicy(name=policy, user=name, text=render_policy(roster, name))
        if user.wants_token and is_assigned(user.hosts, host):
            tokens[name] = DesiredToken(
                user=name, policy=policy, display_name=token_display_name(name),
                period=roster.vault.token_period, period_seconds=roster.vault.token_period_seconds,
                meta=MappingProxyType({"managed_by": TOOL, "user": name, "host": host}),
                max_age_seconds=roster.vault.token_max_age_seconds, role_prefix=f"{prefix}host.",
            )
    return DesiredVault(policy_prefix=prefix, policies=MappingProxyType(policies),
                        tokens=MappingProxyType(tokens), users=frozenset(roster.users), host=host,
                        here=frozenset(name for name, user in roster.users.items() if is_assigned(user.hosts, host)))


def is_managed_policy(name: str, prefix: str) -> bool:
    """Under the prefix (names only; never root/default): observed, and reconciled for roster users.

    A name under the prefix is not enough to delete a policy: see `is_tool_policy`.
    """
    return bool(prefix) and name.startswith(prefix) and name not in RESERVED_POLICIES and len(name) > len(prefix)


def policy_header(user: str) -> str:
    """The first line of every policy this tool writes, up to its `;` (templates/policy.hcl.j2)."""
    return f"{POLICY_HEADER_START}{user}"


def is_tool_policy(name: str, text: str, prefix: str) -> bool:
    """Whether this tool wrote the policy: only such a policy is ever orphaned or deleted.

    Its name is the prefix and a POSIX user name, and its text starts with the
    template's header line naming that same user; a policy someone made by hand
    under the prefix (`workstation-claude-admins`) is left alone.
    """
    if not is_managed_policy(name, prefix):
        return False
    user = name[len(prefix):]
    if not USER_NAME.fullmatch(user):
        return False
    header = policy_header(user)
    first_line = text.split("\n", 1)[0]
    if not first_line.startswith(header):
        return False
    rest = first_line[len(header):]
    return not rest or rest[0] == ";" or rest[0].isspace()


def is_minted_for(info: TokenInfo, user: str) -> bool:
    """Whether the token's metadata says this tool minted it for `user` (the only tokens ever revoked)."""
    return info.meta.get("managed_by") == TOOL and info.meta.get("user") == user


def is_minted_here(info: TokenInfo, host: str) -> bool:
    """Whether the token's metadata names `host` as the host that minted it."""
    return bool(host) and info.meta.get("host") == host


def is_ours_to_revoke(info: TokenInfo, user: str, desired: DesiredVault) -> bool:
    """Whether this host may revoke a token its state file records for `user`.

    For a user whose token this host still manages, a token minted for them
    (by any host: in a shared home every host adopts one token) that this
    host found in its own files. For anybody else (offboarded, claude_auth
    false, or not assigned here), only a token this host minted: in a shared
    home another host may still be using the one it adopted.
    """
    if not is_minted_for(info, user):
        return False
    return user in desired.tokens or is_minted_here(info, desired.host)


def minted_for_whom(info: TokenInfo) -> str | None:
    """The user this tool minted the token for, or None when the tool did not mint it."""
    user = info.meta.get("user")
    return user if user and info.meta.get("managed_by") == TOOL else None


def is_host_token(info: TokenInfo) -> bool:
    """A host token this tool minted (any host): kept in `pending_revoke` until revoked, like a person's."""
    return info.meta.get("managed_by") == TOOL and info.meta.get("kind") == "host"
