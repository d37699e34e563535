"""How a person's scoped token is named: shared by the reconciler and the sync.

Standard library only, so `claude-auth sync` can import it without jinja2.
"""

from __future__ import annotations

import re

DISPLAY_PREFIX = "devvm-claude-auth-"
_DISPLAY_UNSAFE = re.compile(r"[^a-zA-Z0-9-]")


def token_display_name(user: str) -> str:
    """The display name the tool asks Vault for (`devvm-claude-auth-alice`)."""
    return f"{DISPLAY_PREFIX}{user}"


def vault_display_name(requested: str) -> str:
    """What Vault's lookup shows for a requested display name.

    Vault stores `token-` + the name with every character outside [a-zA-Z0-9-]
    made `-`, then drops one trailing `-` (seen on OpenBao 2.7.2: `a_b` shows as
    `token-devvm-claude-auth-a-b`). The exact policy list still tells `a_b` and `a-b` apart.
    """
    shown = _DISPLAY_UNSAFE.sub("-", f"token-{requested}")
    return shown[:-1] if shown.endswith("-") else shown


def shown_display_name(user: str) -> str:
    return vault_display_name(token_display_name(user))
