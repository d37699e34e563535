"""Reads the local side of the world into plain values: folders, token files, units, timers.

`observe_local(root, desired, accounts)` reads the disk through
reconcile.local.homefs (never following a link a user planted), the unit files,
and the timers' enablement with ONE batched `systemctl is-enabled` (plus, on the
live root only, one batched `is-active`). A user without an account or home
folder, or with a planted link, becomes a UserProblem for that user only; so
does a person with a sync timer who cannot run the units' ExecStart= program
(reconcile.local.execaccess: folders on the way, the file, its `#!`
interpreter), whose timer is then not enabled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from reconcile.local import execaccess, systemd
from reconcile.local import homefs as local_homefs
from reconcile.local.accounts import Account, lookup_accounts, names_by_uid
from reconcile.local.homefs import EntryState, HomeFsError
from reconcile.common.model import UserProblem
from reconcile.local.desired import (DROP_IN_GLOBS, TRIGGER_TEMPLATES, UNIT_DIR, _ACTIVE, _SYNC_DROP_IN,
                                     _SYNC_TIMER_INSTANCE, DesiredLocal, DesiredTimer, instance_user,
                                     wants_folder)


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
    state = local_homefs.inspect(account, rel_path)
    shown = local_homefs.shown(rel_path)
    if state.kind == "symlink":
        raise local_homefs.UnsafePath(f"{shown} is a symbolic link; refusing to follow it")
    if state.kind == "other":
        raise local_homefs.UnsafePath(f"{shown} is a special file; refusing to use it")
    if state.kind not in ("missing", want):
        wanted = "a folder" if want == "directory" else "a regular file"
        raise local_homefs.UnsafePath(f"{shown} is not {wanted}; refusing to use it")
    if state.kind == "file" and state.nlink > 1:
        raise local_homefs.UnsafePath(
            f"{shown} has {state.nlink} hard links (one may be planted); refusing to touch it")
    if state.kind != "missing" and state.uid != account.uid and not local_homefs.is_half_made(state):
        # Root gives a person only what it has just created (homefs), or what a killed run half-made:
        # an existing entry of someone else's, root's included, is theirs to remove.
        owner = "root" if state.uid == 0 else f"uid {state.uid}"
        raise local_homefs.UnsafePath(f"{shown} is owned by {owner}, not by {account.name}; refusing to give it "
                                f"to {account.name} (remove it, or chown it to {account.name} yourself)")
    return state


def _read_unit(root: Path, name: str) -> bytes | None:
    try:
        return (Path(root) / UNIT_DIR / name).read_bytes()
    except FileNotFoundError:
        return None


def _stray_timers(root: Path, roster_users: Iterable[str]) -> tuple[str, ...]:
    """Enabled sync timers and backup path units of people not in the roster."""
    known = set(roster_users)
    stray = []
    for folder in ("timers.target.wants", "paths.target.wants"):
        try:
            names = os.listdir(Path(root) / UNIT_DIR / folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            user = instance_user(_SYNC_TIMER_INSTANCE.match(name))
            if user is not None and user not in known:
                stray.append(name)
    return tuple(sorted(stray))


def _stray_drop_ins(root: Path, desired_names: Iterable[str]) -> tuple[str, ...]:
    folder = Path(root) / UNIT_DIR
    wanted = set(desired_names)
    stray = []
    for pattern in DROP_IN_GLOBS:
        for entry in folder.glob(pattern):
            name = f"{entry.parent.name}/{entry.name}"
            if _SYNC_DROP_IN.match(name) and name not in wanted:
                stray.append(name)
    return tuple(sorted(stray))


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
    missing_templates = {name for name in TRIGGER_TEMPLATES if units.get(name) is None}
    # A link left behind still counts, so a stale one is planned away once the template is back.
    unit_dir = Path(root) / UNIT_DIR
    known = {name: ("enabled" if os.path.islink(unit_dir / wants_folder(name) / name) else systemd.NOT_FOUND)
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
    link = base / UNIT_DIR / wants_folder(timer.unit) / timer.unit
    runtime_link = base / "run/systemd/system" / wants_folder(timer.unit) / timer.unit
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
