"""`claude-auth retire-host HOST`: revoke a host's host tokens, delete its token role and host policy.

Admin only (reconcile.engine.connect). Host tokens carry no person's name, so
they are found the one way Vault allows: every accessor listed and looked up
(one request per token in Vault, as `apply --prune` pays), keeping those whose
metadata says this tool minted them as HOST's host token. The role goes first,
so a host token still being looked for can no longer mint. Each step prints
one line; running it again finds nothing left to do.
"""

from __future__ import annotations

import sys

from reconcile.commands import render
from reconcile.common.exitcodes import Exit
from reconcile.engine.connect import CommandFailed, connect_vault, vault_failure
from reconcile.roster.issues import RosterInvalid
from reconcile.roster.loader import load_roster
from reconcile.vault.hosts import HOST_NAME, is_host_token, role_name
from reconcile.vault.observe import scan_tokens
from reconcile.vault.values import TokenInfo, VaultError


def run(host: str, roster_path: str) -> int:
    if not HOST_NAME.fullmatch(host):
        print(f"ERROR: {host!r} is not a host name (letters, digits, '.', '_' and '-')", file=sys.stderr)
        return Exit.USAGE
    try:
        roster = load_roster(roster_path)
        vault, no_admin_reason = connect_vault(roster)
        if no_admin_reason is not None:
            raise CommandFailed(f"retire-host needs an admin token ({no_admin_reason})")
    except RosterInvalid as exc:
        for issue in exc.issues:
            print(issue.format(), file=sys.stderr)
        return Exit.ERROR
    except CommandFailed as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return Exit.ERROR
    name = role_name(roster.vault.policy_prefix.lower(), host)
    try:
        had_role = vault.read_role(name) is not None
        vault.delete_role(name)
        print(f"- host-role {name}: {'deleted' if had_role else 'none left'}")
        revoked = 0
        # Only this roster's (its policy prefix): another roster on the same Vault may name a host alike.
        def ours(info: TokenInfo) -> bool:
            return is_host_token(info, host) and info.policies == (name,)

        for accessor, info in scan_tokens(vault, vault.list_accessors(), decides=ours):
            if ours(info):
                vault.revoke_accessor(accessor)
                revoked += 1
                print(f"- host-token {accessor[:8]}… (host {host}): revoked")
        had_policy = vault.read_policy(name) is not None
        vault.delete_policy(name)
        print(f"- policy {name}: {'deleted' if had_policy else 'none left'}")
    except VaultError as exc:
        print(render.error_line(host, vault_failure(exc, vault.address)), file=sys.stderr)
        return Exit.ERROR
    print(f"Retired host {host}: {revoked} host token(s) revoked.")
    return Exit.OK
