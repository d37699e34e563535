"""The settings of one `claude-auth sync` run: who, where, and which Vault.

They come from the environment the systemd unit sets (defaults equal the
roster's defaults) and from `--user`; the files live under $HOME. Nothing here
reads a secret: the Vault token is read by the flow from the token file only
(never from $VAULT_TOKEN).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from reconcile.common.identity import shown_display_name
from reconcile.vault.values import client_setting
from reconcile.common.loginmode import ENV_VAR as LOGIN_ENV_VAR
from reconcile.common.loginmode import Login

USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
"""POSIX account names, as the roster accepts them."""

DEFAULT_KV_MOUNT = "secret"
DEFAULT_PATH_PREFIX = "workstation/claude-users"
DEFAULT_POLICY_PREFIX = "workstation-claude-"
DEFAULT_MODEL = "haiku"
DEFAULT_CLAUDE_TIMEOUT = 120.0
DEFAULT_REFRESH_LOCK_WAIT = 15.0
"""Seconds to wait for Claude's refresh lock (claudelock.DEFAULT_WAIT_SECONDS, repeated here so this
module does not import the lock code)."""


class SettingsError(Exception):
    """A setting is missing or malformed; the message names it (never a secret)."""


@dataclass(frozen=True)
class SyncSettings:
    user: str
    home: Path
    vault_addr: str
    kv_mount: str = DEFAULT_KV_MOUNT
    path_prefix: str = DEFAULT_PATH_PREFIX
    policy_prefix: str = DEFAULT_POLICY_PREFIX
    model: str = DEFAULT_MODEL
    claude_timeout: float = DEFAULT_CLAUDE_TIMEOUT
    refresh_lock_wait: float = DEFAULT_REFRESH_LOCK_WAIT
    login: Login | None = None
    """The roster's claude_login, from the drop-in's CLAUDE_AUTH_LOGIN; None when unset (a run by hand)."""

    @property
    def kv_path(self) -> str:
        return f"{self.path_prefix.strip('/')}/{self.user}"

    @property
    def kv_display(self) -> str:
        """The KV v2 data path as people (and the policy) name it."""
        return f"{self.kv_mount.strip('/')}/data/{self.kv_path}"

    @property
    def policy_name(self) -> str:
        return f"{self.policy_prefix}{self.user}"

    @property
    def expected_display_name(self) -> str:
        return shown_display_name(self.user)

    @property
    def token_file(self) -> Path:
        return self.home / ".config" / "claude-auth-sync" / "vault-token"

    @property
    def state_dir(self) -> Path:
        return self.home / ".local" / "state" / "claude-auth-sync"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "sync.log"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "lock"

    @property
    def credentials_file(self) -> Path:
        return self.home / ".claude" / ".credentials.json"

    def shown(self, path: Path) -> str:
        """`path` as people name it: `~/.claude/.credentials.json` for a path below the home folder."""
        try:
            return "~/" + str(path.relative_to(self.home))
        except ValueError:
            return str(path)


def current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def check_user(user: str) -> str:
    if not USER_NAME.match(user):
        raise SettingsError(f"invalid user name {user!r} (expected {USER_NAME.pattern})")
    return user


def home_folder(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME")
    if home:
        return Path(home)
    import pwd

    return Path(pwd.getpwuid(os.getuid()).pw_dir)


def _text(environ: Mapping[str, str], name: str, default: str) -> str:
    value = environ.get(name, "").strip()
    return value or default


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number of seconds") from None
    if not 0 < value < 86400:
        raise SettingsError(f"{name}={raw!r} must be between 0 and 86400 seconds")
    return value


def login_from(environ: Mapping[str, str]) -> Login | None:
    raw = environ.get(LOGIN_ENV_VAR, "").strip()
    if not raw:
        return None
    try:
        return Login(raw)
    except ValueError:
        choices = " or ".join(mode.value for mode in Login)
        raise SettingsError(f"{LOGIN_ENV_VAR}={raw!r} must be {choices} (the roster's claude_login)") from None


def load(user: str, environ: Mapping[str, str]) -> SyncSettings:
    """The settings for `user` (already checked by check_user) from `environ`."""
    vault_addr = (client_setting("ADDR", environ) or "").strip()
    if not vault_addr:
        raise SettingsError("VAULT_ADDR is not set (the sync service must set it)")
    kv_mount = _text(environ, "CLAUDE_AUTH_KV_MOUNT", DEFAULT_KV_MOUNT).strip("/")
    path_prefix = _text(environ, "CLAUDE_AUTH_PATH_PREFIX", DEFAULT_PATH_PREFIX).strip("/")
    if not kv_mount or not path_prefix:
        raise SettingsError("CLAUDE_AUTH_KV_MOUNT and CLAUDE_AUTH_PATH_PREFIX must not be only slashes")
    return SyncSettings(
        user=user,
        home=home_folder(environ),
        vault_addr=vault_addr,
        kv_mount=kv_mount,
        path_prefix=path_prefix,
        policy_prefix=_text(environ, "CLAUDE_AUTH_POLICY_PREFIX", DEFAULT_POLICY_PREFIX),
        model=_text(environ, "CLAUDE_AUTH_MODEL", DEFAULT_MODEL),
        claude_timeout=_seconds(environ, "CLAUDE_AUTH_CLAUDE_TIMEOUT", DEFAULT_CLAUDE_TIMEOUT),
        refresh_lock_wait=_seconds(environ, "CLAUDE_AUTH_REFRESH_LOCK_WAIT", DEFAULT_REFRESH_LOCK_WAIT),
        login=login_from(environ),
    )
