"""The one executor: carries out a Plan and records what happened to each change.

Changes run in Kind order (model.sort_for_apply: policies, folders, tokens,
renewals, token files, units, timers), dispatched on (kind, action) only to
the domain handlers: Vault kinds to reconcile.vault.apply, local kinds to
reconcile.local.apply. A failed change is recorded and the rest still run.
Results are reported in that order too, but two kinds of work start early:
the policy writes are sent together pipelined, and when timers change, the
unit files are written first and the timers' enablement links (one slow
`systemctl enable` over every unit folder per name) are made in a thread
while the tokens are minted; the timers start (live root) only after them.
Without an admin Vault token, a change that needs one is not attempted: it is
recorded as blocked (a WARN line for people). A person who holds a lock in
their own home past the run's allowance (homelock.LockAllowance) has the rest
of their row skipped (`skipped`, a WARN line too); nobody else waits on it. Orphaned items are never acted
on; `apply --prune` turns them into deletions at planning time.

Once Vault counts as unreachable (its retries ran out or the run's deadline
passed: reconcile.vault), the remaining Vault changes are not attempted and
recorded so (`not_attempted`); local changes, which need no Vault, still run.
A change that failed because Vault was unreachable says so (`vault_down`), so
the caller can report it with the rest in one line.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from reconcile.local import apply as local_apply
from reconcile.local.homefs import HomeFsError
from reconcile.local.homelock import LockHeld
from reconcile.common.model import Action, Change, Kind, Plan, is_pending, sort_for_apply
from reconcile.vault.apply import HANDLERS
from reconcile.vault.hostapply import HOST_HANDLERS
from reconcile.vault.apply import apply_policies_pipelined
from reconcile.local.systemd import SystemdError
from reconcile.vault.values import VaultError, VaultUnreachable
from reconcile.vault.apply import TokenFileWriteFailed, VaultContext

LOCAL_KINDS = frozenset({Kind.DIRECTORY, Kind.TOKEN_FILE, Kind.UNIT, Kind.TIMER})
_DOMAIN_ERRORS = (VaultError, HomeFsError, SystemdError, TokenFileWriteFailed)
VAULT_HANDLERS = {**HANDLERS, **HOST_HANDLERS}
_DONE = {Action.CREATE: "created", Action.UPDATE: "updated", Action.DELETE: "removed", Action.COLLECT: "revoked"}


@dataclass(frozen=True)
class Result:
    change: Change
    ok: bool
    message: str
    """What was done (ok) or why it failed; never a secret."""
    blocked: bool = False
    """Not attempted: it needs an admin Vault token and this run has none."""
    not_attempted: bool = False
    """Not attempted: Vault was already known to be unreachable (a failure all the same)."""
    vault_down: bool = False
    """Failed (or not attempted) because Vault did not answer."""
    skipped: bool = False
    """Not done: the person holds a lock in their home beyond the run's allowance (their row only)."""

    def as_json(self) -> dict[str, object]:
        return {"name": self.change.name, "kind": self.change.kind.value, "action": self.change.action.value,
                "ok": self.ok, "error": None if self.ok else self.message}


@dataclass
class ExecContext:
    vault: VaultContext
    local: Any
    """local.apply.LocalContext (root and accounts)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """People whose row this run skips (a lock in their home is held), with why; grows as the run goes."""

    @property
    def admin(self) -> bool:
        return self.vault.admin


Reporter = Callable[[Result], None]
Handler = Callable[[Change, ExecContext], object]


def _vault_handler(change: Change) -> Handler | None:
    handler = VAULT_HANDLERS.get((change.kind, change.action))
    if handler is None:
        return None
    return lambda c, ctx: handler(c, ctx.vault)


def _local_handler(change: Change) -> Handler | None:
    if change.kind not in LOCAL_KINDS:
        return None
    return lambda c, ctx: local_apply.apply_local_change(c, ctx.local)


def handler_for(change: Change) -> Handler | None:
    return _vault_handler(change) or _local_handler(change)


def error_text(exc: BaseException) -> str:
    """One line for people. Domain errors carry safe text: no token ever reaches them."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if isinstance(exc, _DOMAIN_ERRORS):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _run_one(change: Change, ctx: ExecContext) -> Result:
    handler = handler_for(change)
    if handler is None:
        return Result(change, ok=False, message=f"no handler for {change.action.value} {change.kind.value}")
    if change.user is not None and change.user in ctx.skipped:
        return Result(change, ok=False, message=ctx.skipped[change.user], skipped=True)
    down = ctx.vault.vault.unreachable
    if down is not None and change.kind not in LOCAL_KINDS:
        return Result(change, ok=False, message=f"not attempted: {down}", not_attempted=True, vault_down=True)
    try:
        outcome = handler(change, ctx)
    except LockHeld as exc:  # the person's own lock: their row only, and no more waiting on it
        if change.user is not None:
            ctx.skipped.setdefault(change.user, str(exc))
        return Result(change, ok=False, message=str(exc), skipped=True)
    except Exception as exc:  # recorded; the other changes still run
        return Result(change, ok=False, message=error_text(exc), vault_down=isinstance(exc, VaultUnreachable))
    message = outcome if isinstance(outcome, str) and outcome else _DONE[change.action]
    return Result(change, ok=True, message=message)


def _as_results(changes: list[Change], outcomes: list[str | Exception]) -> list[Result]:
    if len(outcomes) != len(changes):
        message = f"the timer handler answered {len(outcomes)} outcomes for {len(changes)} changes"
        return [Result(change, ok=False, message=message) for change in changes]
    return [Result(change, ok=False, message=error_text(outcome)) if isinstance(outcome, Exception)
            else Result(change, ok=True, message=outcome or _DONE[change.action])
            for change, outcome in zip(changes, outcomes)]


class _TimerLinks:
    """The timers' enablement links, made by one systemctl run per verb in a thread of its own
    while the tokens are minted, then (live root only) the starts and stops after them.

    The links start nothing, so they need not wait for the tokens: only the unit files they
    name, which are written ahead for that. A timer starts (and so, being new, runs its first
    sync at once: OnBootSec) only in the timers' own turn, after every token and token file.
    Whatever the batch handlers raise is the failure of every change in the batch.
    """

    def __init__(self, timers: list[Change], ctx: ExecContext) -> None:
        self._timers = timers
        self._ctx = ctx
        self._linked: list[str | Exception] | Exception = []
        self._thread = threading.Thread(target=self._link, name="timer-links", daemon=True)
        self._thread.start()

    def _link(self) -> None:
        try:
            self._linked = local_apply.link_timers(self._timers, self._ctx.local)
        except Exception as exc:  # handed to the results, never a traceback
            self._linked = exc

    def results(self) -> list[Result]:
        self._thread.join()
        try:
            if isinstance(self._linked, Exception):
                raise self._linked
            outcomes = local_apply.start_timers(self._timers, self._linked, self._ctx.local)
        except Exception as exc:  # the link stage's or this one's: recorded, never a traceback
            message = error_text(exc)
            return [Result(change, ok=False, message=message) for change in self._timers]
        return _as_results(self._timers, outcomes)


def _written_ahead(runnable: list[Change], ctx: ExecContext) -> dict[int, Result]:
    """The policy writes, sent together pipelined before anything runs (policies sort first, so
    nothing that runs before them is skipped): the result of each one Vault answered with
    success, by id(change). Every other change, and a write not answered so, runs in turn."""
    policies = [change for change in runnable if change.kind is Kind.POLICY]
    if not policies:
        return {}
    try:
        outcomes = apply_policies_pipelined(policies, ctx.vault)
    except Exception:  # noqa: BLE001 - a fast path only: each policy is then written the ordinary way
        return {}
    return {id(change): Result(change, ok=True, message=outcome)
            for change, outcome in zip(policies, outcomes) if outcome is not None}


def execute(plan: Plan, ctx: ExecContext, *, report: Reporter) -> tuple[Result, ...]:
    """Carry out every pending change; `report` sees each result as it happens."""
    results: list[Result] = []
    runnable: list[Change] = []
    for change in sort_for_apply([c for c in plan if is_pending(c)]):
        if change.user is not None and change.user in ctx.skipped:
            result = Result(change, ok=False, message=ctx.skipped[change.user], skipped=True)
            results.append(result)
            report(result)
        elif change.needs_admin and not ctx.admin:
            result = Result(change, ok=False, message="needs an admin run", blocked=True)
            results.append(result)
            report(result)
        else:
            runnable.append(change)
    timers = [c for c in runnable if c.kind is Kind.TIMER]
    ahead = _written_ahead(runnable, ctx)
    links = None
    if timers:  # the links name the unit files: those are written first
        ahead.update((id(change), _run_one(change, ctx)) for change in runnable if change.kind is Kind.UNIT)
        links = _TimerLinks(timers, ctx)
    for change in runnable:
        if change.kind is Kind.TIMER:
            if links is not None and change is timers[0]:  # timers sort last: all else has run
                for result in links.results():
                    results.append(result)
                    report(result)
            continue
        result = ahead.get(id(change)) or _run_one(change, ctx)
        results.append(result)
        report(result)
    return tuple(results)


def finish(changed: tuple[Result, ...], ctx: ExecContext) -> str | None:
    """Run the local domain's one finishing step (daemon-reload), if it has one; an error text or None."""
    kinds = {r.change.kind for r in changed if r.ok}
    try:
        local_apply.finish_local(kinds, ctx.local)
    except Exception as exc:
        return error_text(exc)
    return None


def failures(results: tuple[Result, ...]) -> tuple[Result, ...]:
    return tuple(r for r in results if not r.ok and not r.blocked and not r.skipped)


def lost_to_vault(results: tuple[Result, ...]) -> tuple[Result, ...]:
    """Changes not made because Vault did not answer (failed on it, or not attempted)."""
    return tuple(r for r in results if r.vault_down)


def blocked(results: tuple[Result, ...]) -> tuple[Result, ...]:
    return tuple(r for r in results if r.blocked)
