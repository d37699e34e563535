"""Pure fleet logic with literal values (per-host rosters, ownership, garbage), and the mint lock on real files.

The cluster scenarios live in tests/test_fleet.py.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from reconcile.local import homefs
from reconcile.local.accounts import Account
from reconcile.roster.fleet import HOSTNAME_ENV, is_assigned, this_host
from reconcile.local.homefs import HomeFsError, UnsafePath
from reconcile.local.homelock import MINT_LOCK_FILE, lock_private_file
from reconcile.common.model import Action, Kind, is_pending
from reconcile.commands.render import change_line, elsewhere_lines, summary_line
from reconcile.roster.values import Roster, User, VaultSettings
from reconcile.vault.values import TokenInfo
from reconcile.vault.desired import desired_vault, is_ours_to_revoke
from reconcile.vault.observe import (ObservedToken, ObservedVault, RecordedToken, TokenState,
                                     is_garbage_candidate)
from reconcile.vault.plan import plan_garbage, plan_vault

PERIOD = 768 * 3600
VAULT = VaultSettings(policy_prefix="wc-")
ROSTER = Roster(users={"alice": User("alice", hosts=("ws1", "build-*")), "bob": User("bob"),
                       "carol": User("carol", hosts=("ws2",))}, vault=VAULT)


def info(user: str, host: str, accessor: str = "acc", **meta: str) -> TokenInfo:
    return TokenInfo(accessor=accessor, display_name=f"token-devvm-claude-auth-{user}", policies=(f"wc-{user}",),
                     orphan=True, period_seconds=PERIOD, ttl_seconds=PERIOD,
                     meta=MappingProxyType({"managed_by": "claude-auth", "user": user, "host": host, **meta}))


@pytest.mark.parametrize("hosts, host, assigned", [
    (None, "anything", True),
    (("ws1",), "ws1", True),
    (("ws1",), "ws10", False),
    (("ws*",), "ws10", True),
    (("build-[0-9]",), "build-7", True),
    (("build-[0-9]",), "build-x", False),
    (("WS1",), "ws1", False),  # case-sensitive, as host names are compared elsewhere
    (("ws1", "db?"), "db2", True),
])
def test_is_assigned(hosts: tuple[str, ...] | None, host: str, assigned: bool) -> None:
    assert is_assigned(hosts, host) is assigned


def test_this_host_can_be_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HOSTNAME_ENV, "sim-7")
    assert this_host() == "sim-7"
    monkeypatch.delenv(HOSTNAME_ENV)
    assert this_host() == os.uname().nodename


def test_roster_for_host_and_desired_state() -> None:
    assert list(ROSTER.for_host("build-3").users) == ["alice", "bob"]
    desired = desired_vault(ROSTER, "ws2")
    assert set(desired.policies) == {"wc-alice", "wc-bob", "wc-carol"}  # policies are fleet-wide
    assert set(desired.tokens) == {"bob", "carol"}
    assert desired.tokens["bob"].meta["host"] == "ws2"
    assert elsewhere_lines(ROSTER, "ws2") == ["= user alice: not managed on host ws2 (hosts: ws1, build-*)"]
    assert elsewhere_lines(ROSTER, "ws1") == ["= user carol: not managed on host ws1 (hosts: ws2)"]


def observed(records: dict[str, RecordedToken], **kw: object) -> ObservedVault:
    desired = desired_vault(ROSTER, "ws2")
    return ObservedVault(admin=True, policies={name: p.text for name, p in desired.policies.items()},
                         tokens=MappingProxyType({u: ObservedToken(u, TokenState.VALID, info=info(u, "ws2", f"f-{u}"))
                                                  for u in desired.tokens}),
                         recorded=MappingProxyType(records), **kw)  # type: ignore[arg-type]


def test_a_user_not_assigned_here_is_orphaned_and_pruned_only_if_minted_here() -> None:
    desired = desired_vault(ROSTER, "ws2")
    mine = {"alice": RecordedToken("alice", "a1", checked=True, info=info("alice", "ws2", "a1"))}
    [change] = plan_vault(desired, observed(mine), prune=False)
    assert (change.action, change.kind, change.reason) == (
        Action.ORPHANED, Kind.TOKEN, "user alice is not assigned to host ws2 (apply --prune revokes the token)")
    [change] = plan_vault(desired, observed(mine), prune=True)
    assert (change.action, change.reason) == (Action.DELETE, "user alice is not assigned to host ws2; revoke")

    adopted = {"alice": RecordedToken("alice", "a1", checked=True, info=info("alice", "ws1", "a1"))}
    assert plan_vault(desired, observed(adopted), prune=True) == []  # ws1's token: never revoked here


@pytest.mark.parametrize("user, host, ours", [
    ("bob", "ws2", True),     # managed here, minted here
    ("bob", "ws9", True),     # managed here, found in this host's files (shared home): replaced tokens go
    ("alice", "ws2", True),   # not assigned here: only what this host minted
    ("alice", "ws1", False),
    ("dave", "ws1", False),   # not in the roster, minted elsewhere
])
def test_is_ours_to_revoke(user: str, host: str, ours: bool) -> None:
    assert is_ours_to_revoke(info(user, host), user, desired_vault(ROSTER, "ws2")) is ours


def test_someone_elses_token_is_never_ours() -> None:
    other = replace(info("bob", "ws2"), meta=MappingProxyType({"user": "bob", "host": "ws2"}))
    assert not is_ours_to_revoke(other, "bob", desired_vault(ROSTER, "ws2"))


def test_garbage_candidates_and_plan() -> None:
    desired = desired_vault(ROSTER, "ws2")
    assert is_garbage_candidate(info("bob", "ws2"), desired)
    assert is_garbage_candidate(info("dave", "ws2"), desired)  # offboarded long ago, still this prefix
    assert not is_garbage_candidate(info("bob", "ws1"), desired)
    assert not is_garbage_candidate(replace(info("bob", "ws2"), policies=("other-bob",)), desired)
    garbage = MappingProxyType({"g1": info("bob", "ws2", "g1")})
    [listed] = plan_garbage(desired, observed({}, garbage=garbage))
    assert [listed] == plan_vault(desired, observed({}, garbage=garbage), prune=True)
    assert change_line(listed) == ("! token g1… (user bob, host ws2): minted here, referenced by nothing; "
                                   "revoked by apply --prune")
    assert listed.as_json()["action"] == "collect" and is_pending(listed)  # apply --prune revokes it
    assert summary_line((listed,)) == "Plan: 0 to add, 0 to change, 1 to remove."
    long = plan_garbage(desired, observed({}, garbage=MappingProxyType({"a" * 24: info("bob", "ws2", "a" * 24)})))
    assert long[0].name == "aaaaaaaa… (user bob, host ws2)"  # a prefix of the accessor only


# --- the mint lock on real files (root gives them to uid 5001) ---------------------------------------


@pytest.fixture
def account(tmp_path: Path) -> Account:
    assert os.geteuid() == 0, "the mint-lock tests need root (they give files to another uid)"
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    os.chown(home, 5001, 5001)
    return Account("alice", 5001, 5001, home)


def test_the_mint_lock_is_a_private_file_of_the_person_and_excludes(account: Account) -> None:
    fd = lock_private_file(account, MINT_LOCK_FILE, timeout=1)
    try:
        path = account.home / MINT_LOCK_FILE
        st = path.stat()
        assert (st.st_uid, oct(st.st_mode & 0o777)) == (5001, "0o600")
        started = time.monotonic()
        with pytest.raises(HomeFsError, match="held by another process"):
            lock_private_file(account, MINT_LOCK_FILE, timeout=0.3)
        assert time.monotonic() - started < 2
    finally:
        os.close(fd)
    os.close(lock_private_file(account, MINT_LOCK_FILE, timeout=0.3))  # free again


def test_a_planted_link_fifo_or_hard_link_is_refused(account: Account, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's")
    folder = account.home / homefs.CONFIG_DIR
    folder.mkdir(parents=True)
    lock = account.home / MINT_LOCK_FILE
    lock.symlink_to(victim)
    with pytest.raises(UnsafePath, match="symbolic link"):
        lock_private_file(account, MINT_LOCK_FILE, timeout=0.1)
    lock.unlink()
    os.mkfifo(lock)
    with pytest.raises(UnsafePath):
        lock_private_file(account, MINT_LOCK_FILE, timeout=0.1)
    lock.unlink()
    os.link(victim, lock)
    with pytest.raises(UnsafePath, match="hard links"):
        lock_private_file(account, MINT_LOCK_FILE, timeout=0.1)
    assert victim.stat().st_uid == 0 and victim.read_text() == "root's"
    lock.unlink()
    (account.home / ".config").rename(account.home / "real-config")
    (account.home / ".config").symlink_to(tmp_path)
    with pytest.raises(UnsafePath, match="symbolic link"):
        lock_private_file(account, MINT_LOCK_FILE, timeout=0.1)


def test_a_lock_the_person_holds_only_delays_their_own_mint(account: Account) -> None:
    fd = lock_private_file(account, MINT_LOCK_FILE, timeout=1)
    os.close(fd)
    held = os.open(account.home / MINT_LOCK_FILE, os.O_RDONLY)  # as the person could, on their own file
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        with pytest.raises(HomeFsError):
            lock_private_file(account, MINT_LOCK_FILE, timeout=0.2)
    finally:
        os.close(held)


def test_a_scan_of_every_token_steps_over_dangling_and_gone_accessors() -> None:
    """A killed leader can leave an accessor whose lookup is 403 even on the active node (FACTS seen
    here): the scan goes on past it. (A fake: the real case cannot be made on demand.)"""
    from reconcile.vault.values import VaultDenied
    from reconcile.vault.observe import scan_tokens

    class Lookups:
        def lookup_accessors_pipelined(self, accessors: list[str]) -> list[TokenInfo | None]:
            return [None] * len(accessors)  # none answered plainly: each asked the ordinary way

        def lookup_accessor(self, accessor: str) -> TokenInfo | None:
            if accessor == "dangling":
                raise VaultDenied("permission denied (token lookup-accessor on the active node)")
            return None if accessor == "gone" else info("bob", "ws2", accessor)

    found = list(scan_tokens(Lookups(), ["a1", "dangling", "gone", "a2"]))  # type: ignore[arg-type]
    assert [accessor for accessor, _ in found] == ["a1", "a2"]


class _Scan:
    """A fake Vault for the intent scan's bookkeeping (pure logic): lookups by accessor, counted."""

    def __init__(self, tokens: dict[str, TokenInfo], failing: str = "") -> None:
        self.tokens, self.failing, self.lookups, self.listed = tokens, failing, 0, 0

    def list_accessors(self) -> list[str]:
        self.listed += 1
        return list(self.tokens)

    def lookup_accessors_pipelined(self, accessors: list[str]) -> list[TokenInfo | None]:
        return [None] * len(accessors)  # none answered plainly: each asked the ordinary way

    def lookup_accessor(self, accessor: str) -> TokenInfo | None:
        from reconcile.vault.values import VaultError
        self.lookups += 1
        if accessor == self.failing:
            raise VaultError("InternalServerError (token lookup-accessor)")
        return self.tokens[accessor]


def test_an_intent_whose_token_is_in_the_file_resolves_without_a_scan() -> None:
    from reconcile.vault.observe import _resolve_intents
    vault = _Scan({"a1": info("bob", "ws2", "a1")})
    tokens = {"bob": ObservedToken("bob", TokenState.VALID, info=info("bob", "ws2", "f1", mint_nonce="n1"))}
    scan = _resolve_intents(vault, {"n1": "bob"}, tokens, admin=True, budget=0.0)  # type: ignore[arg-type]
    assert (scan.resolved, scan.cut_short, vault.listed, vault.lookups) == (frozenset({"n1"}), "", 0, 0)


def test_a_failing_lookup_or_a_spent_budget_leaves_the_intents_outstanding() -> None:
    from reconcile.vault.observe import _resolve_intents
    tokens = {"a1": info("bob", "ws2", "a1", mint_nonce="n1"), "a2": info("bob", "ws2", "a2"), "a3": info("bob", "ws2", "a3", mint_nonce="n2")}
    failing = _resolve_intents(_Scan(tokens, failing="a2"), {"n1": "bob", "n2": "carol"}, {},  # type: ignore[arg-type]
                               admin=True, budget=60.0)
    assert failing.resolved == frozenset() and list(failing.strays) == ["a1"]  # found before the failure
    assert failing.cut_short == ("looking up every token in Vault failed (InternalServerError (token "
                                 "lookup-accessor))")
    ticks = iter([0.0, 0.5, 1.0, 2.0, 9.0])  # start, before the chunk (pipelined), before each lookup asked again
    vault = _Scan(tokens)
    spent = _resolve_intents(vault, {"n2": "carol"}, {}, admin=True, budget=5.0,  # type: ignore[arg-type]
                             clock=lambda: next(ticks))
    assert (spent.resolved, dict(spent.strays), vault.lookups) == (frozenset(), {}, 2)
    assert spent.cut_short.startswith("looking up every token in Vault ran out of its 5 s budget")
    assert spent.cut_short.endswith("after 2 of 3")
    whole = _resolve_intents(_Scan(tokens), {"n2": "carol"}, {}, admin=True, budget=5.0)  # type: ignore[arg-type]
    assert (whole.resolved, list(whole.strays), whole.cut_short) == (frozenset({"n2"}), ["a3"], "")
    observed = ObservedVault(admin=True, policies={}, tokens={}, recorded={},
                             unresolved_intents=MappingProxyType({"n2": "carol", "n3": "alice"}),
                             scan_cut_short=spent.cut_short)
    assert observed.problems == []  # one WARN line instead, naming everyone
    assert observed.scan_warning is not None and "minted for alice, carol are not" in observed.scan_warning


def test_a_file_token_that_superseded_a_live_record_revokes_it_only_when_this_host_minted_it() -> None:
    from reconcile.vault.plan import RevokeOrder, plan_token
    want = desired_vault(ROSTER, "ws2").tokens["bob"]
    in_file = ObservedToken("bob", TokenState.VALID, info=replace(info("bob", "ws2", "new"), policies=(want.policy,),
                                                                   display_name=want.vault_display_name))
    mine = RecordedToken("bob", "old", checked=True, info=info("bob", "ws2", "old"))
    [revoke] = plan_token(want, in_file, mine, "ws2")
    assert (revoke.action, revoke.desired) == (Action.DELETE, RevokeOrder("bob", "old"))
    theirs = RecordedToken("bob", "old", checked=True, info=info("bob", "ws1", "old"))
    assert plan_token(want, in_file, theirs, "ws2") == []  # another host's: pending_revoke, not here
    assert plan_token(want, in_file, RecordedToken("bob", "old", checked=True), "ws2") == []  # gone
    assert plan_token(want, in_file, RecordedToken("bob", "new", checked=False), "ws2") == []
