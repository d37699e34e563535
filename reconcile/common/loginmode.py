"""How a person's Claude login is kept: the roster's `claude_login`, shared by every side.

- `oauth` (the default): Claude's own refreshable OAuth login, checked, backed
  up to Vault and restored by `claude-auth sync`.
- `setup-token`: a long-lived token from `claude setup-token` (about a year,
  scope `user:inference`, no refresh token, so concurrent sessions cannot race
  a refresh), stored by `claude-auth setup-token` and installed by the sync.

The sync runs as the person and never reads the roster: `apply` renders the
mode into the person's unit drop-in as the environment variable ENV_VAR
(see reconcile.local.desired.render_drop_in). Stdlib only, so the sync can use it.
"""

from __future__ import annotations

from enum import Enum

ENV_VAR = "CLAUDE_AUTH_LOGIN"
"""Set by the person's sync drop-in from the roster's claude_login."""


class Login(str, Enum):
    OAUTH = "oauth"
    SETUP_TOKEN = "setup-token"


DEFAULT = Login.OAUTH
