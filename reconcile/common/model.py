"""The vocabulary of a plan: actions, changes, and per-user problems.

A plan is an immutable tuple of Change values computed by pure code. The
executor dispatches on (kind, action) only; `reason` is for people.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Action(Enum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    ORPHANED = "orphaned"
    """Managed for a user no longer in the roster; only `apply --prune` removes it."""
    COLLECT = "collect"
    """Garbage (`plan --prune` only): a token this host minted that nothing references; marked `!` like an
    orphan, but pending: the `apply --prune` that found it revokes it (counted as a removal)."""

    @property
    def symbol(self) -> str:
        return {"create": "+", "update": "~", "delete": "-", "orphaned": "!", "collect": "!"}[self.value]


class Kind(str, Enum):
    """What a change is about, in the order the executor applies kinds."""

    POLICY = "policy"
    HOST_ROLE = "host-role"
    HOST_TOKEN = "host-token"
    DIRECTORY = "directory"
    TOKEN = "token"
    TOKEN_RENEWAL = "token-renewal"
    TOKEN_FILE = "token-file"
    UNIT = "unit"
    TIMER = "timer"


KIND_ORDER: dict[Kind, int] = {kind: index for index, kind in enumerate(Kind)}


@dataclass(frozen=True)
class Change:
    action: Action
    kind: Kind
    name: str
    reason: str
    user: str | None = None
    needs_admin: bool = False
    """True when only a run with an admin Vault token can carry it out."""
    desired: object | None = field(default=None, compare=False, repr=False)
    """The desired record the executor needs (never rendered)."""
    observed: object | None = field(default=None, compare=False, repr=False)
    """The observed record the executor needs (never rendered)."""
    before_text: str | None = field(default=None, compare=False, repr=False)
    """Current text of a policy or unit for --diff; never a secret."""
    after_text: str | None = field(default=None, compare=False, repr=False)
    """Desired text of a policy or unit for --diff; never a secret."""

    def as_json(self) -> dict[str, str]:
        return {"action": self.action.value, "kind": self.kind.value, "name": self.name, "reason": self.reason}


@dataclass(frozen=True)
class UserProblem:
    """Something that stops one user from being reconciled (others still are)."""

    user: str
    message: str


Plan = tuple[Change, ...]


def is_pending(change: Change) -> bool:
    """Whether `apply` (without --prune) would act on this change."""
    return change.action is not Action.ORPHANED


DISPLAY_KINDS: tuple[Kind, ...] = (Kind.POLICY, Kind.TOKEN, Kind.TOKEN_RENEWAL, Kind.DIRECTORY, Kind.TOKEN_FILE,
                                   Kind.UNIT, Kind.TIMER)
"""A person's changes as people read them: Vault (policy, token), the home (folders, token file), systemd."""


def display_key(change: Change) -> tuple[bool, str, int, str]:
    """People in name order, each with all of their changes, then what everyone shares (user None).

    Within each group: by DISPLAY_KINDS (a kind not listed there goes after them, in
    Kind order), then by name. Like terraform's plan by resource address: the order
    depends only on the changes, never on the order the planners produced them in.
    """
    if change.kind in DISPLAY_KINDS:
        rank = DISPLAY_KINDS.index(change.kind)
    else:
        rank = len(DISPLAY_KINDS) + KIND_ORDER[change.kind]
    return (change.user is None, change.user or "", rank, change.name)


def sort_for_display(changes: tuple[Change, ...] | list[Change]) -> Plan:
    """The order `plan` prints and `--json` lists (sorted is stable: equal keys keep apply order)."""
    return tuple(sorted(changes, key=display_key))


def sort_for_apply(changes: tuple[Change, ...] | list[Change]) -> Plan:
    # By kind order (Kind's declaration order), then by name; the sort is stable. So every policy
    # change, removals included, runs before any token change (mint, re-mint or revoke).
    return tuple(sorted(changes, key=lambda c: (KIND_ORDER[c.kind], c.name)))
