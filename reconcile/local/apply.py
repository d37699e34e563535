"""Carries out local changes: `apply_local_change(change, ctx)` and `finish_local(changed_kinds, ctx)`.

Each returns a short "what was done" text or raises an exception with a clear
message. Timers, reloads, starts and stops: `apply_local_change` does it all for
a timer change. It enables or disables the link (`systemctl [--root=DIR]
enable|disable`), and on the live root also starts or stops the timer. Before
the first timer change after a unit file was written (live root), it runs the
one `daemon-reload`, so a timer is never started from a stale unit.
`finish_local` runs that one `daemon-reload` when unit files were written and no
timer change did it yet. With a root other than `/`, nothing is started, stopped
or reloaded. The executor applies kinds in KIND_ORDER (UNIT before TIMER) with
one LocalContext for the whole run and calls `finish_local` once at the end; the
timer links are made early, alongside the mints (`link_timers`, then
`start_timers`; docs/design.md, "Timer links alongside the mints").

The token file itself is created (with the token) by the Vault side through
homefs.write_private_file; here only an existing token file's owner and mode are
checked and fixed (Kind.TOKEN_FILE, Action.UPDATE).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path
from functools import partial
from typing import Callable, Mapping, Sequence, cast

from reconcile.local import systemd
from reconcile.local import homefs as local_homefs
from reconcile.common.atomicfile import make_folders, write_atomically
from reconcile.local.accounts import Account
from reconcile.common.model import Action, Change, Kind, UserProblem
from reconcile.local.desired import UNIT_DIR, DesiredDirectory, DesiredTimer, DesiredTokenFile, DesiredUnit


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
        local_homefs.ensure_directory(_account(ctx, desired.user), desired.rel_path, desired.mode)
        return "created" if change.action is Action.CREATE else "owner and mode fixed"
    if change.kind is Kind.TOKEN_FILE and isinstance(desired, DesiredTokenFile):
        if change.action is not Action.UPDATE:
            raise LocalChangeError(f"{change.name}: only fixing owner and mode is a local change")
        local_homefs.fix_owner_mode(_account(ctx, desired.user), desired.rel_path, desired.mode)
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
