"""The local side of a reconcile: per-user folders, token-file owner and mode,
systemd unit files, and timers.

Owns, in the observe / plan / apply shape:

- `desired_local(roster, exec_path, roster_path)`: pure; what the roster asks
  for on this machine (folders and token-file mode for every user with
  `claude_auth`, the four unit files rendered from templates/, and one timer
  per roster user, enabled iff `user.wants_timer`, plus the hourly reconcile
  timer, always enabled).
- `observe_local(root, desired, accounts)`: reads the disk through
  reconcile.homefs (never following a link a user planted), the unit files,
  and the timers' enablement with ONE batched `systemctl is-enabled` (plus,
  on the live root only, one batched `is-active`). A user without an account
  or home folder, or with a planted link, becomes a UserProblem for that user
  only; so does a person with a sync timer who cannot run the units'
  ExecStart= program (reconcile.execaccess: folders on the way, the file, its
  `#!` interpreter), whose timer is then not enabled.
- `plan_local(desired, observed)`: pure; the Changes (Kind.DIRECTORY,
  TOKEN_FILE, UNIT, TIMER). No folder or token-file change is planned for a
  user with a problem, and their timer is never enabled (a timer that must be
  disabled still is: a parked user's timer really stops even when the home
  folder is gone). Nor is a timer enabled or started before the person's
  token file exists, unless this run mints the token (`minting`): a sync
  without a token can only FAIL. Enabled `claude-auth-sync@X.timer` links of users no longer
  in the roster are Action.ORPHANED, or Action.DELETE (disable, stop) when
  planned with `prune=True` (`apply --prune`).
- `apply_local_change(change, ctx)` / `finish_local(changed_kinds, ctx)`:
  carry out one change (returning a short "what was done" text) and finish
  the run; raise an exception with a clear message on failure.

Timers, reloads, starts and stops: `apply_local_change` does it all for a
timer change. It enables or disables the link (`systemctl [--root=DIR]
enable|disable`), and on the live root also starts or stops the timer. Before
the first timer change after a unit file was written (live root), it runs the
one `daemon-reload`, so a timer is never started from a stale unit.
`finish_local` runs that one `daemon-reload` when unit files were written and
no timer change did it yet. With a root other than `/`, nothing is started,
stopped or reloaded. The executor applies kinds in KIND_ORDER (UNIT before
TIMER) with one LocalContext for the whole run and calls `finish_local` once
at the end.

The token file itself is created (with the token) by the Vault side through
homefs.write_private_file; here only an existing token file's owner and mode
are checked and fixed (Kind.TOKEN_FILE, Action.UPDATE).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from functools import partial
from typing import Callable, Collection, Iterable, Mapping, Sequence, cast

from reconcile import execaccess, homefs, systemd
from reconcile.common.atomicfile import make_folders, write_atomically
from reconcile.accounts import Account, lookup_accounts, names_by_uid
from reconcile.roster.durations import format_duration
from reconcile.common.loginmode import DEFAULT as DEFAULT_LOGIN
from reconcile.common.loginmode import ENV_VAR as LOGIN_ENV_VAR
from reconcile.homefs import CONFIG_DIR, STATE_DIR, TOKEN_FILE, EntryState, HomeFsError
from reconcile.common.model import Action, Change, Kind, UserProblem
from reconcile.roster.values import Roster
from reconcile.common.templating import render

SYNC_SERVICE = "claude-auth-sync@.service"
SYNC_TIMER = "claude-auth-sync@.timer"
RECONCILE_SERVICE = "claude-auth-reconcile.service"
RECONCILE_TIMER = "claude-auth-reconcile.timer"
UNIT_NAMES = (SYNC_SERVICE, SYNC_TIMER, RECONCILE_SERVICE, RECONCILE_TIMER)

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
SYNC_WRITABLE = (".claude", ".claude.json", CONFIG_DIR, STATE_DIR)
"""Below the person's home: what the sync (and claude) may write; all else is read-only."""

_SYNC_TIMER_INSTANCE = re.compile(r"^claude-auth-sync@(?P<user>[^/]+)\.timer$")
_SYNC_DROP_IN = re.compile(r"^claude-auth-sync@(?P<user>[^/]+)\.service\.d/home\.conf$")
_ACTIVE = frozenset({"active", "activating", "reloading"})


def sync_timer(user: str) -> str:
    return f"claude-auth-sync@{user}.timer"


def sync_drop_in(user: str) -> str:
    """The per-person drop-in naming that person's home (unit folder relative)."""
    return f"claude-auth-sync@{user}.service.d/home.conf"


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
    """The four unit files, rendered from templates/ (pure)."""
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
    known_homes = homes or {}
    drop_ins = tuple(render_drop_in(name, known_homes[name], roster.users[name].claude_login)
                     for name in home_users if name in known_homes)
    return DesiredLocal(home_users, directories, token_files,
                        render_units(roster, exec_path, roster_path) + drop_ins, tuple(timers), exec_path)


# --- observed -------------------------------------------------------------


@dataclass(frozen=True)
class ObservedTimer:
    enabled: str
    """systemctl is-enabled's answer ("enabled", "disabled", "not-found", ...)."""
    active: str | None = None
    """systemctl is-active's answer on the live root; None elsewhere."""

    @property
    def is_enabled(self) -> bool:
        return self.enabled in systemd.ENABLED_STATES

    @property
    def is_running(self) -> bool:
        return self.active in _ACTIVE


@dataclass(frozen=True)
class ObservedLocal:
    accounts: Mapping[str, Account]
    """Home users that could be inspected safely (no problem)."""
    entries: Mapping[tuple[str, str], EntryState]
    """(user, path below the home) -> what is there."""
    units: Mapping[str, bytes | None]
    """Unit file name -> its bytes, None when missing."""
    timers: Mapping[str, ObservedTimer]
    problems: tuple[UserProblem, ...] = ()
    stray_timers: tuple[str, ...] = ()
    """Enabled claude-auth-sync@X.timer links whose X is not in the roster."""
    stray_drop_ins: tuple[str, ...] = ()
    """claude-auth-sync@X.service.d/home.conf files no desired unit names."""
    owner_names: Mapping[int, str] = field(default_factory=dict)
    """uid -> account name, for reasons people read."""
    live: bool = False


def _checked_state(account: Account, rel_path: str, want: str) -> EntryState:
    """inspect(), refusing what root must not act on (want: "directory" or "file")."""
    state = homefs.inspect(account, rel_path)
    shown = homefs.shown(rel_path)
    if state.kind == "symlink":
        raise homefs.UnsafePath(f"{shown} is a symbolic link; refusing to follow it")
    if state.kind == "other":
        raise homefs.UnsafePath(f"{shown} is a special file; refusing to use it")
    if state.kind not in ("missing", want):
        wanted = "a folder" if want == "directory" else "a regular file"
        raise homefs.UnsafePath(f"{shown} is not {wanted}; refusing to use it")
    if state.kind == "file" and state.nlink > 1:
        raise homefs.UnsafePath(
            f"{shown} has {state.nlink} hard links (one may be planted); refusing to touch it")
    if state.kind != "missing" and state.uid != account.uid and not homefs.is_half_made(state):
        # Root gives a person only what it has just created (homefs), or what a killed run half-made:
        # an existing entry of someone else's, root's included, is theirs to remove.
        owner = "root" if state.uid == 0 else f"uid {state.uid}"
        raise homefs.UnsafePath(f"{shown} is owned by {owner}, not by {account.name}; refusing to give it "
                                f"to {account.name} (remove it, or chown it to {account.name} yourself)")
    return state


def _read_unit(root: Path, name: str) -> bytes | None:
    try:
        return (Path(root) / UNIT_DIR / name).read_bytes()
    except FileNotFoundError:
        return None


def _stray_timers(root: Path, roster_users: Iterable[str]) -> tuple[str, ...]:
    wants = Path(root) / UNIT_DIR / "timers.target.wants"
    try:
        names = os.listdir(wants)
    except (FileNotFoundError, NotADirectoryError):
        return ()
    known = set(roster_users)
    stray = []
    for name in names:
        match = _SYNC_TIMER_INSTANCE.match(name)
        if match and match.group("user") not in known:
            stray.append(name)
    return tuple(sorted(stray))


def _stray_drop_ins(root: Path, desired_names: Iterable[str]) -> tuple[str, ...]:
    folder = Path(root) / UNIT_DIR
    wanted = set(desired_names)
    stray = []
    for entry in sorted(folder.glob("claude-auth-sync@*.service.d/home.conf")):
        name = f"{entry.parent.name}/{entry.name}"
        if _SYNC_DROP_IN.match(name) and name not in wanted:
            stray.append(name)
    return tuple(stray)


def observe_local(root: Path, desired: DesiredLocal,
                  accounts: Mapping[str, Account | UserProblem]) -> ObservedLocal:
    """Read folders, token files, unit files and timers under `root`.

    `accounts` comes from accounts.lookup_accounts(root, desired.home_users);
    a home user missing from it is looked up here.
    """
    root = Path(root)
    live = systemd.is_live_root(root)
    problems: list[UserProblem] = []
    good: dict[str, Account] = {}
    entries: dict[tuple[str, str], EntryState] = {}
    # Each person's paths, grouped once: filtering the whole list per person made
    # this loop quadratic (36 of 42 s at 10,000 people, issue 14).
    wanted: dict[str, list[tuple[str, str]]] = {}
    for directory in desired.directories:
        wanted.setdefault(directory.user, []).append((directory.rel_path, "directory"))
    for token_file in desired.token_files:
        wanted.setdefault(token_file.user, []).append((token_file.rel_path, "file"))
    for user in desired.home_users:
        found = accounts.get(user)
        if found is None:
            found = lookup_accounts(root, [user])[user]
        if isinstance(found, UserProblem):
            problems.append(found)
            continue
        seen: dict[tuple[str, str], EntryState] = {}
        try:
            for rel_path, kind in wanted.get(user, ()):
                seen[(user, rel_path)] = _checked_state(found, rel_path, kind)
        except HomeFsError as exc:  # UnsafePath included
            problems.append(UserProblem(user, str(exc)))
            continue
        good[user] = found
        entries.update(seen)

    units = {unit.name: _read_unit(root, unit.name) for unit in desired.units}
    timer_names = [timer.unit for timer in desired.timers]
    # An instance of a template we manage that is not on disk yet is not
    # enabled; asking systemctl about it would only make it stop early.
    missing_templates = {name for name in (SYNC_TIMER, RECONCILE_TIMER) if units.get(name) is None}
    # A link left behind still counts, so a stale one is planned away once the template is back.
    wants = Path(root) / UNIT_DIR / "timers.target.wants"
    known = {name: ("enabled" if os.path.islink(wants / name) else systemd.NOT_FOUND)
             for name in timer_names if _template_of(name) in missing_templates}
    for timer in desired.timers:
        if timer.unit not in known:
            plain = _plainly(root, timer)
            if plain is not None:
                known[timer.unit] = plain
    # systemctl stays the authority for every timer whose links do not plainly
    # show the wanted state: one batched call for all of those, none when all agree.
    to_ask = [name for name in timer_names if name not in known]
    states = {**known, **(systemd.is_enabled(root, to_ask) if to_ask else {})}
    active = systemd.is_active(timer_names) if live else {}
    timers = {name: ObservedTimer(states[name], active.get(name)) for name in timer_names}

    problems += _unrunnable(root, desired, good)

    wrong_owners = {state.uid for (user, _), state in entries.items()
                    if state.kind != "missing" and state.uid != good[user].uid}
    owner_names = names_by_uid(root, wrong_owners) if wrong_owners else {}
    roster_users = [timer.user for timer in desired.timers if timer.user is not None]
    return ObservedLocal(
        accounts=good, entries=entries, units=units, timers=timers,
        problems=tuple(problems), stray_timers=_stray_timers(root, roster_users),
        stray_drop_ins=_stray_drop_ins(root, units),
        owner_names=owner_names, live=live)


def _unrunnable(root: Path, desired: DesiredLocal, accounts: Mapping[str, Account]) -> list[UserProblem]:
    """A problem for each person with a sync timer who cannot run the units' ExecStart= program.

    Their timer is then not enabled (a sync that can only fail with 203/EXEC);
    their folders and token are still set up. The program is looked up on this
    machine's file system (it is the running installation, see
    default_exec_path), the person in the user database under `root`.
    """
    users = [timer.user for timer in desired.timers
             if timer.enabled and timer.user is not None and timer.user in accounts]
    if desired.exec_path is None or not users:
        return []
    program = execaccess.observe_program(desired.exec_path)
    people = execaccess.people(root, [accounts[user] for user in users])
    problems = []
    for user in users:
        why = execaccess.denial(program, people[user])
        if why is not None:
            problems.append(UserProblem(user, f"{why}; their sync timer is not enabled "
                                              "(install where every person can reach it: README, "
                                              "\"Install on a workstation\")"))
    return problems


def _plainly(root: Path, timer: DesiredTimer) -> str | None:
    """The timer's enablement when its links plainly show the wanted state, else None.

    Only the layout `systemctl enable` itself makes counts: a wants link in
    /etc/systemd/system pointing at our template (enabled) or no wants link in
    /etc or /run (disabled), and no unit file or mask of that instance's own
    name there. Anything else, and every change, is left to systemctl, which
    reads the whole unit search path. This spares a thousand-user no-op plan
    the 2 s one is-enabled over every timer costs.
    """
    base = Path(root)
    is_instance = _template_of(timer.unit) != timer.unit
    for folder in ("etc/systemd/system", "run/systemd/system"):
        own = base / folder / timer.unit
        if is_instance:
            unusual = os.path.lexists(own)  # an instance has no file of its own
        else:  # a plain unit's own file is ours in /etc, as a real file (a symlink may be a mask)
            unusual = own.is_symlink() or (folder.startswith("run") and os.path.lexists(own))
        if unusual:
            return None  # masked or overridden: ask systemctl
    link = base / UNIT_DIR / "timers.target.wants" / timer.unit
    runtime_link = base / "run/systemd/system/timers.target.wants" / timer.unit
    if timer.enabled:
        try:
            target = os.readlink(link)
        except OSError:
            return None
        plain = os.path.basename(target) == _template_of(timer.unit) and not os.path.lexists(runtime_link)
        return "enabled" if plain else None
    if not os.path.lexists(link) and not os.path.lexists(runtime_link):
        return "disabled"
    return None


def _template_of(unit: str) -> str:
    """claude-auth-sync@alice.timer -> claude-auth-sync@.timer; other names unchanged."""
    if "@" not in unit:
        return unit
    prefix, _, rest = unit.partition("@")
    return f"{prefix}@{rest[rest.rfind('.'):]}"


# --- plan -----------------------------------------------------------------


def _owner_name(uid: int, names: Mapping[int, str]) -> str:
    if uid in names:
        return names[uid]
    return "root" if uid == 0 else f"uid {uid}"


def _drift(state: EntryState, account: Account, mode: int, names: Mapping[int, str]) -> list[str]:
    reasons = []
    if state.mode != mode:
        reasons.append(f"mode {state.mode:04o}, want {mode:04o}")
    if state.uid != account.uid:
        reasons.append(f"owner {_owner_name(state.uid, names)}, want {account.name}")
    if state.gid != account.gid:
        reasons.append(f"group gid {state.gid}, want gid {account.gid}")
    return reasons


def _has_token(observed: ObservedLocal, user: str) -> bool:
    entry = observed.entries.get((user, TOKEN_FILE))
    return entry is not None and entry.kind == "file"


def plan_local(desired: DesiredLocal, observed: ObservedLocal, *, prune: bool = False,
               minting: Collection[str] = ()) -> list[Change]:
    """The local changes apply would make (pure).

    Timers of users no longer in the roster are Action.ORPHANED, or
    Action.DELETE (disable and stop) with `prune`. A person's timer is enabled
    and started only once their token file exists, or when `minting` (the
    people this same run mints a token for) names them: before that every sync
    could only FAIL, so the hourly run (which cannot mint) leaves it for the
    admin run.
    """
    changes: list[Change] = []
    for directory in desired.directories:
        account = observed.accounts.get(directory.user)
        if account is None:
            continue
        state = observed.entries[(directory.user, directory.rel_path)]
        name = f"{directory.user}:{homefs.shown(directory.rel_path)}"
        if state.kind == "missing":
            changes.append(Change(Action.CREATE, Kind.DIRECTORY, name, "missing", user=directory.user,
                                  desired=directory, observed=state))
            continue
        reasons = _drift(state, account, directory.mode, observed.owner_names)
        if reasons:
            changes.append(Change(Action.UPDATE, Kind.DIRECTORY, name, "; ".join(reasons),
                                  user=directory.user, desired=directory, observed=state))

    for token_file in desired.token_files:
        account = observed.accounts.get(token_file.user)
        if account is None:
            continue
        state = observed.entries[(token_file.user, token_file.rel_path)]
        if state.kind != "file":
            continue  # creating it (with a token) is the Vault side's job
        reasons = _drift(state, account, token_file.mode, observed.owner_names)
        if reasons:
            changes.append(Change(Action.UPDATE, Kind.TOKEN_FILE,
                                  f"{token_file.user}:{homefs.shown(token_file.rel_path)}", "; ".join(reasons),
                                  user=token_file.user, desired=token_file, observed=state))

    for unit in desired.units:
        current = observed.units.get(unit.name)
        if current is None:
            changes.append(Change(Action.CREATE, Kind.UNIT, unit.name, "missing", user=unit.user, desired=unit,
                                  before_text="", after_text=unit.text))
        elif current != unit.text.encode():
            changes.append(Change(Action.UPDATE, Kind.UNIT, unit.name, "content differs", user=unit.user,
                                  desired=unit, before_text=current.decode("utf-8", errors="replace"),
                                  after_text=unit.text))

    problem_users = {problem.user for problem in observed.problems}
    for timer in desired.timers:
        seen = observed.timers.get(timer.unit, ObservedTimer(systemd.NOT_FOUND))
        enablement = "not enabled" if seen.enabled == systemd.NOT_FOUND else seen.enabled
        if timer.enabled:
            if timer.user in problem_users:
                continue  # never start a sync for a user we could not set up
            if timer.user is not None and not _has_token(observed, timer.user) and timer.user not in minting:
                continue  # waiting for an admin run to mint the token
            if not seen.is_enabled:
                changes.append(Change(Action.CREATE, Kind.TIMER, timer.unit, f"{enablement}, want enabled",
                                      user=timer.user, desired=timer, observed=seen))
            elif observed.live and not seen.is_running:
                changes.append(Change(Action.UPDATE, Kind.TIMER, timer.unit,
                                      f"enabled but {seen.active}, want running",
                                      user=timer.user, desired=timer, observed=seen))
        else:
            if seen.is_enabled:
                changes.append(Change(Action.DELETE, Kind.TIMER, timer.unit,
                                      f"{enablement}, want disabled ({timer.why})",
                                      user=timer.user, desired=timer, observed=seen))
            elif observed.live and seen.is_running:
                changes.append(Change(Action.UPDATE, Kind.TIMER, timer.unit,
                                      f"{enablement} but {seen.active}, want stopped ({timer.why})",
                                      user=timer.user, desired=timer, observed=seen))

    roster_users = {timer.user for timer in desired.timers if timer.user is not None}
    for stray in observed.stray_drop_ins:
        match = _SYNC_DROP_IN.match(stray)
        owner = match.group("user") if match else None
        unwanted = DesiredUnit(stray, "", owner)
        if owner in desired.home_users:
            continue  # wanted, but their home is unknown now (a problem reported elsewhere): leave it
        if owner in roster_users or prune:
            why = "claude_auth false" if owner in roster_users else "user not in the roster"
            changes.append(Change(Action.DELETE, Kind.UNIT, stray, f"present, want none ({why})",
                                  user=owner, desired=unwanted))
        else:
            changes.append(Change(Action.ORPHANED, Kind.UNIT, stray,
                                  "user not in the roster; `apply --prune` removes it", user=owner,
                                  desired=unwanted))

    for stray in observed.stray_timers:
        match = _SYNC_TIMER_INSTANCE.match(stray)
        owner = match.group("user") if match else None
        gone = DesiredTimer(stray, False, owner, "not in the roster")
        if prune:
            changes.append(Change(Action.DELETE, Kind.TIMER, stray, "enabled, user not in the roster",
                                  user=owner, desired=gone))
        else:
            changes.append(Change(Action.ORPHANED, Kind.TIMER, stray,
                                  "enabled, user not in the roster; `apply --prune` disables it",
                                  user=owner, desired=gone))
    return changes


# --- apply ----------------------------------------------------------------


class LocalChangeError(Exception):
    """A local change could not be carried out; the message says which and why."""


@dataclass
class LocalContext:
    """What applying local changes needs; one per apply run (it tracks the pending reload)."""

    root: Path
    accounts: Mapping[str, Account]
    units_written: int = 0
    units_reloaded: int = 0
    """units_written at the last daemon-reload."""

    @classmethod
    def create(cls, root: Path, accounts: Mapping[str, Account | UserProblem]) -> LocalContext:
        """From lookup_accounts' answer (users with a problem left out)."""
        return cls(Path(root), {name: a for name, a in accounts.items() if isinstance(a, Account)})

    @property
    def is_live(self) -> bool:
        return systemd.is_live_root(self.root)


def write_unit(root: Path, name: str, text: str) -> None:
    """Atomically write a unit file (0644) into DIR/etc/systemd/system."""
    path = Path(root) / UNIT_DIR / name
    make_folders(path.parent, 0o755)
    # Flushed with everything else in one os.sync() at the end of apply: a
    # thousand drop-ins need not wait for a thousand pairs of fsyncs.
    write_atomically(path, text.encode(), 0o644, durable=False)


def remove_unit(root: Path, name: str) -> None:
    """Remove a unit file (a drop-in: its folder too, once empty)."""
    path = Path(root) / UNIT_DIR / name
    try:
        path.unlink(missing_ok=True)
        if path.parent.name.endswith(".d"):
            path.parent.rmdir()
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.ENOENT):
            raise LocalChangeError(f"cannot remove {path}: {exc.strerror}") from None


def _account(ctx: LocalContext, user: str | None) -> Account:
    if user is None or user not in ctx.accounts:
        raise LocalChangeError(f"{user}: no account found; cannot change files in the home folder")
    return ctx.accounts[user]


def _reload_if_pending(ctx: LocalContext) -> None:
    if ctx.is_live and ctx.units_written > ctx.units_reloaded:
        systemd.daemon_reload()
        ctx.units_reloaded = ctx.units_written


def apply_local_change(change: Change, ctx: LocalContext) -> str:
    """Carry out one change planned by plan_local; returns what was done, for people.

    Raises homefs.UnsafePath / HomeFsError, systemd.SystemdError or
    LocalChangeError, each with a message naming the path or unit.
    A timer whose desired state is disabled (parked, not in the roster) is
    disabled and stopped, whatever the action.
    """
    desired = change.desired
    if change.kind is Kind.DIRECTORY and isinstance(desired, DesiredDirectory):
        homefs.ensure_directory(_account(ctx, desired.user), desired.rel_path, desired.mode)
        return "created" if change.action is Action.CREATE else "owner and mode fixed"
    if change.kind is Kind.TOKEN_FILE and isinstance(desired, DesiredTokenFile):
        if change.action is not Action.UPDATE:
            raise LocalChangeError(f"{change.name}: only fixing owner and mode is a local change")
        homefs.fix_owner_mode(_account(ctx, desired.user), desired.rel_path, desired.mode)
        return "owner and mode fixed"
    if change.kind is Kind.UNIT and isinstance(desired, DesiredUnit) and change.action is Action.DELETE:
        remove_unit(ctx.root, desired.name)
        ctx.units_written += 1
        return "removed"
    if change.kind is Kind.UNIT and isinstance(desired, DesiredUnit):
        try:
            write_unit(ctx.root, desired.name, desired.text)
        except OSError as exc:
            raise LocalChangeError(f"cannot write {Path(ctx.root) / UNIT_DIR / desired.name}: {exc.strerror}") from None
        ctx.units_written += 1
        return "written"
    if change.kind is Kind.TIMER and isinstance(desired, DesiredTimer):
        (outcome,) = apply_timer_changes([change], ctx)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
    raise LocalChangeError(f"{change.name}: not a local change ({change.kind.value}, {change.action.value})")


def _timer_verbs(root: Path, enabled: bool, live: bool) -> tuple[list[Callable[[list[str]], None]], str]:
    """The systemctl calls that bring timers to the wanted state, and what to tell people."""
    if enabled:
        return ([partial(systemd.enable, root), *([systemd.start] if live else [])],
                "enabled and started" if live else "enabled")
    return ([partial(systemd.disable, root), *([systemd.stop] if live else [])],
            "disabled and stopped" if live else "disabled")


def apply_timer_changes(changes: Sequence[Change], ctx: LocalContext) -> list[str | Exception]:
    """Every timer change with one systemctl call per verb, in the order given.

    A thousand users means one `systemctl enable` with a thousand names, not a
    thousand processes. When a batched call fails, its timers are retried one
    by one so each failure names its own timer. A timer whose desired state is
    disabled (parked, not in the roster) is disabled and stopped, whatever the
    action. Returns, per change, what was done or the exception it raised.
    """
    return start_timers(changes, link_timers(changes, ctx), ctx)


def link_timers(changes: Sequence[Change], ctx: LocalContext) -> list[str | Exception]:
    """The first half of apply_timer_changes: the enablement links only (enable/disable).

    Nothing starts or stops here, so this may run while tokens are still being
    minted; start_timers, after them, does the rest. Per change: "" when its
    links are as wanted, or the exception that says why not.
    """
    return _timer_stage(changes, ctx, links=True, given=None)


def start_timers(changes: Sequence[Change], linked: Sequence[str | Exception],
                 ctx: LocalContext) -> list[str | Exception]:
    """The second half of apply_timer_changes: start or stop (live root only) each timer whose
    links link_timers made; per change, what was done or the exception it raised."""
    return _timer_stage(changes, ctx, links=False, given=linked)


def _timer_stage(changes: Sequence[Change], ctx: LocalContext, *, links: bool,
                 given: Sequence[str | Exception] | None) -> list[str | Exception]:
    live = ctx.is_live
    if links:
        try:
            _reload_if_pending(ctx)
        except systemd.SystemdError as exc:
            return [exc for _ in changes]  # a timer must not start from a stale unit
    elif given is None or len(given) != len(changes):
        return [LocalChangeError("timer links were not made") for _ in changes]
    outcomes: list[str | Exception] = []
    groups: dict[bool, list[int]] = {True: [], False: []}
    for index, change in enumerate(changes):
        desired = change.desired
        earlier = None if given is None else given[index]
        if isinstance(earlier, Exception):
            outcomes.append(earlier)
            continue
        if change.kind is not Kind.TIMER or not isinstance(desired, DesiredTimer):
            outcomes.append(LocalChangeError(f"{change.name}: not a timer change"))
            continue
        outcomes.append("")
        groups[desired.enabled and change.action is not Action.ORPHANED].append(index)
    for enabled, indexes in groups.items():
        if not indexes:
            continue
        verbs, done = _timer_verbs(ctx.root, enabled, live)
        verbs = verbs[:1] if links else verbs[1:]
        done = "" if links else done
        units = [cast(DesiredTimer, changes[i].desired).unit for i in indexes]
        try:
            for verb in verbs:
                verb(units)
        except systemd.SystemdError:
            for i, unit in zip(indexes, units):
                try:
                    for verb in verbs:
                        verb([unit])
                except systemd.SystemdError as exc:
                    outcomes[i] = exc
                else:
                    outcomes[i] = done
        else:
            for i in indexes:
                outcomes[i] = done
    return outcomes


def finish_local(changed_kinds: set[Kind], ctx: LocalContext) -> None:
    """After all changes: the one daemon-reload if unit files changed (live root only)."""
    if not ctx.is_live:
        return
    if ctx.units_written > ctx.units_reloaded or (Kind.UNIT in changed_kinds and ctx.units_written == 0):
        systemd.daemon_reload()
        ctx.units_reloaded = ctx.units_written
