"""`claude-auth whoami`: what the person needs to know about their own login, gathered as them.

No root, no roster: the settings are those of the person's sync unit
(`systemctl show claude-auth-sync@<user>.service -p Environment`, which merges
the template and the person's drop-in; both are world-readable), overlaid by
the caller's own VAULT_ADDR and CLAUDE_AUTH_* variables. Everything local comes
from the person's own files, read bounded (safefile): the login
(`~/.claude/.credentials.json`), the last result in `sync.log`, the notice
files (reconcile.sync.notice). Vault is asked only for the backup's version and
time and the token's TTL, with the token file, under the client's usual retry
policy; an unreachable Vault fills those two with why, and nothing else waits.
Nothing secret is gathered: no token value leaves this module.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from reconcile.common.loginmode import Login
from reconcile.sync import credentials, notice
from reconcile.sync import settings as config
from reconcile.sync.credentials import CredentialsError
from reconcile.sync.safefile import TOKEN_FILE_LIMIT, UnsafeFile, read_capped
from reconcile.sync.settings import SettingsError
from reconcile.vault.values import client_setting

LOG_TAIL = 64 * 1024
"""The end of sync.log read for the last result (lines are short; a run writes two or three)."""
NOTICE_LIMIT = 4096
RESULTS = ("OK", "RECOVERED", "SKIP", "FAIL")
SYSTEMCTL_TIMEOUT = 5.0
SETTING_VARIABLES = ("VAULT_ADDR", "VAULT_CACERT", "CLAUDE_AUTH_KV_MOUNT", "CLAUDE_AUTH_PATH_PREFIX",
                     "CLAUDE_AUTH_POLICY_PREFIX", "CLAUDE_AUTH_LOGIN")


@dataclass
class Whoami:
    user: str
    login_mode: str | None = None
    """oauth | setup-token (the roster's, via the unit), or what the file holds when the unit says nothing."""
    login: str = "none"
    """ok | none | broken: <why> | unreadable: <why>"""
    access_token_expires_at: float | None = None
    reauth_deadline: float | None = None
    """When the person must log in again at the latest (refreshTokenExpiresAt, a setup token's expiry)."""
    last_sync_result: str | None = None
    last_sync_at: str | None = None
    last_sync_reason: str | None = None
    needs_you: str | None = None
    backup_version: int | None = None
    backup_at: str | None = None
    vault_token_ttl_seconds: int | None = None
    timer: str = "unknown"
    backup_path_unit: str = "unknown"
    notes: list[str] = field(default_factory=list)
    next_step: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def unit_environment(user: str, run: Any = subprocess.run) -> dict[str, str]:
    """The Environment= of the person's sync unit as systemd merged it ({} without systemd)."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return {}
    try:
        done = run([systemctl, "show", f"claude-auth-sync@{user}.service", "-p", "Environment", "--value"],
                   capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT, env=_plain_env())
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found: dict[str, str] = {}
    for word in done.stdout.split():
        name, sep, value = word.partition("=")
        if sep and name in SETTING_VARIABLES:
            found[name] = value
    return found


def unit_states(user: str, run: Any = subprocess.run) -> tuple[str, str]:
    """(timer, path unit): enabled | disabled | not installed | unknown."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return "unknown", "unknown"
    names = [f"claude-auth-sync@{user}.timer", f"claude-auth-backup@{user}.path"]
    states = []
    for name in names:
        try:
            done = run([systemctl, "is-enabled", name], capture_output=True, text=True,
                       timeout=SYSTEMCTL_TIMEOUT, env=_plain_env())
        except (OSError, subprocess.TimeoutExpired):
            states.append("unknown")
            continue
        word = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
        states.append("enabled" if word == "enabled" else "disabled" if word in ("disabled", "linked") else
                      "not installed" if word == "" or "No such file" in done.stderr else word[:40])
    return states[0], states[1]


def _plain_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "SYSTEMD_PAGER": ""}


def last_result(text: str) -> tuple[str, str, str] | None:
    """(result, ISO time, reason) of the last status line in sync.log text, or None."""
    for line in reversed(text.splitlines()):
        stamp, _, rest = line.partition(" ")
        result, _, reason = rest.partition(" ")
        if result in RESULTS and stamp.endswith("Z"):
            return result, stamp, (reason.partition(": ")[2] or reason)[:500]
    return None


def _read_text(path: Path, limit: int, shown: str) -> str | None:
    found = read_capped(path, limit, shown)
    return found.data.decode("utf-8", errors="replace") if found is not None else None


def _tail(path: Path, limit: int) -> str | None:
    """The last `limit` bytes of a regular file (never through a link), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        os.lseek(fd, max(0, info.st_size - limit), os.SEEK_SET)
        return os.read(fd, limit).decode("utf-8", errors="replace")
    finally:
        os.close(fd)


def gather(user: str, environ: Mapping[str, str], *, systemd: bool = True,
           vault_factory: Any = None) -> Whoami:
    """Everything whoami shows, for `user`, as that user."""
    unit_env = unit_environment(user) if systemd else {}
    env = {**environ, **unit_env, **{k: v for k, v in environ.items() if k in SETTING_VARIABLES and v}}
    me = Whoami(user=user)
    me.timer, me.backup_path_unit = unit_states(user) if systemd else ("unknown", "unknown")
    home = config.home_folder(env)
    settings = config.SyncSettings(user=user, home=home, vault_addr=client_setting("ADDR", env) or "")
    try:
        login_mode = config.login_from(env)
    except SettingsError as exc:
        me.notes.append(str(exc))
        login_mode = None
    _local(me, settings, login_mode)
    _history(me, settings)
    _remote(me, env, settings, vault_factory)
    me.next_step = next_step(me, settings.token_file.exists())
    return me


def _local(me: Whoami, settings: config.SyncSettings, login_mode: Login | None) -> None:
    try:
        local = credentials.read(settings.credentials_file, "~/.claude/.credentials.json")
    except (UnsafeFile, CredentialsError) as exc:
        me.login = f"unreadable: {exc}"
        me.login_mode = login_mode.value if login_mode else None
        return
    oauth = local.oauth
    setup = oauth is not None and credentials.is_setup_token_object(oauth)
    me.login_mode = login_mode.value if login_mode else (Login.SETUP_TOKEN.value if setup else Login.OAUTH.value)
    if oauth is None:
        me.login = "none"
        return
    broken = local.broken()
    me.login = f"broken: {broken}" if broken else "ok"
    expires = oauth.get("expiresAt")
    if isinstance(expires, (int, float)) and not isinstance(expires, bool) and 0 < expires < 1e14:
        me.access_token_expires_at = expires / 1000
    deadline = notice.deadline_ms(oauth)
    me.reauth_deadline = deadline / 1000 if deadline else None


def _history(me: Whoami, settings: config.SyncSettings) -> None:
    text = _tail(settings.log_file, LOG_TAIL)
    found = last_result(text) if text else None
    if found:
        me.last_sync_result, me.last_sync_at, me.last_sync_reason = found
    else:
        me.notes.append("no sync has run yet (no result in ~/.local/state/claude-auth-sync/sync.log)")
    try:
        needs = _read_text(settings.state_dir / notice.NEEDS_YOU, NOTICE_LIMIT, "needs-you")
    except UnsafeFile:
        needs = None
    if needs:
        me.needs_you = "".join(ch for ch in needs.splitlines()[0] if ch.isprintable())[:400]


def _remote(me: Whoami, env: Mapping[str, str], settings: config.SyncSettings, vault_factory: Any) -> None:
    if not client_setting("ADDR", env):
        me.notes.append("Vault: no VAULT_ADDR (neither the sync unit nor the environment sets one)")
        return
    try:
        full = config.load(me.user, env)
        found = read_capped(full.token_file, TOKEN_FILE_LIMIT, full.shown(full.token_file))
    except (SettingsError, UnsafeFile) as exc:
        me.notes.append(f"Vault: {exc}")
        return
    if found is None:
        me.notes.append(f"Vault: no token file at {full.shown(full.token_file)}")
        return
    from reconcile.vault.client import Vault
    from reconcile.vault.values import Secret, VaultError

    token = Secret(found.data.decode("utf-8", errors="replace").strip())
    try:
        vault = (vault_factory or Vault)(full.vault_addr, token)
        me.vault_token_ttl_seconds = vault.lookup_self().ttl_seconds
        current = vault.kv_read_raw(full.kv_mount, full.kv_path)
    except VaultError as exc:
        me.notes.append(f"Vault: {exc}")
        return
    if current is None:
        me.notes.append(f"backup: none yet at {full.kv_display}")
        return
    me.backup_version = int(current.version)
    stamp = current.fields.get("backed_up_at")
    try:
        value = json.loads(stamp) if stamp is not None and len(stamp) < 64 else None
    except ValueError:
        value = None
    me.backup_at = value if isinstance(value, str) and len(value) <= 40 else None


def next_step(me: Whoami, has_token_file: bool) -> str | None:
    """The one thing to do now, as an exact command, or None when all is well."""
    if not has_token_file:
        return "ask an administrator to run: sudo claude-auth apply"
    if me.needs_you:
        return me.needs_you.partition("Run: ")[2].partition("   (")[0] or me.needs_you
    sso = notice.SETUP_TOKEN_COMMAND if me.login_mode == Login.SETUP_TOKEN.value else notice.SSO_COMMAND
    if me.login == "none" and me.login_mode != Login.SETUP_TOKEN.value:
        return notice.SSO_COMMAND
    if me.reauth_deadline is not None and me.reauth_deadline - time.time() < notice.REAUTH_NOTICE_DAYS * 86400:
        return sso
    if me.timer == "disabled":
        return "ask an administrator to run: sudo claude-auth apply (your sync timer is off)"
    return None
