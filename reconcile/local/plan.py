"""The local plan, pure: (desired, observed) -> Changes of Kind.DIRECTORY, TOKEN_FILE, UNIT, TIMER.

No folder or token-file change is planned for a user with a problem, and their
timer is never enabled (a timer that must be disabled still is: a parked user's
timer really stops even when the home folder is gone). Nor is a timer enabled or
started before the person's token file exists, unless this run mints the token
(`minting`): a sync without a token can only FAIL. Enabled
`claude-auth-sync@X.timer` links of users no longer in the roster are
Action.ORPHANED, or Action.DELETE (disable, stop) when planned with `prune=True`
(`apply --prune`).
"""

from __future__ import annotations

from typing import Collection, Mapping

from reconcile.local import systemd
from reconcile.local import homefs as local_homefs
from reconcile.local.accounts import Account
from reconcile.local.homefs import TOKEN_FILE, EntryState
from reconcile.common.model import Action, Change, Kind
from reconcile.local.desired import (_SYNC_DROP_IN, _SYNC_TIMER_INSTANCE, DesiredLocal, DesiredTimer,
                                     DesiredUnit, instance_user)
from reconcile.local.observe import ObservedLocal, ObservedTimer


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
        name = f"{directory.user}:{local_homefs.shown(directory.rel_path)}"
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
                                  f"{token_file.user}:{local_homefs.shown(token_file.rel_path)}", "; ".join(reasons),
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
        owner = instance_user(_SYNC_DROP_IN.match(stray))
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
        owner = instance_user(_SYNC_TIMER_INSTANCE.match(stray))
        gone = DesiredTimer(stray, False, owner, "not in the roster")
        if prune:
            changes.append(Change(Action.DELETE, Kind.TIMER, stray, "enabled, user not in the roster",
                                  user=owner, desired=gone))
        else:
            changes.append(Change(Action.ORPHANED, Kind.TIMER, stray,
                                  "enabled, user not in the roster; `apply --prune` disables it",
                                  user=owner, desired=gone))
    return changes
