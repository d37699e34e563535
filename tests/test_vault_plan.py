"""Table-driven tests of the pure Vault planner: (roster, observed) -> changes.

Each scenario is literal values only: no Vault, no disk. No-op scenarios are
included: a converged world plans nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Callable

import pytest

from reconcile.commands import render
from reconcile.engine.connect import admin_probe_paths, is_admin
from reconcile.engine.executor import Result
from reconcile.common.model import Action, Change, Kind, is_pending
from reconcile.engine.planner import Desired, Observed, make_plan
from reconcile.roster.values import Roster, User, VaultSettings
from reconcile.vault.values import Secret, TokenInfo
from reconcile.common.identity import vault_display_name
from reconcile.vault.apply import TokenOutcomes, next_pending, next_records
from reconcile.vault.desired import desired_vault, is_managed_policy, is_tool_policy, policy_header
from reconcile.vault.observe import (ObservedToken, ObservedVault, PendingRevoke, RecordedToken, TokenState,
                                     parse_token_file)
from reconcile.vault.plan import MintOrder, RevokeOrder, plan_vault
from tests.support.policy_text import expected_policy

HOST = "ws1"
PERIOD = 768 * 3600
ROSTER = Roster(
    users={"alice": User("alice"), "bob": User("bob", parked=True), "carol": User("carol", claude_auth=False)},
    vault=VaultSettings(policy_prefix="workstation-claude-"),
)
DESIRED = desired_vault(ROSTER, HOST)
POLICY_TEXT = {name: policy.text for name, policy in DESIRED.policies.items()}
DAVE_TEXT = desired_vault(Roster(users={"dave": User("dave")}, vault=ROSTER.vault), HOST).policies[
    "workstation-claude-dave"].text
"""What this tool wrote for dave, a user no longer in the roster."""
HAND_MADE = 'path "secret/data/admins/*" {\n  capabilities = ["read"]\n}\n'


def info(user: str, *, accessor: str | None = None, ttl: int = PERIOD, **overrides: object) -> TokenInfo:
    """A lookup of the token this tool mints for `user`, with `overrides` applied."""
    base = TokenInfo(
        accessor=accessor or f"acc-{user}", display_name=f"token-devvm-claude-auth-{user}",
        policies=(f"workstation-claude-{user}",), orphan=True, period_seconds=PERIOD, ttl_seconds=ttl,
        meta=MappingProxyType({"managed_by": "claude-auth", "user": user, "host": HOST}),
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def valid(user: str, **kw: Any) -> ObservedToken:
    return ObservedToken(user, TokenState.VALID, info=info(user, **kw), token=Secret(f"s.{user}"))


def converged(**changes: object) -> ObservedVault:
    """The world after a successful apply, with some fields replaced."""
    world = dict(
        admin=True,
        policies=dict(POLICY_TEXT),
        tokens={"alice": valid("alice"), "bob": valid("bob")},
        recorded={"alice": RecordedToken("alice", "acc-alice"), "bob": RecordedToken("bob", "acc-bob")},
    )
    world.update(changes)
    return ObservedVault(**world)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Expect:
    action: Action
    kind: Kind
    name: str
    reason_has: str = ""
    needs_admin: bool = True
    check: Callable[[Change], bool] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Scenario:
    id: str
    observed: ObservedVault
    expected: tuple[Expect, ...]
    prune: bool = False


def _policies(**replace_text: str | None) -> dict[str, str]:
    out = dict(POLICY_TEXT)
    for user, text in replace_text.items():
        name = f"workstation-claude-{user}"
        if text is None:
            out.pop(name)
        else:
            out[name] = text
    return out


def _revokes(*accessors: str) -> Callable[[Change], bool]:
    def check(change: Change) -> bool:
        return isinstance(change.desired, MintOrder) and change.desired.revoke == accessors
    return check


ALICE_TOKEN = "devvm-claude-auth-alice"
SCENARIOS = [
    Scenario("no-op: converged world plans nothing", converged(), ()),
    Scenario("no-op: TTL exactly half the period is not renewed",
             converged(tokens={"alice": valid("alice", ttl=PERIOD // 2), "bob": valid("bob")}), ()),
    Scenario("no-op: policies outside the prefix and root/default are ignored",
             converged(policies={**POLICY_TEXT, "default": "x", "root": "", "other-team-alice": "x"}), ()),
    Scenario("no-op (hourly): policies unreadable are not planned, tokens checked by lookup-self",
             converged(admin=False, policies=None), ()),
    Scenario(
        "fresh Vault: every policy and token (parked too, claude_auth false gets a policy only)",
        ObservedVault(admin=True, policies={}, recorded={},
                      tokens={"alice": ObservedToken("alice", TokenState.NO_FILE),
                              "bob": ObservedToken("bob", TokenState.NO_FILE)}),
        (Expect(Action.CREATE, Kind.POLICY, "workstation-claude-alice"),
         Expect(Action.CREATE, Kind.POLICY, "workstation-claude-bob"),
         Expect(Action.CREATE, Kind.POLICY, "workstation-claude-carol"),
         Expect(Action.CREATE, Kind.TOKEN, ALICE_TOKEN, "no token yet", check=_revokes()),
         Expect(Action.CREATE, Kind.TOKEN, "devvm-claude-auth-bob", "no token yet")),
    ),
    Scenario("policy text edited by hand", converged(policies=_policies(alice="path \"*\" {}\n")),
             (Expect(Action.UPDATE, Kind.POLICY, "workstation-claude-alice", "differs",
                     check=lambda c: c.before_text == 'path "*" {}\n' and c.after_text == POLICY_TEXT[c.name]),)),
    Scenario("policy deleted", converged(policies=_policies(bob=None)),
             (Expect(Action.CREATE, Kind.POLICY, "workstation-claude-bob"),)),
    Scenario("token file deleted: re-mint, revoke the recorded token (it is ours)",
             converged(tokens={"alice": ObservedToken("alice", TokenState.NO_FILE), "bob": valid("bob")},
                       recorded={"alice": RecordedToken("alice", "acc-old", True, info("alice", accessor="acc-old")),
                                 "bob": RecordedToken("bob", "acc-bob")}),
             (Expect(Action.UPDATE, Kind.TOKEN, ALICE_TOKEN, "token file is missing", check=_revokes("acc-old")),)),
    Scenario("token file deleted, recorded token gone too: a plain create",
             converged(tokens={"alice": ObservedToken("alice", TokenState.NO_FILE), "bob": valid("bob")},
                       recorded={"alice": RecordedToken("alice", "acc-old", True, None),
                                 "bob": RecordedToken("bob", "acc-bob")}),
             (Expect(Action.CREATE, Kind.TOKEN, ALICE_TOKEN, "no token yet", check=_revokes()),)),
    Scenario("token revoked or expired (admin lookup: bad token)",
             converged(tokens={"alice": ObservedToken("alice", TokenState.DEAD, token=Secret("s.x")),
                               "bob": valid("bob")},
                       recorded={"alice": RecordedToken("alice", "acc-alice", True, None),
                                 "bob": RecordedToken("bob", "acc-bob")}),
             (Expect(Action.UPDATE, Kind.TOKEN, ALICE_TOKEN, "expired, revoked", check=_revokes()),)),
    Scenario("token file unreadable (planted link)",
             converged(tokens={"alice": ObservedToken("alice", TokenState.UNREADABLE, detail="a symbolic link"),
                               "bob": valid("bob")}),
             (Expect(Action.UPDATE, Kind.TOKEN, ALICE_TOKEN, "unreadable (a symbolic link)"),)),
    Scenario("file holds bob's token: re-mint alice, never revoke bob's, revoke alice's recorded one",
             converged(tokens={"alice": valid("bob"), "bob": valid("bob")},
                       recorded={"alice": RecordedToken("alice", "acc-alice", True, info("alice")),
                                 "bob": RecordedToken("bob", "acc-bob")}),
             (Expect(Action.UPDATE, Kind.TOKEN, ALICE_TOKEN, "policies are [workstation-claude-bob]",
                     check=_revokes("acc-alice")),)),
    Scenario("token with an extra policy (ours by metadata: revoked after re-mint)",
             converged(tokens={"alice": valid("alice", accessor="acc-x",
                                              policies=("root-ish", "workstation-claude-alice")),
                               "bob": valid("bob")},
                       recorded={"alice": RecordedToken("alice", "acc-x"), "bob": RecordedToken("bob", "acc-bob")}),
             (Expect(Action.UPDATE, Kind.TOKEN, ALICE_TOKEN, "policies are [root-ish, workstation-claude-alice]",
                     check=_revokes("acc-x")),)),
    Scenario("token not an orphan",
             converged(tokens={"alice": valid("alice", orphan=False), "bob": valid("bob")}),
             (Expect(Action.UPDATE, Kind.TOKEN, ALICE_TOKEN, "not an orphan"),)),
    Scenario("token period differs",
             converged(tokens={"alice": valid("alice", period_seconds=3600), "bob": valid("bob")}),
             (Expect(Action.UPDATE, Kind.TOKEN, ALICE_TOKEN, "period is 1h, want 32d"),)),
    Scenario("token display name differs",
             converged(tokens={"alice": valid("alice", display_name="token-someone"), "bob": valid("bob")}),
             (Expect(Action.UPDATE, Kind.TOKEN, ALICE_TOKEN, "display name is token-someone"),)),
    Scenario("low TTL: renewal, no admin needed",
             converged(tokens={"alice": valid("alice", ttl=PERIOD // 2 - 1), "bob": valid("bob")}),
             (Expect(Action.UPDATE, Kind.TOKEN_RENEWAL, ALICE_TOKEN, "below half the period", needs_admin=False,
                     check=lambda c: isinstance(c.observed, ObservedToken) and c.observed.token == Secret("s.alice")),)),
    Scenario("hourly: token refused its lookup-self needs an admin re-mint",
             converged(admin=False, policies=None,
                       tokens={"alice": ObservedToken("alice", TokenState.REFUSED), "bob": valid("bob")}),
             (Expect(Action.UPDATE, Kind.TOKEN, ALICE_TOKEN, "lookup-self"),)),
    Scenario("hourly: missing file with an unchecked record is a re-mint, not a create",
             converged(admin=False, policies=None,
                       tokens={"alice": ObservedToken("alice", TokenState.NO_FILE), "bob": valid("bob")}),
             (Expect(Action.UPDATE, Kind.TOKEN, ALICE_TOKEN, "missing", check=_revokes()),)),
    Scenario("offboarded user without --prune: orphaned policy and token",
             converged(policies={**POLICY_TEXT, "workstation-claude-dave": DAVE_TEXT},
                       recorded={"alice": RecordedToken("alice", "acc-alice"), "bob": RecordedToken("bob", "acc-bob"),
                                 "dave": RecordedToken("dave", "acc-dave", True, info("dave"))}),
             (Expect(Action.ORPHANED, Kind.POLICY, "workstation-claude-dave", "user dave is not in the roster"),
              Expect(Action.ORPHANED, Kind.TOKEN, "devvm-claude-auth-dave", "apply --prune"))),
    Scenario("offboarded user with --prune: delete policy, revoke token",
             converged(policies={**POLICY_TEXT, "workstation-claude-dave": DAVE_TEXT},
                       recorded={"alice": RecordedToken("alice", "acc-alice"), "bob": RecordedToken("bob", "acc-bob"),
                                 "dave": RecordedToken("dave", "acc-dave", True, info("dave"))}),
             (Expect(Action.DELETE, Kind.POLICY, "workstation-claude-dave", "not in the roster; delete"),
              Expect(Action.DELETE, Kind.TOKEN, "devvm-claude-auth-dave", "revoke",
                     check=lambda c: c.desired == RevokeOrder("dave", "acc-dave"))),
             prune=True),
    Scenario("offboarded user, hourly (record unchecked): still listed as orphaned",
             converged(admin=False, policies=None,
                       recorded={"alice": RecordedToken("alice", "acc-alice"), "bob": RecordedToken("bob", "acc-bob"),
                                 "dave": RecordedToken("dave", "acc-dave")}),
             (Expect(Action.ORPHANED, Kind.TOKEN, "devvm-claude-auth-dave"),)),
    Scenario("offboarded user whose token is gone, or not ours: nothing to revoke",
             converged(recorded={"alice": RecordedToken("alice", "acc-alice"), "bob": RecordedToken("bob", "acc-bob"),
                                 "dave": RecordedToken("dave", "acc-dave", True, None),
                                 "erin": RecordedToken("erin", "acc-erin", True, info("someone"))}),
             (), prune=True),
    Scenario("claude_auth false with a live recorded token: revoked without --prune",
             converged(recorded={"alice": RecordedToken("alice", "acc-alice"), "bob": RecordedToken("bob", "acc-bob"),
                                 "carol": RecordedToken("carol", "acc-carol", True, info("carol"))}),
             (Expect(Action.DELETE, Kind.TOKEN, "devvm-claude-auth-carol", "claude_auth is false"),)),
    Scenario("a user without an observed token (no account) is skipped",
             converged(tokens={"bob": valid("bob")}), ()),
    # Only policies this tool wrote are orphaned or deleted (name a user name, text with the header).
    Scenario("hand-made policies under the prefix are never orphaned, even with --prune",
             converged(policies={**POLICY_TEXT,
                                 "workstation-claude-admins": HAND_MADE,  # no header
                                 "workstation-claude-ops": DAVE_TEXT,  # header names another user
                                 "workstation-claude-davey": DAVE_TEXT,  # header of dave: a prefix of davey
                                 "workstation-claude-a.b": DAVE_TEXT.replace("user dave", "user a.b"),  # not a user name
                                 "workstation-claude-dave": DAVE_TEXT.replace("# Managed", "#  Managed")}),
             (), prune=True),
    Scenario("a foreign policy named for a roster user is still brought to the template",
             converged(policies=_policies(alice=HAND_MADE)),
             (Expect(Action.UPDATE, Kind.POLICY, "workstation-claude-alice", "differs",
                     check=lambda c: c.before_text == HAND_MADE),)),
    Scenario("the tool's header, edited below, still marks a policy as the tool's",
             converged(policies={**POLICY_TEXT, "workstation-claude-dave": DAVE_TEXT.split("\n")[0] + "\nx\n"}),
             (Expect(Action.DELETE, Kind.POLICY, "workstation-claude-dave", "not in the roster; delete"),),
             prune=True),
    # Replaced tokens the state file keeps until they are revoked.
    Scenario("a pending replaced token still alive and ours is revoked (admin), whoever it was for",
             converged(pending={"acc-old": PendingRevoke("acc-old", True, info("alice", accessor="acc-old")),
                                "acc-dave": PendingRevoke("acc-dave", True, info("dave", accessor="acc-dave"))}),
             (Expect(Action.DELETE, Kind.TOKEN, ALICE_TOKEN, "replaced token still alive; revoke",
                     check=lambda c: c.desired == RevokeOrder("alice", "acc-old")),
              Expect(Action.DELETE, Kind.TOKEN, "devvm-claude-auth-dave", "replaced token still alive",
                     check=lambda c: c.desired == RevokeOrder("dave", "acc-dave")))),
    Scenario("pending tokens gone, not ours, unchecked (hourly) or in use are not revoked",
             converged(pending={"acc-gone": PendingRevoke("acc-gone", True, None),
                                "acc-x": PendingRevoke("acc-x", True, replace(info("alice", accessor="acc-x"),
                                                                             meta=MappingProxyType({}))),
                                "acc-u": PendingRevoke("acc-u"),
                                "acc-alice": PendingRevoke("acc-alice", True, info("alice"))}),
             ()),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_plan_vault(scenario: Scenario) -> None:
    changes = plan_vault(DESIRED, scenario.observed, prune=scenario.prune)
    got = sorted(changes, key=lambda c: (c.kind.value, c.name))
    want = sorted(scenario.expected, key=lambda e: (e.kind.value, e.name))
    assert [(c.action, c.kind, c.name) for c in got] == [(e.action, e.kind, e.name) for e in want]
    for change, expect in zip(got, want):
        assert expect.reason_has in change.reason
        assert change.needs_admin is expect.needs_admin
        if expect.check is not None:
            assert expect.check(change), change
        assert "s.alice" not in change.reason and "s.bob" not in change.reason


def test_plan_is_pure_and_repeatable() -> None:
    observed = converged(policies=_policies(alice="x"))
    first = make_plan(Desired(DESIRED), Observed(observed), prune=False)
    second = make_plan(Desired(DESIRED), Observed(observed), prune=False)
    assert first == second and isinstance(first, tuple)


def test_desired_state() -> None:
    assert set(DESIRED.policies) == {"workstation-claude-alice", "workstation-claude-bob", "workstation-claude-carol"}
    assert set(DESIRED.tokens) == {"alice", "bob"}  # parked bob keeps his token; carol has none
    alice = DESIRED.tokens["alice"]
    assert alice.policy == "workstation-claude-alice"
    assert alice.display_name == "devvm-claude-auth-alice"
    assert alice.vault_display_name == "token-devvm-claude-auth-alice"
    assert (alice.period, alice.period_seconds) == ("768h", PERIOD)
    assert dict(alice.meta) == {"managed_by": "claude-auth", "user": "alice", "host": HOST}
    # The whole text, exactly: an extra stanza or a wider path must not slip through.
    assert DESIRED.policies["workstation-claude-alice"].text == expected_policy(
        "alice", "workstation/claude-users/alice")


def test_policy_prefix_is_lower_cased_like_vault() -> None:
    roster = Roster(users={"alice": User("alice")}, vault=VaultSettings(policy_prefix="WS-"))
    assert set(desired_vault(roster, HOST).policies) == {"ws-alice"}


@pytest.mark.parametrize("name,prefix,managed", [
    ("workstation-claude-alice", "workstation-claude-", True),
    ("workstation-claude-", "workstation-claude-", False),
    ("other-workstation-claude-alice", "workstation-claude-", False),
    ("default", "", False), ("root", "r", False), ("anything", "", False),
])
def test_is_managed_policy(name: str, prefix: str, managed: bool) -> None:
    assert is_managed_policy(name, prefix) is managed


@pytest.mark.parametrize("name,text,tool", [
    ("workstation-claude-dave", DAVE_TEXT, True),
    ("workstation-claude-dave", "# Managed by claude-auth for user dave", True),
    ("workstation-claude-dave", "# Managed by claude-auth for user dave\n", True),
    ("workstation-claude-admins", HAND_MADE, False),
    ("workstation-claude-admins", "# Managed by claude-auth for user dave;\n", False),
    ("workstation-claude-dav", DAVE_TEXT, False),  # `user dave` starts with `user dav`: not enough
    ("workstation-claude-a.b", "# Managed by claude-auth for user a.b;\n", False),  # not a POSIX user name
    ("workstation-claude-" + "a" * 33, f"# Managed by claude-auth for user {'a' * 33};", False),  # too long
    ("workstation-claude-dave", "\n" + DAVE_TEXT, False),  # the header must be the first line
    ("other-dave", DAVE_TEXT, False),
])
def test_is_tool_policy(name: str, text: str, tool: bool) -> None:
    assert is_tool_policy(name, text, "workstation-claude-") is tool


def test_the_policy_template_starts_with_the_header() -> None:
    for name, policy in DESIRED.policies.items():
        assert policy.text.split("\n")[0].startswith(policy_header(policy.user) + ";")
        assert is_tool_policy(name, policy.text, DESIRED.policy_prefix)


@pytest.mark.parametrize("requested,shown", [
    ("devvm-claude-auth-alice", "token-devvm-claude-auth-alice"),
    ("devvm-claude-auth-a_b", "token-devvm-claude-auth-a-b"),
    ("devvm-claude-auth-bob_", "token-devvm-claude-auth-bob"),
])
def test_vault_display_name(requested: str, shown: str) -> None:
    assert vault_display_name(requested) == shown


@pytest.mark.parametrize("raw,ok", [(b"s.abc\n", True), (b"  hvs.xyz  ", True), (b"", False), (b"\n", False),
                                    (b"two words", False), (b"\xff\xfe", False)])
def test_parse_token_file(raw: bytes, ok: bool) -> None:
    assert (parse_token_file(raw) is not None) is ok


def test_next_records() -> None:
    observed = converged(
        tokens={"alice": ObservedToken("alice", TokenState.NO_FILE), "bob": valid("bob", accessor="acc-bob2")},
        recorded={"alice": RecordedToken("alice", "acc-a-old", True, info("alice")),
                  "bob": RecordedToken("bob", "acc-bob", True, None),
                  "carol": RecordedToken("carol", "acc-carol", True, None),
                  "dave": RecordedToken("dave", "acc-dave"),
                  "erin": RecordedToken("erin", "acc-erin", True, info("erin"))})
    records = {"alice": "acc-a-old", "bob": "acc-bob", "carol": "acc-carol", "dave": "acc-dave", "erin": "acc-erin"}
    outcomes = TokenOutcomes(minted={"alice": "acc-a-new"}, revoked={"acc-a-old", "acc-erin"})
    assert next_records(records, DESIRED, observed, outcomes) == {
        "alice": "acc-a-new",  # minted this run
        "bob": "acc-bob2",  # the valid token of ours in the file
        "dave": "acc-dave",  # unchecked: kept for apply --prune
    }


def test_next_pending() -> None:
    """Replaced tokens are remembered until revoked or gone; the tokens in use never are."""
    observed = converged(
        tokens={"alice": valid("alice", accessor="acc-a-file"), "bob": valid("bob", accessor="acc-b-new")},
        recorded={"alice": RecordedToken("alice", "acc-a-rec", True, info("alice", accessor="acc-a-rec")),
                  "bob": RecordedToken("bob", "acc-b-rec", True, None),
                  "erin": RecordedToken("erin", "acc-erin", True, info("erin"))},
        pending={"acc-p-gone": PendingRevoke("acc-p-gone", True, None),
                 "acc-p-live": PendingRevoke("acc-p-live", True, info("alice", accessor="acc-p-live")),
                 "acc-p-revoked": PendingRevoke("acc-p-revoked", True, info("alice", accessor="acc-p-revoked")),
                 "acc-p-foreign": PendingRevoke("acc-p-foreign", True, replace(info("x"), meta=MappingProxyType({}))),
                 "acc-p-hourly": PendingRevoke("acc-p-hourly")})
    records = {"alice": "acc-a-rec", "bob": "acc-b-rec", "erin": "acc-erin"}
    outcomes = TokenOutcomes(revoked={"acc-p-revoked"}, unrevoked={"acc-failed"})
    new_records = next_records(records, DESIRED, observed, outcomes)
    assert new_records == {"alice": "acc-a-file", "bob": "acc-b-new", "erin": "acc-erin"}
    assert next_pending(sorted(observed.pending), records, new_records, observed, outcomes) == (
        "acc-a-rec",  # alice's recorded token, still ours and alive, replaced by the one in her file
        "acc-failed",  # its revocation failed after a mint this run
        "acc-p-hourly",  # not checked (no admin): kept
        "acc-p-live",  # still alive: kept for the next run
    )  # dropped: gone, revoked, not ours; bob's record is gone so nothing to remember


def test_next_pending_hourly_keeps_an_unchecked_replaced_record() -> None:
    observed = converged(admin=False, policies=None,
                         tokens={"alice": valid("alice", accessor="acc-new"), "bob": valid("bob")})
    records = {"alice": "acc-alice", "bob": "acc-bob"}
    new_records = next_records(records, DESIRED, observed, TokenOutcomes())
    assert new_records["alice"] == "acc-new"
    assert next_pending((), records, new_records, observed, TokenOutcomes()) == ("acc-alice",)


def test_next_pending_no_op_is_empty() -> None:
    records = {"alice": "acc-alice", "bob": "acc-bob"}
    assert next_pending((), records, records, converged(), TokenOutcomes()) == ()


def test_next_records_no_op_is_unchanged() -> None:
    records = {"alice": "acc-alice", "bob": "acc-bob"}
    assert next_records(records, DESIRED, converged(), TokenOutcomes()) == records


@pytest.mark.parametrize("caps,admin", [
    ({"p": ("root",), "m": ("root",)}, True),
    ({"p": ("create", "update"), "m": ("update", "sudo")}, True),
    ({"p": ("create", "update"), "m": ("update",)}, False),  # cannot mint tokens with other policies
    ({"p": ("read",), "m": ("update", "sudo")}, False),
    ({"p": ("deny",), "m": ("deny",)}, False),
])
def test_is_admin(caps: dict[str, tuple[str, ...]], admin: bool) -> None:
    policy_path, mint_path = admin_probe_paths("ws-")
    assert is_admin({policy_path: caps["p"], mint_path: caps["m"]}, "ws-") is admin


# --- views --------------------------------------------------------------------------------------


def _plan(observed: ObservedVault, prune: bool = False) -> tuple[Change, ...]:
    return make_plan(Desired(DESIRED), Observed(observed), prune=prune)


def test_human_plan_view() -> None:
    plan = _plan(converged(policies=_policies(alice="old\n", bob=None),
                           tokens={"alice": valid("alice", ttl=10), "bob": ObservedToken("bob", TokenState.DEAD)}))
    assert render.plan_text(plan).splitlines() == [
        "~ policy workstation-claude-alice: text differs from the template",
        "~ token-renewal devvm-claude-auth-alice: TTL 10s is below half the period (32d); renew",
        "+ policy workstation-claude-bob: no policy yet for user bob",
        "~ token devvm-claude-auth-bob: token is expired, revoked or unknown; re-mint",
        "Plan: 1 to add, 3 to change, 0 to remove.",
    ]


def test_human_plan_diff_shows_policy_text() -> None:
    plan = _plan(converged(policies=_policies(alice="old line\n")))
    lines = render.plan_text(plan, diff=True).splitlines()
    assert "    -old line" in lines
    assert any(line.startswith("    +path \"secret/data/workstation/claude-users/alice\"") for line in lines)


def test_no_changes_view_and_orphans_are_not_pending() -> None:
    assert render.plan_text(_plan(converged())) == "No changes."
    orphaned = _plan(converged(policies={**POLICY_TEXT, "workstation-claude-dave": DAVE_TEXT}))
    assert not any(is_pending(c) for c in orphaned)
    assert render.plan_text(orphaned).splitlines() == [
        "! policy workstation-claude-dave: user dave is not in the roster (apply --prune removes the policy)",
        "1 orphaned (users no longer in the roster): `apply --prune` removes them.",
        "No changes.",
    ]


def test_json_views_have_exact_keys() -> None:
    plan = _plan(converged(policies=_policies(bob=None)))
    assert json.loads(render.plan_json(plan)) == [
        {"action": "create", "kind": "policy", "name": "workstation-claude-bob",
         "reason": "no policy yet for user bob"}]
    result = Result(plan[0], ok=False, message="needs an admin run", blocked=True)
    document = json.loads(render.apply_json(plan, [result], warnings=["bob: x"], errors=[]))
    assert set(document) == {"changes", "results", "warnings", "errors"}
    assert document["results"] == [{"name": "workstation-claude-bob", "kind": "policy", "action": "create",
                                    "ok": False, "error": "needs an admin run"}]
