"""`plan` lists changes in a stable, readable order (issue 13, item 4).

People in name order, each with all of their changes (policy, token, folders,
token file, drop-in, timer), then the units everyone shares; the same order for
`--json`, whatever order the planners produced the changes in. `apply` prints
its progress in the order changes are made; `apply --json` uses the plan's order.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

from reconcile.commands import render
from reconcile.engine.executor import Result
from reconcile.common.exitcodes import Exit
from reconcile.common.model import Action, Change, Kind, sort_for_apply
from tests.support.world import World

C, U, D, O = Action.CREATE, Action.UPDATE, Action.DELETE, Action.ORPHANED
HOME_CONF = ".service.d/home.conf"


def person(user: str, *kinds: Kind, action: Action = C) -> list[Change]:
    """The changes one person can have, named as the planners name them."""
    names = {
        Kind.POLICY: [f"workstation-claude-{user}"],
        Kind.TOKEN: [f"devvm-claude-auth-{user}"],
        Kind.TOKEN_RENEWAL: [f"devvm-claude-auth-{user}"],
        Kind.DIRECTORY: [f"{user}:~/.local/state/claude-auth-sync", f"{user}:~/.config/claude-auth-sync"],
        Kind.TOKEN_FILE: [f"{user}:~/.config/claude-auth-sync/vault-token"],
        Kind.UNIT: [f"claude-auth-sync@{user}{HOME_CONF}"],
        Kind.TIMER: [f"claude-auth-sync@{user}.timer"],
    }
    return [Change(action, kind, name, "why", user=user) for kind in kinds for name in names[kind]]


def shared(*items: tuple[Kind, str]) -> list[Change]:
    return [Change(C, kind, name, "why") for kind, name in items]


EVERY_KIND = (Kind.TIMER, Kind.UNIT, Kind.TOKEN_FILE, Kind.DIRECTORY, Kind.TOKEN, Kind.POLICY)
SHARED = shared((Kind.UNIT, "claude-auth-sync@.timer"), (Kind.TIMER, "claude-auth-reconcile.timer"),
                (Kind.UNIT, "claude-auth-reconcile.service"), (Kind.UNIT, "claude-auth-sync@.service"))


@dataclass(frozen=True)
class Case:
    id: str
    changes: list[Change]
    expected: list[str]
    """`<kind> <name>` of each change, in the order plan must print them."""


CASES = [
    Case("one-person-every-kind", person("alice", *EVERY_KIND), [
        "policy workstation-claude-alice",
        "token devvm-claude-auth-alice",
        "directory alice:~/.config/claude-auth-sync",
        "directory alice:~/.local/state/claude-auth-sync",
        "token-file alice:~/.config/claude-auth-sync/vault-token",
        f"unit claude-auth-sync@alice{HOME_CONF}",
        "timer claude-auth-sync@alice.timer",
    ]),
    Case("people-by-name-then-shared", [*SHARED, *person("dave", Kind.TIMER, Kind.POLICY),
                                        *person("alice", Kind.UNIT, Kind.POLICY), *person("bob", Kind.TOKEN)], [
        "policy workstation-claude-alice",
        f"unit claude-auth-sync@alice{HOME_CONF}",
        "token devvm-claude-auth-bob",
        "policy workstation-claude-dave",
        "timer claude-auth-sync@dave.timer",
        "unit claude-auth-reconcile.service",
        "unit claude-auth-sync@.service",
        "unit claude-auth-sync@.timer",
        "timer claude-auth-reconcile.timer",
    ]),
    Case("only-shared", SHARED, [
        "unit claude-auth-reconcile.service",
        "unit claude-auth-sync@.service",
        "unit claude-auth-sync@.timer",
        "timer claude-auth-reconcile.timer",
    ]),
    # Names that sort differently from their owners: `_svc` before `alice`, `erin_b` after `erin`.
    Case("owner-not-name", [*person("erin_b", Kind.POLICY), *person("erin", Kind.TIMER),
                            *person("_svc", Kind.DIRECTORY)], [
        "directory _svc:~/.config/claude-auth-sync",
        "directory _svc:~/.local/state/claude-auth-sync",
        "timer claude-auth-sync@erin.timer",
        "policy workstation-claude-erin_b",
    ]),
    Case("renewal-with-the-token", [*person("bob", Kind.TIMER), *person("bob", Kind.TOKEN_RENEWAL, action=U),
                                    *person("alice", Kind.TOKEN_RENEWAL, action=U)], [
        "token-renewal devvm-claude-auth-alice",
        "token-renewal devvm-claude-auth-bob",
        "timer claude-auth-sync@bob.timer",
    ]),
    # Leftovers of someone no longer in the roster sit in their own name's place.
    Case("orphans-grouped", [*person("alice", Kind.POLICY), *person("carl", Kind.TIMER, Kind.UNIT, action=O),
                             *person("carl", Kind.TOKEN, Kind.POLICY, action=O), *person("bob", Kind.POLICY)], [
        "policy workstation-claude-alice",
        "policy workstation-claude-bob",
        "policy workstation-claude-carl",
        "token devvm-claude-auth-carl",
        f"unit claude-auth-sync@carl{HOME_CONF}",
        "timer claude-auth-sync@carl.timer",
    ]),
    Case("pruned", [*person("carl", Kind.TIMER, Kind.UNIT, Kind.TOKEN, Kind.POLICY, action=D), *SHARED[:1]], [
        "policy workstation-claude-carl",
        "token devvm-claude-auth-carl",
        f"unit claude-auth-sync@carl{HOME_CONF}",
        "timer claude-auth-sync@carl.timer",
        "unit claude-auth-sync@.timer",
    ]),
]


def _shown(lines: list[str]) -> list[str]:
    """`<kind> <name>` of each change line (symbol and reason dropped)."""
    return [line.split(" ", 1)[1].rsplit(": ", 1)[0] for line in lines if line[:2] in ("+ ", "~ ", "- ", "! ")]


def test_cases_are_distinct() -> None:
    assert len({case.id for case in CASES}) == len(CASES)
    for case in CASES:
        assert len(case.expected) == len(case.changes)


def test_plan_prints_people_in_name_order_each_together_then_shared() -> None:
    for case in CASES:
        # Whatever order the planners produce: as they come, in apply order, and shuffled.
        orders = [case.changes, list(sort_for_apply(case.changes)), list(reversed(case.changes))]
        for seed in range(5):
            shuffled = list(case.changes)
            random.Random(seed).shuffle(shuffled)
            orders.append(shuffled)
        for changes in orders:
            plan = tuple(changes)
            assert _shown(render.plan_text(plan).splitlines()) == case.expected, case.id
            assert [f"{item['kind']} {item['name']}" for item in json.loads(render.plan_json(plan))] \
                == case.expected, case.id
            diff = render.plan_text(plan, diff=True).splitlines()
            assert _shown([line for line in diff if not line.startswith("    ")]) == case.expected, case.id


def test_apply_json_lists_changes_and_results_in_the_plan_order() -> None:
    case = next(c for c in CASES if c.id == "people-by-name-then-shared")
    plan = sort_for_apply(case.changes)
    results = [Result(change, ok=True, message="done") for change in plan]  # as the executor reports them
    document = json.loads(render.apply_json(plan, results, warnings=[], errors=[]))
    assert [f"{c['kind']} {c['name']}" for c in document["changes"]] == case.expected
    assert [f"{r['kind']} {r['name']}" for r in document["results"]] == case.expected


def test_no_changes_still_reads_no_changes() -> None:
    assert render.plan_text(()) == "No changes."
    assert json.loads(render.plan_json(())) == []


# --- the real thing: OpenBao, --root, the planners' own output ---------------------------------------

KIND_RANK = ["policy", "token", "token-renewal", "directory", "token-file", "unit", "timer", "host-role", "host-token"]


def owner_of(shown: str, prefix: str) -> str | None:
    """The person a change line is about, read from its name alone (None: shared by everyone)."""
    kind, name = shown.split(" ", 1)
    patterns = {
        "policy": rf"{re.escape(prefix)}(.+)",
        "token": r"devvm-claude-auth-(.+)",
        "token-renewal": r"devvm-claude-auth-(.+)",
        "directory": r"([^:]+):.*",
        "token-file": r"([^:]+):.*",
        "unit": r"claude-auth-(?:sync@(.+)\.service|backup@(.+)\.(?:service|path))\.d/.*",
        "timer": r"claude-auth-(?:sync@(.+)\.timer|backup@(.+)\.path)",
        "host-role": r"(?!)",
        "host-token": r"(?!)",
    }
    match = re.fullmatch(patterns[kind], name)
    return next((group for group in match.groups() if group), None) if match else None


def assert_grouped(shown: list[str], prefix: str) -> None:
    owners = [owner_of(line, prefix) for line in shown]
    blocks = [owner for index, owner in enumerate(owners) if index == 0 or owners[index - 1] != owner]
    assert len(blocks) == len(set(blocks)), f"a person's changes are split: {shown}"
    assert blocks == sorted(blocks, key=lambda o: (o is None, o or "")), f"not in name order, shared last: {shown}"
    for block in blocks:
        ranks = [KIND_RANK.index(line.split(" ", 1)[0]) for line, o in zip(shown, owners) if o == block]
        assert ranks == sorted(ranks), f"{block}: kinds out of order: {shown}"


def test_a_real_plan_is_grouped_and_its_json_agrees(world: World) -> None:
    world.write_roster({"erin_b": {}, "bob": {"parked": True}, "carol": {"claude_auth": False}, "alice": {}})

    plan = world.run("plan")
    assert plan.code == Exit.CHANGES_PENDING, plan.err
    shown = _shown(plan.lines)
    assert len(shown) >= 20
    assert_grouped(shown, world.prefix)
    assert shown[:2] == [f"policy {world.prefix}alice", "token devvm-claude-auth-alice"]
    assert {owner_of(line, world.prefix) for line in shown[-3:]} == {None}  # the shared units come last

    as_json = world.run("plan", "--json")
    assert [f"{c['kind']} {c['name']}" for c in json.loads(as_json.out)] == shown

    applied = world.run("apply", "--json")
    assert applied.code == Exit.OK, applied.err
    document = json.loads(applied.out)
    assert [f"{c['kind']} {c['name']}" for c in document["changes"]] == shown
    assert [f"{r['kind']} {r['name']}" for r in document["results"]] == shown
    world.assert_converged()


def test_a_real_apply_prints_progress_in_the_order_it_works(world: World) -> None:
    # Every policy is written before any token is minted (a token carries its policy), and
    # every unit before the timers are enabled: the lines say how far a run got.
    world.write_roster({"bob": {}, "alice": {}})
    applied = world.run("apply")
    assert applied.code == Exit.OK, applied.err
    kinds = [line.split(" ", 1)[0] for line in _shown(applied.lines)]
    assert kinds.index("token") > max(i for i, kind in enumerate(kinds) if kind == "policy")
    assert kinds.index("timer") > max(i for i, kind in enumerate(kinds) if kind == "unit")
