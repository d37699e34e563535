"""The exact policy text the tool must write for a user, spelled out (not rendered).

Tests compare a policy with this whole text, never with `in` or a header
check: an extra stanza, an added capability or a wider path must fail them.
Written out by hand on purpose, so a changed template fails the tests too.
"""

from __future__ import annotations


def expected_policy(user: str, kv_path: str, kv_mount: str = "secret") -> str:
    """templates/policy.hcl.j2 for `user` whose backup lives at `<kv_mount>/data/<kv_path>`."""
    return (
        f"# Managed by claude-auth for user {user}; edits are reverted by `claude-auth apply`.\n"
        "# The user's own Claude login backup: read, create, and update (check-and-set merge).\n"
        f'path "{kv_mount}/data/{kv_path}" {{\n'
        '  capabilities = ["create", "read", "update"]\n'
        "}\n"
        "\n"
        "# Its version metadata (for `claude-auth status`).\n"
        f'path "{kv_mount}/metadata/{kv_path}" {{\n'
        '  capabilities = ["read"]\n'
        "}\n"
        "\n"
        "# The scoped token has no default policy, so it needs these to check and renew itself.\n"
        'path "auth/token/lookup-self" {\n'
        '  capabilities = ["read"]\n'
        "}\n"
        "\n"
        'path "auth/token/renew-self" {\n'
        '  capabilities = ["update"]\n'
        "}\n"
        "\n"
        "# A token replaced by a rotation or a re-mint is revoked with its own hand (the hourly run holds no\n"
        "# admin token): the token can end itself and nothing else.\n"
        'path "auth/token/revoke-self" {\n'
        '  capabilities = ["update"]\n'
        "}\n"
    )
