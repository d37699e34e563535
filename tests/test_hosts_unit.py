"""Pure host-identity planning (reconcile.vault.hosts, plan's host grants and rotation): no Vault here.
The real thing, against OpenBao, is tests/test_host_identity.py and tests/test_crash_host.py."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from reconcile.common.model import Action, Kind
from reconcile.roster.values import Roster, User
from reconcile.vault.desired import desired_vault
from reconcile.vault.hosts import (HostTokenState, ObservedHostToken, ObservedHosts, desired_host,
                                   enrolled_hosts, host_grants, host_of_policy, plan_hosts, role_drift)
from reconcile.vault.observe import ObservedToken, ObservedVault, PendingRevoke, TokenState
from reconcile.vault.plan import MintOrder, plan_pending, plan_token, plan_tokens, token_drift
from reconcile.vault.values import Secret, TokenInfo

ROSTER = Roster(users={"alice": User("alice", hosts=("ws1",)), "bob": User("bob", hosts=("ws2",)),
                       "carol": User("carol"), "dave": User("dave", claude_auth=False)})
PREFIX = "workstation-claude-"


def host_info(host: str = "ws1", ttl: int = 768 * 3600, **meta: str) -> TokenInfo:
    return TokenInfo(accessor="acc-host", display_name="token-claude-auth-host-ws1",
                     policies=(f"{PREFIX}host.{host}",), orphan=True, period_seconds=768 * 3600, ttl_seconds=ttl,
                     meta=MappingProxyType({"managed_by": "claude-auth", "kind": "host", "host": host, **meta}))


def test_a_role_allows_exactly_the_policies_of_the_people_assigned_to_its_host() -> None:
    ws1 = desired_host(ROSTER, "ws1")
    assert ws1.role == f"{PREFIX}host.ws1"
    assert ws1.allowed_policies == (f"{PREFIX}alice", f"{PREFIX}carol")  # not bob's, not dave's (no token)
    fields = ws1.role_fields()
    assert fields["orphan"] and fields["token_no_default_policy"] and fields["token_period"] == 768 * 3600
    assert fields["disallowed_policies"] == sorted(["default", ws1.role])
    nobody = desired_host(Roster(users={"bob": User("bob", hosts=("ws2",))}), "ws1")
    assert nobody.allowed_policies == (f"{PREFIX}host.ws1.none",)  # never an empty list: that allows all


def test_role_drift_names_what_differs() -> None:
    want = desired_host(ROSTER, "ws1")
    have = dict(want.role_fields())
    assert role_drift(want, have) == []
    assert role_drift(want, {**have, "allowed_policies": [*want.allowed_policies, f"{PREFIX}bob"]}) == [
        "allows 3 policies, want 2"]
    assert role_drift(want, {**have, "orphan": False}) == ["orphan differs"]
    assert role_drift(want, {**have, "allowed_policies_glob": ["*"]}) == ["allowed_policies_glob differs"]


def test_enrolled_hosts_come_from_the_host_policies_this_tool_wrote() -> None:
    ws1 = desired_host(ROSTER, "WS-One")
    assert host_of_policy(ws1.role, ws1.policy_text, PREFIX) == "WS-One"  # the role name is lower-cased
    assert enrolled_hosts({ws1.role: ws1.policy_text, f"{PREFIX}host.x": "# by hand\n"}, PREFIX) == ["WS-One"]


def test_the_host_token_is_minted_renewed_or_re_minted() -> None:
    want = desired_host(ROSTER, "ws1")
    plan = lambda token: plan_hosts({"ws1": want}, ObservedHosts({want.role: want.policy_text},  # noqa: E731
                                                                 {want.role: want.role_fields()}, token),
                                    this_host="ws1")
    assert [(c.action, c.kind, c.needs_admin) for c in plan(ObservedHostToken(HostTokenState.NO_FILE))] == [
        (Action.CREATE, Kind.HOST_TOKEN, True)]
    valid = ObservedHostToken(HostTokenState.VALID, info=host_info(), token=Secret("s.h"))
    assert plan(valid) == []
    low = ObservedHostToken(HostTokenState.VALID, info=host_info(ttl=3600), token=Secret("s.h"))
    assert [(c.action, c.kind, c.needs_admin) for c in plan(low)] == [(Action.UPDATE, Kind.HOST_TOKEN, False)]
    foreign = ObservedHostToken(HostTokenState.VALID, info=host_info(host="ws2"), token=Secret("s.h"))
    [change] = plan(foreign)
    assert change.needs_admin and "re-mint" in change.reason and change.desired.revoke == ()  # not ours to revoke


def test_grants_say_why_the_host_may_not_mint() -> None:
    desired = desired_vault(ROSTER, "ws1")
    expected = {name: want.text for name, want in desired.policies.items()}
    role = {"allowed_policies": [f"{PREFIX}alice"]}
    users = {"alice": f"{PREFIX}alice", "carol": f"{PREFIX}carol"}
    texts = {f"{PREFIX}alice": expected[f"{PREFIX}alice"], f"{PREFIX}carol": expected[f"{PREFIX}carol"]}
    got = host_grants(users, expected, role, texts, "ws1")
    assert got["alice"] is None and "does not allow" in (got["carol"] or "")
    got = host_grants(users, expected, role, {**texts, f"{PREFIX}alice": "edited"}, "ws1")
    assert "differs from the template" in (got["alice"] or "")
    got = host_grants(users, expected, None, texts, "ws1")
    assert all("not enrolled" in (why or "") for why in got.values())


def test_a_granted_mint_needs_no_admin_and_a_refused_one_says_why() -> None:
    desired = desired_vault(ROSTER, "ws1")
    tokens = {user: ObservedToken(user, TokenState.NO_FILE) for user in desired.tokens}
    observed = ObservedVault(admin=False, policies=None, tokens=MappingProxyType(tokens),
                             recorded=MappingProxyType({}),
                             host_grants=MappingProxyType({"alice": None, "carol": "role says no"}))
    changes = {c.user: c for c in plan_tokens(desired, observed, prune=False)}
    assert changes["alice"].needs_admin is False
    assert changes["carol"].needs_admin is True and changes["carol"].reason.endswith("(role says no)")


def test_a_token_older_than_token_max_age_is_rotated_by_its_own_hand() -> None:
    roster = replace(ROSTER, vault=replace(ROSTER.vault, token_max_age="2h", token_max_age_seconds=7200))
    want = desired_vault(roster, "ws1").tokens["alice"]
    info = TokenInfo(accessor="acc-a", display_name=want.vault_display_name, policies=(want.policy,), orphan=True,
                     period_seconds=0, ttl_seconds=768 * 3600, creation_time=1_000_000,
                     meta=MappingProxyType(dict(want.meta)), role=f"{PREFIX}host.ws1")
    assert token_drift(want, info) == []  # periodic through the host's role: its lookup shows no period
    current = ObservedToken("alice", TokenState.VALID, info=info, token=Secret("s.a"))
    assert plan_token(want, current, None, "ws1", now=1_000_000 + 7000) == []
    [change] = plan_token(want, current, None, "ws1", now=1_000_000 + 3 * 3600)
    assert change.reason == "token is 3h old, older than token_max_age 2h; rotate"
    assert isinstance(change.desired, MintOrder) and change.desired.revoke == ("acc-a",)
    assert change.desired.old_token == Secret("s.a")


def test_a_stray_host_token_of_this_host_is_revoked_and_the_one_in_the_file_is_not() -> None:
    stray = PendingRevoke("acc-stray", checked=True, info=replace(host_info(), accessor="acc-stray"))
    in_file = PendingRevoke("acc-host", checked=True, info=host_info())
    other = PendingRevoke("acc-other", checked=True, info=replace(host_info(host="ws2"), accessor="acc-other"))
    observed = ObservedVault(admin=True, policies={}, tokens=MappingProxyType({}), recorded=MappingProxyType({}),
                             pending=MappingProxyType({p.accessor: p for p in (stray, in_file, other)}),
                             host_token_accessor="acc-host")
    assert [(c.kind, c.desired.accessor) for c in plan_pending(observed, "ws1")] == [(Kind.HOST_TOKEN, "acc-stray")]

