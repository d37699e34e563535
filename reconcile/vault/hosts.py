"""Host identities, pure: each enrolled host's token role and host policy, and this host's host token.

A host is enrolled by the first admin `apply` on it: a token role
`<prefix>host.<host>` whose `allowed_policies` are exactly the policies of the
people the roster assigns to that host (orphan, periodic with the roster's
`token_period`, no default policy), an ACL policy of the same name
(templates/host-policy.hcl.j2: mint through that role, read the role and those
people's policies, look itself up and renew itself), and a periodic orphan host
token carrying only that policy, in `<root>/etc/claude-auth/host-token`. Every
admin run (`apply`, `apply --vault-only`) keeps every enrolled host's role and
policy in step with the roster; the hosts enrolled are those whose host policy
this tool wrote (its header names the host: role names are lower-cased by Vault,
host names are not).

The hourly run with the host token mints, re-mints and rotates its own people's
tokens (reconcile.vault.plan, `host_grants`) and renews the host token; what
only an admin may do stays one WARN line naming the command that fixes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, Mapping

from reconcile.common.model import Action, Change, Kind
from reconcile.common.templating import render
from reconcile.roster.durations import format_duration
from reconcile.roster.fleet import is_assigned
from reconcile.roster.values import Roster
from reconcile.vault.desired import TOOL
from reconcile.vault.values import Secret, TokenInfo

HOST_POLICY_TEMPLATE = "host-policy.hcl.j2"
HOST_POLICY_HEADER = "# Managed by claude-auth for host "
"""The host policy's first line starts so, followed by the host name and `;`."""
HOST_INFIX = "host."
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
"""A host name that can be part of a role and a policy name."""
HOST_META_KIND = "host"
"""The `kind` metadata of a host token (a person's token has none)."""
VAULT_ONLY_FIX = "an admin runs `claude-auth apply --vault-only`"
ENROLL_FIX = "an admin runs `claude-auth apply` on this host"


def role_name(prefix: str, host: str) -> str:
    """The host's token role, and its host policy's name: `<prefix>host.<host>`, lower-cased as Vault does."""
    return f"{prefix}{HOST_INFIX}{host}".lower()


def placeholder_policy(prefix: str, host: str) -> str:
    """What a role allows when the roster assigns nobody to its host: a role with no allowed policy
    would allow every policy but the disallowed ones, so it names one that never exists."""
    return f"{role_name(prefix, host)}.none"


def host_token_display_name(host: str) -> str:
    return f"claude-auth-host-{host}"


def host_of_policy(name: str, text: str, prefix: str) -> str | None:
    """The host a host policy this tool wrote is for (its header), else None."""
    if not name.startswith(f"{prefix}{HOST_INFIX}"):
        return None
    first = text.split("\n", 1)[0]
    if not first.startswith(HOST_POLICY_HEADER):
        return None
    host = first[len(HOST_POLICY_HEADER):].split(";", 1)[0].strip()
    return host if HOST_NAME.fullmatch(host) and role_name(prefix, host) == name else None


def is_host_token(info: TokenInfo, host: str) -> bool:
    """Whether this tool minted the token as `host`'s host token."""
    return (info.meta.get("managed_by") == TOOL and info.meta.get("kind") == HOST_META_KIND
            and info.meta.get("host") == host)


# --- desired --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DesiredHost:
    host: str
    role: str
    """The role's name, which is also the host policy's."""
    allowed_policies: tuple[str, ...]
    """The policies of the people the roster assigns to the host (sorted), or the placeholder."""
    policy_text: str
    period: str
    period_seconds: int

    @property
    def display_name(self) -> str:
        return host_token_display_name(self.host)

    @property
    def meta(self) -> Mapping[str, str]:
        return MappingProxyType({"managed_by": TOOL, "kind": HOST_META_KIND, "host": self.host})

    def role_fields(self) -> dict[str, Any]:
        """Every field of the role this tool manages, as sent to auth/token/roles/<role>."""
        return {"allowed_policies": list(self.allowed_policies), "allowed_policies_glob": [],
                "disallowed_policies": sorted(["default", self.role]), "disallowed_policies_glob": [],
                "orphan": True, "renewable": True, "token_period": self.period_seconds,
                "token_no_default_policy": True, "token_type": "service", "token_explicit_max_ttl": 0,
                "token_num_uses": 0, "path_suffix": ""}


def desired_host(roster: Roster, host: str) -> DesiredHost:
    prefix = roster.vault.policy_prefix.lower()
    policies = sorted(f"{prefix}{name}" for name, user in roster.users.items()
                      if user.wants_token and is_assigned(user.hosts, host))
    name = role_name(prefix, host)
    allowed = tuple(policies) if policies else (placeholder_policy(prefix, host),)
    return DesiredHost(host=host, role=name, allowed_policies=allowed,
                       policy_text=render(HOST_POLICY_TEMPLATE, host=host, role=name, policies=policies),
                       period=roster.vault.token_period, period_seconds=roster.vault.token_period_seconds)


def role_drift(want: DesiredHost, have: Mapping[str, Any]) -> list[str]:
    """How the role Vault holds differs from the desired one (empty: it does not)."""
    reasons: list[str] = []
    for key, value in want.role_fields().items():
        seen = have.get(key)
        if isinstance(value, list):
            seen = sorted(str(item) for item in seen or ())
            value = sorted(value)
        elif isinstance(value, bool):
            seen = bool(seen)
        elif isinstance(value, int):
            seen = int(seen or 0)
        else:
            seen = str(seen or "")
        if seen != value:
            if isinstance(seen, list) and isinstance(value, list) and key == "allowed_policies":
                reasons.append(f"allows {len(seen)} policies, want {len(value)}")
            else:
                reasons.append(f"{key} differs")
    return reasons


# --- observed -------------------------------------------------------------------------------


class HostTokenState(Enum):
    NO_FILE = "no-file"
    UNREADABLE = "unreadable"
    VALID = "valid"
    DEAD = "dead"


@dataclass(frozen=True)
class ObservedHostToken:
    state: HostTokenState
    info: TokenInfo | None = None
    token: Secret | None = field(default=None, repr=False)
    detail: str = ""


@dataclass(frozen=True)
class ObservedHosts:
    policies: Mapping[str, str] | None
    """Host policies under the prefix, by name (the admin's policy listing); None: not read (the hourly
    run: then only the host token is planned)."""
    roles: Mapping[str, Mapping[str, Any] | None]
    """By role name: each desired host's role as read (None: there is none)."""
    token: ObservedHostToken | None = None
    """This host's host token (None: not looked at, `--vault-only`)."""


@dataclass(frozen=True)
class HostOrder:
    """What the executor needs for this host's host token."""

    host: DesiredHost
    renew: bool
    revoke: tuple[str, ...] = ()
    """Accessors of host tokens of this host the new one replaces."""


def enrolled_hosts(policies: Mapping[str, str], prefix: str) -> list[str]:
    """The hosts whose host policy this tool wrote, by name."""
    return sorted(host for name, text in policies.items() if (host := host_of_policy(name, text, prefix)))


# --- planning -------------------------------------------------------------------------------


def plan_hosts(hosts: Mapping[str, DesiredHost], observed: ObservedHosts, *, this_host: str | None) -> list[Change]:
    """Each desired host's policy and role brought to the roster; this host's host token minted or renewed."""
    changes: list[Change] = []
    for host, want in sorted(hosts.items()):
        if observed.policies is None:
            break
        text = observed.policies.get(want.role)
        if text != want.policy_text:
            action = Action.CREATE if text is None else Action.UPDATE
            reason = f"no host policy yet for host {host}" if text is None else "text differs from the template"
            changes.append(Change(action, Kind.POLICY, want.role, reason, needs_admin=True, desired=want,
                                  before_text=text, after_text=want.policy_text))
        role = observed.roles.get(want.role)
        if role is None:
            changes.append(Change(Action.CREATE, Kind.HOST_ROLE, want.role,
                                  f"no token role yet for host {host} ({len(want.allowed_policies)} allowed)",
                                  needs_admin=True, desired=want))
        elif drift := role_drift(want, role):
            changes.append(Change(Action.UPDATE, Kind.HOST_ROLE, want.role, "; ".join(drift), needs_admin=True,
                                  desired=want))
    if this_host is not None and this_host in hosts and observed.token is not None:
        changes.extend(plan_host_token(hosts[this_host], observed.token))
    return changes


def plan_host_token(want: DesiredHost, current: ObservedHostToken) -> list[Change]:
    name = want.display_name
    if current.state is HostTokenState.VALID and current.info is not None:
        info = current.info
        drift = []
        if info.policies != (want.role,):
            drift.append(f"policies are [{', '.join(info.policies)}], want [{want.role}]")
        if not info.orphan:
            drift.append("not an orphan token")
        if not is_host_token(info, want.host):
            drift.append("not minted by claude-auth for this host")
        if drift:
            return [Change(Action.UPDATE, Kind.HOST_TOKEN, name, "; ".join(drift) + "; re-mint", needs_admin=True,
                           desired=HostOrder(want, renew=False, revoke=_own(info, want.host)))]
        if info.period_seconds != want.period_seconds:
            return [Change(Action.UPDATE, Kind.HOST_TOKEN, name, "period differs; re-mint", needs_admin=True,
                           desired=HostOrder(want, renew=False, revoke=_own(info, want.host)))]
        if info.ttl_seconds * 2 < want.period_seconds:
            reason = (f"TTL {format_duration(info.ttl_seconds)} is below half the period "
                      f"({format_duration(want.period_seconds)}); renew")
            return [Change(Action.UPDATE, Kind.HOST_TOKEN, name, reason, needs_admin=False,
                           desired=HostOrder(want, renew=True), observed=current)]
        return []
    if current.state is HostTokenState.NO_FILE:
        return [Change(Action.CREATE, Kind.HOST_TOKEN, name, f"no host token yet; mint (enrolls host {want.host})",
                       needs_admin=True, desired=HostOrder(want, renew=False))]
    problem = current.detail or "expired, revoked or unknown"
    return [Change(Action.UPDATE, Kind.HOST_TOKEN, name, f"host token is {problem}; re-mint", needs_admin=True,
                   desired=HostOrder(want, renew=False))]


def _own(info: TokenInfo, host: str) -> tuple[str, ...]:
    return (info.accessor,) if is_host_token(info, host) else ()


# --- what the host token may mint (the hourly run) --------------------------------------------


def host_grants(users: Mapping[str, str], expected: Mapping[str, str], role: Mapping[str, Any] | None,
                policies: Mapping[str, str | None], host: str,
                denied: frozenset[str] = frozenset()) -> dict[str, str | None]:
    """For each user (-> their policy name): None when the host token may mint their token now, else why not
    (a line for people naming the fix).

    `expected`: each policy's text as the template renders it; `policies`: each as read (None: missing);
    `denied`: the policies the host token was refused reading (its host policy predates the person).
    """
    if role is None:
        why = f"host {host} is not enrolled (no token role); {ENROLL_FIX}"
        return {user: why for user in users}
    allowed = {str(name) for name in role.get("allowed_policies") or ()}
    grants: dict[str, str | None] = {}
    for user, policy in users.items():
        text = policies.get(policy)
        if policy in denied:
            grants[user] = f"host {host}'s token may not read policy {policy} yet; {VAULT_ONLY_FIX}"
        elif text is None:
            grants[user] = f"policy {policy} does not exist yet; {VAULT_ONLY_FIX}"
        elif text != expected.get(policy):
            grants[user] = f"policy {policy} differs from the template; {VAULT_ONLY_FIX}"
        elif policy not in allowed:
            grants[user] = f"host {host}'s token role does not allow {policy} yet; {VAULT_ONLY_FIX}"
        else:
            grants[user] = None
    return grants
