"""What the roster asks for on this machine, pure: folders, token-file modes, unit files, timers.

`desired_local(roster, exec_path, roster_path, homes)`: folders and the token
file's mode for every user with `claude_auth`, the six unit files rendered from
templates/ (with each person's three drop-ins), and per roster user one sync timer
and one backup-on-change path unit, enabled iff `user.wants_timer`, plus the
hourly reconcile timer, always enabled. The
unit names and systemd quoting live here too.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from reconcile.local.accounts import Account
from reconcile.roster.durations import format_duration
from reconcile.common.loginmode import DEFAULT as DEFAULT_LOGIN
from reconcile.common.loginmode import ENV_VAR as LOGIN_ENV_VAR
from reconcile.local.homefs import CONFIG_DIR, STATE_DIR, TOKEN_FILE
from reconcile.common.model import UserProblem
from reconcile.roster.values import Roster
from reconcile.common.templating import render


SYNC_SERVICE = "claude-auth-sync@.service"
SYNC_TIMER = "claude-auth-sync@.timer"
BACKUP_SERVICE = "claude-auth-backup@.service"
BACKUP_PATH = "claude-auth-backup@.path"
RECONCILE_SERVICE = "claude-auth-reconcile.service"
RECONCILE_TIMER = "claude-auth-reconcile.timer"
UNIT_NAMES = (SYNC_SERVICE, SYNC_TIMER, BACKUP_SERVICE, BACKUP_PATH, RECONCILE_SERVICE, RECONCILE_TIMER)
TRIGGER_TEMPLATES = (SYNC_TIMER, BACKUP_PATH, RECONCILE_TIMER)
"""The units `DesiredTimer`s are instances of (or are): what is enabled and started per person."""

UNIT_DIR = "etc/systemd/system"
"""Where unit files go, relative to --root."""

DIRECTORY_MODE = 0o700
TOKEN_FILE_MODE = 0o600
SYNC_BOOT_DELAY = "5min"
RECONCILE_BOOT_DELAY = "10min"
RECONCILE_INTERVAL = "1h"
RECONCILE_RANDOMIZED_DELAY = "5min"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYNC_DROP_IN_TEMPLATE = "claude-auth-sync-home.conf.j2"
BACKUP_PATH_DROP_IN_TEMPLATE = "claude-auth-backup-home.conf.j2"
CREDENTIALS_FILE = ".claude/.credentials.json"
SYNC_WRITABLE = (".claude", ".claude.json", CONFIG_DIR, STATE_DIR)
"""Below the person's home: what the sync (and claude) may write; all else is read-only."""

_SYNC_TIMER_INSTANCE = re.compile(
    r"^claude-auth-(?:sync@(?P<user>[^/]+)\.timer|backup@(?P<backup_user>[^/]+)\.path)$")
"""A person's trigger: their sync timer or their backup-on-change path unit (use `instance_user`)."""
_SYNC_DROP_IN = re.compile(r"^claude-auth-(?:sync@(?P<user>[^/]+)\.service|backup@(?P<backup_user>[^/]+)"
                           r"\.(?:service|path))\.d/home\.conf$")
"""A person's drop-in: for their sync service, backup service or backup path unit (use `instance_user`)."""
DROP_IN_GLOBS = ("claude-auth-sync@*.service.d/home.conf", "claude-auth-backup@*.service.d/home.conf",
                 "claude-auth-backup@*.path.d/home.conf")
_ACTIVE = frozenset({"active", "activating", "reloading"})


def sync_timer(user: str) -> str:
    return f"claude-auth-sync@{user}.timer"


def sync_drop_in(user: str) -> str:
    """The per-person drop-in naming that person's home (unit folder relative)."""
    return f"claude-auth-sync@{user}.service.d/home.conf"


def backup_path(user: str) -> str:
    return f"claude-auth-backup@{user}.path"


def backup_drop_ins(user: str) -> tuple[str, str]:
    """The person's drop-ins for their backup service (as the sync's) and path unit (the file watched)."""
    return f"claude-auth-backup@{user}.service.d/home.conf", f"claude-auth-backup@{user}.path.d/home.conf"


def instance_user(match: re.Match[str] | None) -> str | None:
    """The person a _SYNC_TIMER_INSTANCE or _SYNC_DROP_IN match names."""
    if match is None:
        return None
    return match.group("user") or match.group("backup_user")


def wants_folder(unit: str) -> str:
    """Where `systemctl enable` links the unit (its [Install] WantedBy=), below the unit folder."""
    return "paths.target.wants" if unit.endswith(".path") else "timers.target.wants"


# --- desired --------------------------------------------------------------


@dataclass(frozen=True)
class DesiredDirectory:
    user: str
    rel_path: str
    mode: int = DIRECTORY_MODE


@dataclass(frozen=True)
class DesiredTokenFile:
    user: str
    rel_path: str = TOKEN_FILE
    mode: int = TOKEN_FILE_MODE


@dataclass(frozen=True)
class DesiredUnit:
    name: str
    """The unit file name, e.g. claude-auth-sync@.service, relative to the unit folder."""
    text: str
    user: str | None = None
    """Set for a person's own drop-in."""


@dataclass(frozen=True)
class DesiredTimer:
    unit: str
    enabled: bool
    user: str | None = None
    """None for the reconcile timer."""
    why: str = ""
    """Why it is disabled, for people: "parked", "claude_auth false", "not in the roster"."""


@dataclass(frozen=True)
class DesiredLocal:
    home_users: tuple[str, ...]
    """Users whose home folder holds managed things (those with claude_auth)."""
    directories: tuple[DesiredDirectory, ...]
    token_files: tuple[DesiredTokenFile, ...]
    units: tuple[DesiredUnit, ...]
    timers: tuple[DesiredTimer, ...]
    exec_path: str | None = None
    """The program the units' ExecStart= runs; each person with a sync timer must be able to run it.
    None: not checked."""


def systemd_exec_word(word: str) -> str:
    """One ExecStart= argument, quoted for systemd (specifiers and $ escaped)."""
    if not word or any(ch in word for ch in "\n\r\0"):
        raise ValueError(f"cannot put {word!r} on a systemd command line")
    escaped = word.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%$+=:,./-]+", escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_path_word(path: str) -> str:
    """One entry of a path list such as ReadWritePaths= (specifiers escaped; quoted when it has blanks).

    Unlike ExecStart=, these lists do not expand $VARIABLES, so `$` stays as it is.
    """
    if not path or any(ch in path for ch in "\n\r\0"):
        raise ValueError(f"cannot put {path!r} in a systemd path list")
    escaped = path.replace("%", "%%")
    if re.fullmatch(r"[A-Za-z0-9_@%$+=:,./-]+", escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_environment(name: str, value: str, *, specifiers: bool = False) -> str:
    """One Environment= value, `"NAME=value"` quoted for systemd.

    `%` is escaped unless `specifiers` (then `%h` and friends are meant).
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or any(ch in value for ch in "\n\r\0"):
        raise ValueError(f"cannot put {name}={value!r} into a systemd Environment= line")
    if not specifiers:
        value = value.replace("%", "%%")
    text = f"{name}={value}"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def default_exec_path() -> str:
    """The `claude-auth` script of the running installation (next to this Python), else the one on PATH."""
    beside = Path(sys.executable).parent / "claude-auth"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("claude-auth")
    return os.path.abspath(found) if found else str(beside)


def render_units(roster: Roster, exec_path: str, roster_path: str) -> tuple[DesiredUnit, ...]:
    """The six unit files, rendered from templates/ (pure)."""
    if not os.path.isabs(exec_path):
        raise ValueError(f"the claude-auth executable must be an absolute path, not {exec_path!r}")
    exec_word = systemd_exec_word(exec_path)
    has_vault_address = roster.vault.address is not None
    environment = []
    if roster.vault.address is not None:
        environment.append(systemd_environment("VAULT_ADDR", roster.vault.address))
    environment += [
        systemd_environment("CLAUDE_AUTH_KV_MOUNT", roster.vault.kv_mount),
        systemd_environment("CLAUDE_AUTH_PATH_PREFIX", roster.vault.path_prefix),
        systemd_environment("CLAUDE_AUTH_POLICY_PREFIX", roster.vault.policy_prefix),
        systemd_environment("CLAUDE_AUTH_MODEL", roster.sync.model),
        # The home folder is read-only in the sandbox: an auto-update could not
        # be written anyway, so claude is told not to try.
        systemd_environment("DISABLE_AUTOUPDATER", "1"),
    ]
    textfile = roster.status.prometheus_textfile
    read_write_paths = [systemd_path_word(os.path.dirname(textfile))] if textfile else []
    return (
        DesiredUnit(SYNC_SERVICE, render(
            f"{SYNC_SERVICE}.j2", exec_path=exec_word, environment=environment,
            has_vault_address=has_vault_address)),
        DesiredUnit(SYNC_TIMER, render(
            f"{SYNC_TIMER}.j2", interval=format_duration(roster.sync.interval_seconds),
            randomized_delay=format_duration(roster.sync.randomized_delay_seconds),
            boot_delay=SYNC_BOOT_DELAY)),
        DesiredUnit(BACKUP_SERVICE, render(f"{BACKUP_SERVICE}.j2", exec_path=exec_word, environment=environment)),
        DesiredUnit(BACKUP_PATH, render(f"{BACKUP_PATH}.j2")),
        DesiredUnit(RECONCILE_SERVICE, render(
            f"{RECONCILE_SERVICE}.j2", exec_path=exec_word,
            roster_path=systemd_exec_word(os.path.abspath(roster_path)),
            has_vault_address=has_vault_address, read_write_paths=read_write_paths)),
        DesiredUnit(RECONCILE_TIMER, render(
            f"{RECONCILE_TIMER}.j2", interval=RECONCILE_INTERVAL,
            randomized_delay=RECONCILE_RANDOMIZED_DELAY, boot_delay=RECONCILE_BOOT_DELAY)),
    )


def homes_of(accounts: Mapping[str, Account | UserProblem]) -> dict[str, str]:
    """Each found person's home as the user database names it (for their drop-in)."""
    return {name: found.system_home for name, found in accounts.items() if isinstance(found, Account)}


def render_drop_in(user: str, home: str, login: str = DEFAULT_LOGIN.value) -> DesiredUnit:
    """The person's drop-in for claude-auth-sync@<user>.service.

    The template unit cannot name the person's home: in a system unit, `%h` is
    root's home whatever User= says (systemd.unit(5)). So the paths that depend
    on it, the writable ones and ~/.local/bin on PATH, come from the user database.
    It also carries the roster's `claude_login` (CLAUDE_AUTH_LOGIN): the sync runs
    as the person and never reads the roster, so this is how a roster change of
    the mode, either way, reaches the next sync.
    """
    home = home.rstrip("/") or "/"
    writable = " ".join(systemd_path_word(f"-{home}/{rel}") for rel in SYNC_WRITABLE)
    text = render(SYNC_DROP_IN_TEMPLATE, user=user, read_write_paths=writable,
                  path_environment=systemd_environment("PATH", f"{home}/.local/bin:{SYSTEM_PATH}"),
                  login_environment=systemd_environment(LOGIN_ENV_VAR, login))
    return DesiredUnit(sync_drop_in(user), text, user)


def render_backup_drop_ins(user: str, sync_drop_in_text: str, home: str) -> tuple[DesiredUnit, DesiredUnit]:
    """The person's backup-on-change drop-ins: the service's is the sync service's own text (the
    same writable paths, PATH and login mode), the path unit's names the file it watches."""
    home = home.rstrip("/") or "/"
    watched = f"{home}/{CREDENTIALS_FILE}"
    if any(ch in watched for ch in "\n\r\0"):
        raise ValueError(f"cannot watch {watched!r} from a systemd path unit")
    service_name, path_name = backup_drop_ins(user)
    path_text = render(BACKUP_PATH_DROP_IN_TEMPLATE, user=user, credentials_path=watched.replace("%", "%%"))
    return DesiredUnit(service_name, sync_drop_in_text, user), DesiredUnit(path_name, path_text, user)


def desired_local(roster: Roster, exec_path: str, roster_path: str,
                  homes: Mapping[str, str] | None = None) -> DesiredLocal:
    """What the roster asks for on this machine (pure, apart from rendering templates).

    `exec_path` is the absolute path of the `claude-auth` executable (see
    default_exec_path); `roster_path` is the roster the hourly reconcile
    reads (made absolute against the current folder if relative); `homes`
    maps each person with an account to their home as the user database
    names it (their sync drop-in needs it; a person without one gets none).
    """
    home_users = tuple(name for name, user in roster.users.items() if user.claude_auth)
    directories = tuple(
        DesiredDirectory(name, rel_path) for name in home_users for rel_path in (CONFIG_DIR, STATE_DIR))
    token_files = tuple(DesiredTokenFile(name) for name in home_users)
    timers = [DesiredTimer(RECONCILE_TIMER, True)]
    for name, user in roster.users.items():
        why = "" if user.wants_timer else ("claude_auth false" if not user.claude_auth else "parked")
        timers.append(DesiredTimer(sync_timer(name), user.wants_timer, name, why))
        # Backup on change (issue 24): on and off with the sync timer, and like it only once the token is there.
        timers.append(DesiredTimer(backup_path(name), user.wants_timer, name, why))
    known_homes = homes or {}
    drop_ins: tuple[DesiredUnit, ...] = ()
    for name in home_users:
        if name in known_homes:
            sync = render_drop_in(name, known_homes[name], roster.users[name].claude_login)
            drop_ins += (sync, *render_backup_drop_ins(name, sync.text, known_homes[name]))
    return DesiredLocal(home_users, directories, token_files,
                        render_units(roster, exec_path, roster_path) + drop_ins, tuple(timers), exec_path)
