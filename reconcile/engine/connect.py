"""Reaching Vault and deciding the run's mode: admin, or hourly (no admin token).

Modes. An admin token (a token from $VAULT_TOKEN, else ~/.vault-token, that
may write ACL policies under the prefix and create orphan tokens with other
policies: create/update on `sys/policies/acl/<prefix>...`, update and sudo on
`auth/token/create-orphan`, or root) enables everything; one
`sys/capabilities-self` request tells. A token that is present but rejected,
or valid but without those capabilities, ends the run (one line naming
VAULT_ADDR and what it lacks, exit 1, nothing changed): a wrong token must not
pass for a successful provisioning run. The hourly mode is only for a run
with CLAUDE_AUTH_NO_ADMIN=1 (the hourly timer sets it) or with no token at
all: tokens are checked with their own lookup-self, renewals and local work
are done, and each change that needs an admin is printed as a
`WARN <user>: needs an admin run: ...` line on stderr; apply exits 0 and plan
lists those changes (exit 2). Policies cannot be read without an admin token
and are then not checked.

Read-only `status` accepts any token (`allow_non_admin`). Failures raise
CommandFailed: the run stops before any change, and the command prints its one
line (naming VAULT_ADDR).
"""

from __future__ import annotations

import os

from reconcile.roster.values import Roster
from reconcile.vault.client import Vault
from reconcile.vault.values import Secret, VaultDenied, VaultError, resolve_address, resolve_token


NO_ADMIN_ENV = "CLAUDE_AUTH_NO_ADMIN"
CREATE_ORPHAN = "auth/token/create-orphan"


class CommandFailed(Exception):
    """Stops the run before any change; the message is one line for people."""


def admin_probe_paths(policy_prefix: str) -> list[str]:
    return [f"sys/policies/acl/{policy_prefix.lower()}claude-auth-probe", CREATE_ORPHAN]


def missing_admin_capabilities(capabilities: dict[str, tuple[str, ...]] | None, policy_prefix: str) -> list[str]:
    """What the token lacks to be an admin token (empty: it is one). None: capabilities-self was denied."""
    policy_path, mint_path = admin_probe_paths(policy_prefix)
    wanted_policy = f"create or update on sys/policies/acl/{policy_prefix.lower()}*"
    wanted_mint = f"update and sudo on {mint_path}"
    if capabilities is None:
        return [wanted_policy, wanted_mint]
    policy_caps, mint_caps = set(capabilities.get(policy_path, ())), set(capabilities.get(mint_path, ()))
    missing = []
    if not ("root" in policy_caps or {"create", "update"} & policy_caps):
        missing.append(wanted_policy)
    # Minting a token whose policy the caller does not hold needs sudo on the endpoint.
    if not ("root" in mint_caps or {"update", "sudo"} <= mint_caps):
        missing.append(wanted_mint)
    return missing


def is_admin(capabilities: dict[str, tuple[str, ...]], policy_prefix: str) -> bool:
    """May write the managed policies and mint orphan tokens carrying them."""
    return not missing_admin_capabilities(capabilities, policy_prefix)


def connect_vault(roster: Roster, *, allow_non_admin: bool = False) -> tuple[Vault, str | None]:
    """The client to observe and change Vault with, and why it holds no admin token (None: it does).

    Without a token (none found, or CLAUDE_AUTH_NO_ADMIN=1) the client holds
    none: the hourly mode. A token that Vault rejects, or (unless
    `allow_non_admin`, for the read-only `status`) one that is not an admin
    token, raises CommandFailed naming VAULT_ADDR.
    """
    try:
        address = resolve_address(roster.vault.address)
    except VaultError as exc:
        raise CommandFailed(str(exc)) from None
    if not address:
        raise CommandFailed("no Vault address: set VAULT_ADDR or vault.address in the roster")
    token: Secret | None = None
    why = f"{NO_ADMIN_ENV}=1"
    if os.environ.get(NO_ADMIN_ENV) != "1":
        token = resolve_token()
        why = "no Vault token (VAULT_TOKEN or ~/.vault-token)"
    try:
        if token is not None:
            admin_client = Vault(address, token)
            capabilities: dict[str, tuple[str, ...]] | None
            try:
                capabilities = admin_client.capabilities_self(admin_probe_paths(roster.vault.policy_prefix))
            except VaultDenied:
                capabilities = None
                if not _is_live_token(admin_client):
                    raise CommandFailed(f"the Vault token (VAULT_TOKEN or ~/.vault-token) was rejected by "
                                        f"VAULT_ADDR={address}: it is invalid, expired or revoked") from None
            missing = missing_admin_capabilities(capabilities, roster.vault.policy_prefix)
            if not missing:
                return admin_client, None
            if not allow_non_admin:
                denied = " (it may not even ask sys/capabilities-self)" if capabilities is None else ""
                raise CommandFailed(
                    f"the Vault token (VAULT_TOKEN or ~/.vault-token) is not an admin token at "
                    f"VAULT_ADDR={address}: it lacks {' and '.join(missing)}{denied}; use an admin token, "
                    f"or set {NO_ADMIN_ENV}=1 for a run without one")
            why = "the Vault token is not an admin token"
        tokenless = Vault(address, None)
        tokenless.is_reachable()
        return tokenless, why
    except VaultError as exc:
        raise CommandFailed(vault_failure(exc, address)) from None


def _is_live_token(client: Vault) -> bool:
    """After a 403 on capabilities-self: a live token without that path (no default policy, such as a
    user's scoped token) can still look itself up; a rejected one cannot."""
    try:
        client.lookup_self()
    except VaultDenied:
        return False
    return True


def vault_failure(exc: VaultError, address: str) -> str:
    text = str(exc)
    return text if "VAULT_ADDR" in text else f"Vault at VAULT_ADDR={address}: {text}"
