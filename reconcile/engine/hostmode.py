"""This host's identity in a run: its host token, observed, and the second look of the hourly run.

`observe_host_token` reads `<root>/etc/claude-auth/host-token` (engine.hostfile)
and looks the token up: with the admin token (admin runs), or with itself (the
hourly run, which then mints with it: `host_client`). `host_identity` observes
the hosts to plan: in admin runs every enrolled host's role and policy and this
host's token; in the hourly run with a host token only that token. `grants`
is the hourly run's second look, only at the people it is about to mint for
(their policies and its own role, read with the host token: a no-op run asks
nothing more).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from reconcile.engine.hostfile import HostTokenFileError, read_host_token
from reconcile.roster.values import Roster
from reconcile.vault.client import Vault
from reconcile.vault.desired import DesiredVault
from reconcile.vault.hosts import (HOST_NAME, DesiredHost, HostTokenState, ObservedHostToken, ObservedHosts,
                                   desired_host, enrolled_hosts, host_grants, host_of_policy, role_name)
from reconcile.vault.values import VaultDenied


@dataclass(frozen=True)
class HostIdentity:
    desired: Mapping[str, DesiredHost]
    observed: ObservedHosts


def observe_host_token(vault: Vault, root: Path, *, admin: bool) -> tuple[ObservedHostToken, Vault | None]:
    """This host's host token, and (without an admin token) a client holding it when it works."""
    try:
        secret = read_host_token(root)
    except HostTokenFileError as exc:
        return ObservedHostToken(HostTokenState.UNREADABLE, detail=str(exc)), None
    if secret is None:
        return ObservedHostToken(HostTokenState.NO_FILE), None
    if admin:
        info = vault.lookup_token(secret)
        client = None
    else:
        client = vault.with_token(secret)
        try:
            info = client.lookup_self()
        except VaultDenied:
            info, client = None, None
    if info is None:
        return ObservedHostToken(HostTokenState.DEAD, token=secret), None
    return ObservedHostToken(HostTokenState.VALID, info=info, token=secret), client


def host_identity(roster: Roster, vault: Vault, host: str, token: ObservedHostToken | None,
                  policies: Mapping[str, str] | None) -> HostIdentity | None:
    """What to plan of host identities. `policies`: the admin's policy listing (None: the hourly run,
    which plans only this host's token); `host`: this host ("" for `--vault-only`)."""
    prefix = roster.vault.policy_prefix.lower()
    if policies is None:
        if token is None or token.state is HostTokenState.NO_FILE or not HOST_NAME.fullmatch(host):
            return None
        return HostIdentity({host: desired_host(roster, host)}, ObservedHosts(None, {}, token))
    names = set(enrolled_hosts(policies, prefix))
    if host and HOST_NAME.fullmatch(host):
        names.add(host)
    desired = {name: desired_host(roster, name) for name in sorted(names)}
    roles = {want.role: vault.read_role(want.role) for want in desired.values()}
    host_policies = {name: text for name, text in policies.items() if host_of_policy(name, text, prefix)}
    return HostIdentity(desired, ObservedHosts(MappingProxyType(host_policies), MappingProxyType(roles), token))


def grants(host_client: Vault, roster: Roster, desired: DesiredVault, host: str,
           users: Iterable[str]) -> dict[str, str | None]:
    """For each person the hourly run would mint for: None when its host token may, else why not."""
    wanted = {user: desired.tokens[user].policy for user in users if user in desired.tokens}
    if not wanted:
        return {}
    role: Mapping[str, Any] | None
    try:
        role = host_client.read_role(role_name(roster.vault.policy_prefix.lower(), host))
    except VaultDenied:
        role = None
    names = sorted(set(wanted.values()))
    # Pipelined first (a hiring batch is one policy read each); what that did not answer plainly
    # (a refusal, no such policy, a dropped connection) is read the ordinary way.
    texts: dict[str, str | None] = {name: text for name, text in zip(names, host_client.read_policies_pipelined(names))
                                    if text is not None}
    denied: set[str] = set()
    for policy in names:
        if policy in texts:
            continue
        try:
            texts[policy] = host_client.read_policy(policy)
        except VaultDenied:  # the host policy lets it read only the policies of its own people
            denied.add(policy)
    expected = {name: want.text for name, want in desired.policies.items()}
    return host_grants(wanted, expected, role, texts, host, frozenset(denied))
