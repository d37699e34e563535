"""reconcile.local (desired, observe, plan, apply): folders, token-file owner and mode, unit files and timers.

First the pure planner on literal values (one scenario per case, no-op cases
included), then observe / plan / apply / plan-again against a temporary
--root with real owners and the real `systemctl --root`.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from reconcile.local import systemd
from reconcile.local import homefs
from reconcile.local import apply as local_apply
from reconcile.local import desired as local_desired
from reconcile.local.accounts import Account, lookup_accounts
from reconcile.local.homefs import CONFIG_DIR, STATE_DIR, TOKEN_FILE, EntryState, UnsafePath
from reconcile.local.apply import LocalContext, apply_local_change, finish_local
from reconcile.local.desired import (BACKUP_PATH, BACKUP_SERVICE, RECONCILE_SERVICE, RECONCILE_TIMER, SYNC_SERVICE,
                                     SYNC_TIMER,
                                     DesiredDirectory, DesiredLocal, DesiredTimer, DesiredTokenFile,
                                     DesiredUnit, desired_local)
from reconcile.local.observe import ObservedLocal, ObservedTimer, observe_local
from reconcile.local.plan import plan_local
from reconcile.common.model import Action, Change, Kind, UserProblem, is_pending, sort_for_apply
from reconcile.roster.values import Roster, User

A, U, D, O = Action.CREATE, Action.UPDATE, Action.DELETE, Action.ORPHANED

# --- the pure planner, on literal values -----------------------------------

ALICE = Account("alice", 5001, 5001, Path("/home/alice"))
DIR_OK = EntryState("directory", 0o700, 5001, 5001, 2)
TOKEN_OK = EntryState("file", 0o600, 5001, 5001, 1)
MISSING = EntryState("missing", 0, -1, -1, 0)
UNIT_TEXT = "[Timer]\nOnUnitActiveSec=6h\n"

DESIRED = DesiredLocal(
    home_users=("alice",),
    directories=(DesiredDirectory("alice", CONFIG_DIR), DesiredDirectory("alice", STATE_DIR)),
    token_files=(DesiredTokenFile("alice"),),
    units=(DesiredUnit("claude-auth-sync@.timer", UNIT_TEXT),),
    timers=(DesiredTimer("claude-auth-sync@alice.timer", True, "alice"),
            DesiredTimer("claude-auth-sync@bob.timer", False, "bob", "parked")),
)
DESIRED_ALICE_PARKED = DesiredLocal(
    DESIRED.home_users, DESIRED.directories, DESIRED.token_files, DESIRED.units,
    timers=(DesiredTimer("claude-auth-sync@alice.timer", False, "alice", "parked"),))


def observed(*, entries: dict[tuple[str, str], EntryState] | None = None, **overrides: Any) -> ObservedLocal:
    base: dict[str, Any] = dict(
        accounts={"alice": ALICE},
        entries={("alice", CONFIG_DIR): DIR_OK, ("alice", STATE_DIR): DIR_OK, ("alice", TOKEN_FILE): TOKEN_OK,
                 **(entries or {})},
        units={"claude-auth-sync@.timer": UNIT_TEXT.encode()},
        timers={"claude-auth-sync@alice.timer": ObservedTimer("enabled"),
                "claude-auth-sync@bob.timer": ObservedTimer("disabled")},
    )
    base.update(overrides)
    return ObservedLocal(**base)


PROBLEM = UserProblem("alice", "home folder /home/alice does not exist")

CASES = [
    pytest.param(DESIRED, observed(), {}, [], id="converged: nothing to do"),
    pytest.param(DESIRED, observed(entries={("alice", TOKEN_FILE): MISSING}), {}, [],
                 id="no token file yet: creating it is the Vault side's job"),
    pytest.param(DESIRED, observed(entries={("alice", CONFIG_DIR): MISSING, ("alice", STATE_DIR): MISSING,
                                            ("alice", TOKEN_FILE): MISSING}), {},
                 [(A, Kind.DIRECTORY, "alice:~/.config/claude-auth-sync", "missing"),
                  (A, Kind.DIRECTORY, "alice:~/.local/state/claude-auth-sync", "missing")],
                 id="folders missing"),
    pytest.param(DESIRED, observed(entries={("alice", STATE_DIR): EntryState("directory", 0o755, 5001, 5001, 2)}), {},
                 [(U, Kind.DIRECTORY, "alice:~/.local/state/claude-auth-sync", "mode 0755, want 0700")],
                 id="folder mode 0755"),
    pytest.param(DESIRED, observed(entries={("alice", TOKEN_FILE): EntryState("file", 0o600, 0, 0, 1)}), {},
                 [(U, Kind.TOKEN_FILE, "alice:~/.config/claude-auth-sync/vault-token",
                   "owner root, want alice; group gid 0, want gid 5001")],
                 id="token file owned by root"),
    pytest.param(DESIRED, observed(entries={("alice", TOKEN_FILE): EntryState("file", 0o644, 6000, 5001, 1)},
                                   owner_names={6000: "mallory"}), {},
                 [(U, Kind.TOKEN_FILE, "alice:~/.config/claude-auth-sync/vault-token",
                   "mode 0644, want 0600; owner mallory, want alice")],
                 id="token file readable by all and owned by someone else"),
    pytest.param(DESIRED, observed(entries={("alice", CONFIG_DIR): EntryState("directory", 0o2700, 7000, 5001, 2)}),
                 {}, [(U, Kind.DIRECTORY, "alice:~/.config/claude-auth-sync", "mode 2700, want 0700; owner uid 7000, want alice")],
                 id="unknown owner and a set-gid bit"),
    pytest.param(DESIRED, observed(units={}), {},
                 [(A, Kind.UNIT, "claude-auth-sync@.timer", "missing")], id="unit missing"),
    pytest.param(DESIRED, observed(units={"claude-auth-sync@.timer": b"[Timer]\nOnUnitActiveSec=1h\n"}), {},
                 [(U, Kind.UNIT, "claude-auth-sync@.timer", "content differs")], id="unit edited by hand"),
    pytest.param(DESIRED, observed(timers={"claude-auth-sync@alice.timer": ObservedTimer("disabled"),
                                           "claude-auth-sync@bob.timer": ObservedTimer("disabled")}), {},
                 [(A, Kind.TIMER, "claude-auth-sync@alice.timer", "disabled, want enabled")], id="timer link removed"),
    pytest.param(DESIRED, observed(timers={"claude-auth-sync@alice.timer": ObservedTimer("not-found"),
                                           "claude-auth-sync@bob.timer": ObservedTimer("not-found")}), {},
                 [(A, Kind.TIMER, "claude-auth-sync@alice.timer", "not enabled, want enabled")],
                 id="first run: no template yet"),
    pytest.param(DESIRED, observed(timers={"claude-auth-sync@alice.timer": ObservedTimer("masked"),
                                           "claude-auth-sync@bob.timer": ObservedTimer("masked")}), {},
                 [(A, Kind.TIMER, "claude-auth-sync@alice.timer", "masked, want enabled")],
                 id="masked timers: enabling is planned (and will fail loudly), masked is not enabled"),
    pytest.param(DESIRED, observed(timers={"claude-auth-sync@alice.timer": ObservedTimer("enabled"),
                                           "claude-auth-sync@bob.timer": ObservedTimer("enabled")}), {},
                 [(D, Kind.TIMER, "claude-auth-sync@bob.timer", "enabled, want disabled (parked)")],
                 id="parked user's timer enabled"),
    pytest.param(DESIRED, observed(accounts={}, entries={}, problems=(PROBLEM,),
                                   timers={"claude-auth-sync@alice.timer": ObservedTimer("disabled"),
                                           "claude-auth-sync@bob.timer": ObservedTimer("disabled")}), {}, [],
                 id="user with a problem: no folder changes, timer not enabled"),
    pytest.param(DESIRED_ALICE_PARKED, observed(accounts={}, entries={}, problems=(PROBLEM,)), {},
                 [(D, Kind.TIMER, "claude-auth-sync@alice.timer", "enabled, want disabled (parked)")],
                 id="parked user with a problem: the timer still stops"),
    pytest.param(DESIRED, observed(live=True, timers={
        "claude-auth-sync@alice.timer": ObservedTimer("enabled", "active"),
        "claude-auth-sync@bob.timer": ObservedTimer("disabled", "inactive")}), {}, [],
                 id="live root, converged"),
    pytest.param(DESIRED, observed(live=True, timers={
        "claude-auth-sync@alice.timer": ObservedTimer("enabled", "inactive"),
        "claude-auth-sync@bob.timer": ObservedTimer("disabled", "active")}), {},
                 [(U, Kind.TIMER, "claude-auth-sync@alice.timer", "enabled but inactive, want running"),
                  (U, Kind.TIMER, "claude-auth-sync@bob.timer", "disabled but active, want stopped (parked)")],
                 id="live root: enabled timer not running, parked timer still running"),
    pytest.param(DESIRED, observed(entries={("alice", TOKEN_FILE): MISSING}, timers={
        "claude-auth-sync@alice.timer": ObservedTimer("not-found"),
        "claude-auth-sync@bob.timer": ObservedTimer("not-found")}), {}, [],
                 id="no token file and none minted (the hourly run): the timer waits"),
    pytest.param(DESIRED, observed(entries={("alice", TOKEN_FILE): MISSING}, timers={
        "claude-auth-sync@alice.timer": ObservedTimer("not-found"),
        "claude-auth-sync@bob.timer": ObservedTimer("not-found")}), {"minting": {"alice"}},
                 [(A, Kind.TIMER, "claude-auth-sync@alice.timer", "not enabled, want enabled")],
                 id="no token file, but this run mints it: the timer is enabled after the token"),
    pytest.param(DESIRED, observed(entries={("alice", TOKEN_FILE): MISSING}, live=True, timers={
        "claude-auth-sync@alice.timer": ObservedTimer("enabled", "inactive"),
        "claude-auth-sync@bob.timer": ObservedTimer("disabled", "inactive")}), {}, [],
                 id="live root, no token file: an enabled timer is not started either"),
    pytest.param(DESIRED, observed(stray_timers=("claude-auth-sync@zoe.timer",)), {},
                 [(O, Kind.TIMER, "claude-auth-sync@zoe.timer",
                   "enabled, user not in the roster; `apply --prune` disables it")],
                 id="timer of a user no longer in the roster"),
    pytest.param(DESIRED, observed(stray_timers=("claude-auth-sync@zoe.timer",)), {"prune": True},
                 [(D, Kind.TIMER, "claude-auth-sync@zoe.timer", "enabled, user not in the roster")],
                 id="the same with --prune"),
]


@pytest.mark.parametrize(("desired", "seen", "options", "expected"), CASES)
def test_plan_local(desired: DesiredLocal, seen: ObservedLocal, options: dict[str, Any],
                    expected: list[tuple[Action, Kind, str, str]]) -> None:
    changes = plan_local(desired, seen, **options)
    assert [(c.action, c.kind, c.name, c.reason) for c in changes] == expected


def test_unit_changes_carry_both_texts_for_diff() -> None:
    [change] = plan_local(DESIRED, observed(units={"claude-auth-sync@.timer": b"old\n"}))
    assert (change.before_text, change.after_text) == ("old\n", UNIT_TEXT)
    [change] = plan_local(DESIRED, observed(units={}))
    assert (change.before_text, change.after_text) == ("", UNIT_TEXT)


def test_desired_local() -> None:
    roster = Roster(users={"alice": User("alice"), "bob": User("bob", parked=True),
                           "carol": User("carol", claude_auth=False)})
    desired = desired_local(roster, "/usr/local/bin/claude-auth", "/etc/claude-auth/roster.yaml")
    assert desired.home_users == ("alice", "bob")
    assert desired.directories == (
        DesiredDirectory("alice", CONFIG_DIR, 0o700), DesiredDirectory("alice", STATE_DIR, 0o700),
        DesiredDirectory("bob", CONFIG_DIR, 0o700), DesiredDirectory("bob", STATE_DIR, 0o700))
    assert desired.token_files == (DesiredTokenFile("alice", TOKEN_FILE, 0o600), DesiredTokenFile("bob", TOKEN_FILE, 0o600))
    assert [unit.name for unit in desired.units] == [SYNC_SERVICE, SYNC_TIMER, BACKUP_SERVICE, BACKUP_PATH,
                                                     RECONCILE_SERVICE, RECONCILE_TIMER]
    assert desired.timers == (
        DesiredTimer(RECONCILE_TIMER, True),
        DesiredTimer("claude-auth-sync@alice.timer", True, "alice", ""),
        DesiredTimer("claude-auth-backup@alice.path", True, "alice", ""),
        DesiredTimer("claude-auth-sync@bob.timer", False, "bob", "parked"),
        DesiredTimer("claude-auth-backup@bob.path", False, "bob", "parked"),
        DesiredTimer("claude-auth-sync@carol.timer", False, "carol", "claude_auth false"),
        DesiredTimer("claude-auth-backup@carol.path", False, "carol", "claude_auth false"),
    )


# --- against a temporary --root --------------------------------------------

# Root (to give files to other uids) and systemctl are required, never skipped: CI runs as root.
assert os.geteuid() == 0 and shutil.which("systemctl"), "tests/test_local_state.py needs root and systemctl"

IDS = {"alice": 5001, "bob": 5002, "carol": 5003}
ROSTER = Roster(users={"alice": User("alice"), "bob": User("bob"), "carol": User("carol", parked=True)})
# A program every uid can run (the exec check of observe_local looks at the real file).
EXEC = "/usr/bin/true"


def passwd_line(name: str, uid: int) -> str:
    return f"{name}:x:{uid}:{uid}::/home/{name}:/bin/bash\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n" + "".join(passwd_line(n, uid) for n, uid in IDS.items()))
    for name, uid in IDS.items():
        home = root / "home" / name
        home.mkdir(parents=True)
        os.chown(home, uid, uid)
        home.chmod(0o750)
    return root


def accounts(root: Path, roster: Roster = ROSTER) -> dict[str, Account | UserProblem]:
    return lookup_accounts(root, roster.users)


def plan(root: Path, roster: Roster = ROSTER, *, prune: bool = False,
         minting: set[str] | None = None) -> tuple[list[Change], ObservedLocal]:
    """Observe and plan the local domain. `minting`: whose token the run mints (default: everyone's,
    as an admin run would, so timers need no token files here; the gating has tests of its own)."""
    found = accounts(root, roster)
    desired = desired_local(roster, EXEC, "/etc/claude-auth/roster.yaml", local_desired.homes_of(found))
    seen = observe_local(root, desired, found)
    return plan_local(desired, seen, prune=prune,
                      minting=set(roster.users) if minting is None else minting), seen


def apply(root: Path, changes: list[Change], roster: Roster = ROSTER) -> dict[str, str]:
    """Apply like the executor: kind order, one context, failures recorded; name -> error."""
    ctx = LocalContext.create(root, accounts(root, roster))
    errors: dict[str, str] = {}
    done: set[Kind] = set()
    for change in sort_for_apply([c for c in changes if is_pending(c)]):
        try:
            apply_local_change(change, ctx)
        except Exception as exc:
            errors[change.name] = str(exc)
        else:
            done.add(change.kind)
    finish_local(done, ctx)
    return errors


def summary(changes: list[Change]) -> set[tuple[Action, Kind, str, str]]:
    return {(c.action, c.kind, c.name, c.reason) for c in changes}


def mode_owner(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def is_enabled(root: Path, *units: str) -> list[str]:
    result = subprocess.run(["systemctl", f"--root={root}", "is-enabled", *units], capture_output=True, text=True)
    return result.stdout.split()


def converge(root: Path, roster: Roster = ROSTER) -> None:
    changes, _ = plan(root, roster)
    assert apply(root, changes, roster) == {}
    assert plan(root, roster)[0] == []


def test_plan_apply_plan_again(root: Path) -> None:
    # A legacy token file left by an older tool: the person's, but world-readable, of root's group,
    # in a 0755 folder. (A root-owned one is refused: test_root_owned_entries_are_refused_not_chowned.)
    (root / "home" / "alice" / ".config").mkdir(mode=0o755)
    os.chown(root / "home" / "alice" / ".config", 5001, 5001)
    legacy = root / "home" / "alice" / CONFIG_DIR
    legacy.mkdir()
    legacy.chmod(0o755)
    (legacy / "vault-token").write_bytes(b"hvs.legacy\n")
    (legacy / "vault-token").chmod(0o644)
    os.chown(legacy, 5001, 0)
    os.chown(legacy / "vault-token", 5001, 0)

    changes, seen = plan(root)
    assert seen.problems == ()
    assert summary(changes) == {
        (U, Kind.DIRECTORY, "alice:~/.config/claude-auth-sync",
         "mode 0755, want 0700; group gid 0, want gid 5001"),
        (A, Kind.DIRECTORY, "alice:~/.local/state/claude-auth-sync", "missing"),
        (A, Kind.DIRECTORY, "bob:~/.config/claude-auth-sync", "missing"),
        (A, Kind.DIRECTORY, "bob:~/.local/state/claude-auth-sync", "missing"),
        (A, Kind.DIRECTORY, "carol:~/.config/claude-auth-sync", "missing"),
        (A, Kind.DIRECTORY, "carol:~/.local/state/claude-auth-sync", "missing"),
        (U, Kind.TOKEN_FILE, "alice:~/.config/claude-auth-sync/vault-token",
         "mode 0644, want 0600; group gid 0, want gid 5001"),
        (A, Kind.UNIT, SYNC_SERVICE, "missing"),
        (A, Kind.UNIT, SYNC_TIMER, "missing"),
        (A, Kind.UNIT, BACKUP_SERVICE, "missing"),
        (A, Kind.UNIT, BACKUP_PATH, "missing"),
        (A, Kind.UNIT, RECONCILE_SERVICE, "missing"),
        (A, Kind.UNIT, RECONCILE_TIMER, "missing"),
        *((A, Kind.UNIT, f"claude-auth-{unit}@{name}.{kind}.d/home.conf", "missing")
          for name in ("alice", "bob", "carol")
          for unit, kind in (("sync", "service"), ("backup", "service"), ("backup", "path"))),
        (A, Kind.TIMER, RECONCILE_TIMER, "not enabled, want enabled"),
        (A, Kind.TIMER, "claude-auth-sync@alice.timer", "not enabled, want enabled"),
        (A, Kind.TIMER, "claude-auth-backup@alice.path", "not enabled, want enabled"),
        (A, Kind.TIMER, "claude-auth-sync@bob.timer", "not enabled, want enabled"),
        (A, Kind.TIMER, "claude-auth-backup@bob.path", "not enabled, want enabled"),
    }
    assert plan(root)[0] == changes  # planning changed nothing

    assert apply(root, changes) == {}

    for name, uid in IDS.items():
        home = root / "home" / name
        for folder in (CONFIG_DIR, STATE_DIR, ".local", ".local/state"):
            assert mode_owner(home / folder) == (0o700, uid, uid), (name, folder)
        # An existing intermediate folder keeps its mode; a created one is the user's, 0700.
        assert mode_owner(home / ".config") == ((0o755, uid, uid) if name == "alice" else (0o700, uid, uid))
        assert mode_owner(home) == (0o750, uid, uid)  # the home folder itself is left alone
    assert mode_owner(legacy / "vault-token") == (0o600, 5001, 5001)
    assert (legacy / "vault-token").read_bytes() == b"hvs.legacy\n"
    unit_dir = root / "etc" / "systemd" / "system"
    assert sorted(p.name for p in unit_dir.iterdir() if p.is_file()) == sorted(
        [SYNC_SERVICE, SYNC_TIMER, BACKUP_SERVICE, BACKUP_PATH, RECONCILE_SERVICE, RECONCILE_TIMER])
    assert mode_owner(unit_dir / SYNC_SERVICE) == (0o644, 0, 0)
    assert is_enabled(root, "claude-auth-sync@alice.timer", "claude-auth-sync@bob.timer",
                      "claude-auth-sync@carol.timer", RECONCILE_TIMER) == ["enabled", "enabled", "disabled", "enabled"]
    assert is_enabled(root, "claude-auth-backup@alice.path", "claude-auth-backup@bob.path",
                      "claude-auth-backup@carol.path") == ["enabled", "enabled", "disabled"]
    assert (unit_dir / "paths.target.wants" / "claude-auth-backup@alice.path").is_symlink()
    # The backup service runs under the sync's own drop-in; the path unit watches the person's login file.
    assert (unit_dir / "claude-auth-backup@alice.service.d" / "home.conf").read_text() == \
        (unit_dir / "claude-auth-sync@alice.service.d" / "home.conf").read_text()
    assert "PathChanged=/home/alice/.claude/.credentials.json" in \
        (unit_dir / "claude-auth-backup@alice.path.d" / "home.conf").read_text().splitlines()

    # Each person's drop-in names their home as the user database does, not as --root sees it.
    drop_in = (unit_dir / "claude-auth-sync@alice.service.d" / "home.conf").read_text()
    assert ("ReadWritePaths=-/home/alice/.claude -/home/alice/.claude.json -/home/alice/.config/claude-auth-sync "
            "-/home/alice/.local/state/claude-auth-sync") in drop_in.splitlines()
    assert str(root) not in drop_in

    assert plan(root)[0] == []


def test_drop_ins_follow_the_roster(root: Path) -> None:
    converge(root)
    unit_dir = root / "etc" / "systemd" / "system"
    # claude_auth turned off for bob: his drop-in goes (his timer too).
    off = Roster(users={"alice": User("alice"), "bob": User("bob", claude_auth=False),
                        "carol": User("carol", parked=True)})
    changes, _ = plan(root, off)
    assert (D, Kind.UNIT, "claude-auth-sync@bob.service.d/home.conf", "present, want none (claude_auth false)") \
        in summary(changes)
    assert apply(root, changes, off) == {}
    assert not (unit_dir / "claude-auth-sync@bob.service.d").exists()
    assert plan(root, off)[0] == []
    # carol leaves the roster: her drop-in is orphaned, and removed only with --prune.
    gone = Roster(users={"alice": User("alice"), "bob": User("bob", claude_auth=False)})
    changes, _ = plan(root, gone)
    assert (O, Kind.UNIT, "claude-auth-sync@carol.service.d/home.conf",
            "user not in the roster; `apply --prune` removes it") in summary(changes)
    assert apply(root, changes, gone) == {}
    assert (unit_dir / "claude-auth-sync@carol.service.d" / "home.conf").exists()
    pruned, _ = plan(root, gone, prune=True)
    assert apply(root, pruned, gone) == {}
    assert not (unit_dir / "claude-auth-sync@carol.service.d").exists()
    assert plan(root, gone, prune=True)[0] == []


def test_drop_in_follows_the_roster_login_mode_both_ways(root: Path) -> None:
    converge(root)
    drop_in = root / "etc" / "systemd" / "system" / "claude-auth-sync@alice.service.d" / "home.conf"
    assert 'Environment="CLAUDE_AUTH_LOGIN=oauth"' in drop_in.read_text().splitlines()
    for mode in ("setup-token", "oauth"):
        switched = Roster(users={"alice": User("alice", claude_login=mode), "bob": User("bob"),
                                 "carol": User("carol", parked=True)})
        changes, _ = plan(root, switched)
        assert summary(changes) == {(U, Kind.UNIT, "claude-auth-sync@alice.service.d/home.conf", "content differs"),
                                    (U, Kind.UNIT, "claude-auth-backup@alice.service.d/home.conf", "content differs")}
        assert apply(root, changes, switched) == {}
        assert f'Environment="CLAUDE_AUTH_LOGIN={mode}"' in drop_in.read_text().splitlines()
        assert plan(root, switched)[0] == []


def test_stale_timer_link_is_seen_while_its_template_is_missing(root: Path) -> None:
    converge(root)
    parked = Roster(users={"alice": User("alice"), "bob": User("bob", parked=True), "carol": User("carol", parked=True)})
    (root / "etc" / "systemd" / "system" / SYNC_TIMER).unlink()
    changes, _ = plan(root, parked)
    assert (A, Kind.UNIT, SYNC_TIMER, "missing") in summary(changes)
    assert (D, Kind.TIMER, "claude-auth-sync@bob.timer", "enabled, want disabled (parked)") in summary(changes)
    assert not any(c.kind is Kind.TIMER and c.name == "claude-auth-sync@alice.timer" for c in changes)
    assert apply(root, changes, parked) == {}
    assert is_enabled(root, "claude-auth-sync@alice.timer", "claude-auth-sync@bob.timer") == ["enabled", "disabled"]
    assert plan(root, parked)[0] == []


def test_a_failed_reload_fails_the_timer_changes_without_a_traceback(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def fail_reload() -> None:
        raise systemd.SystemdError("`systemctl daemon-reload` failed: Access denied")

    monkeypatch.setattr(systemd, "daemon_reload", fail_reload)
    monkeypatch.setattr(systemd, "is_live_root", lambda root: True)
    ctx = LocalContext(tmp_path, {}, units_written=1)
    timer = DesiredTimer("claude-auth-sync@alice.timer", True, "alice")
    outcomes = local_apply.apply_timer_changes([Change(A, Kind.TIMER, timer.unit, "x", desired=timer)], ctx)
    assert [str(o) for o in outcomes] == ["`systemctl daemon-reload` failed: Access denied"]


def test_a_live_root_starts_only_the_timers_whose_links_were_made(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Links and starts are two stages (the links run alongside the mints): a timer whose link
    failed is not started, and each failure, of either stage, names its own timer."""
    calls: list[tuple[str, tuple[str, ...]]] = []

    def verb(name: str, refuse: str) -> Any:
        def run(units: list[str]) -> None:
            calls.append((name, tuple(units)))
            if refuse in units:
                raise systemd.SystemdError(f"`systemctl {name}` refused {refuse}")
        return run

    monkeypatch.setattr(systemd, "is_live_root", lambda root: True)
    monkeypatch.setattr(systemd, "enable", lambda root, units: verb("enable", "claude-auth-sync@bob.timer")(units))
    monkeypatch.setattr(systemd, "start", verb("start", "claude-auth-sync@carol.timer"))
    ctx = LocalContext(tmp_path, {})
    timers = [DesiredTimer(f"claude-auth-sync@{user}.timer", True, user) for user in ("alice", "bob", "carol")]
    changes = [Change(A, Kind.TIMER, timer.unit, "x", desired=timer) for timer in timers]
    linked = local_apply.link_timers(changes, ctx)
    assert [str(o) for o in linked] == ["", "`systemctl enable` refused claude-auth-sync@bob.timer", ""]
    assert not [name for name, _ in calls if name == "start"]  # nothing starts in the link stage
    outcomes = local_apply.start_timers(changes, linked, ctx)
    assert [str(o) for o in outcomes] == ["enabled and started",
                                          "`systemctl enable` refused claude-auth-sync@bob.timer",
                                          "`systemctl start` refused claude-auth-sync@carol.timer"]
    started = {unit for name, units in calls if name == "start" for unit in units}
    assert "claude-auth-sync@bob.timer" not in started


def test_intermediate_folders(root: Path) -> None:
    bob = root / "home" / "bob"
    (bob / ".config").mkdir()
    (bob / ".config").chmod(0o755)
    os.chown(bob / ".config", 5002, 5002)
    converge(root)
    assert mode_owner(bob / ".config") == (0o755, 5002, 5002)  # existing: mode kept
    assert mode_owner(bob / ".local") == (0o700, 5002, 5002)  # created: the user's, 0700
    assert mode_owner(bob / ".local" / "state") == (0o700, 5002, 5002)


def _systemctl_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    commands: list[list[str]] = []
    real = subprocess.run

    def run(command: list[str], **kwargs: Any) -> Any:
        commands.append(command)
        return real(command, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)  # as reconcile.local.systemd sees it
    return commands


def test_observe_asks_systemctl_once_about_every_timer_not_plainly_as_wanted(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fresh: no timer is enabled yet, so all are asked about, in one call.
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    for unit in (SYNC_TIMER, RECONCILE_TIMER):  # templates present, nothing enabled
        (root / "etc" / "systemd" / "system" / unit).write_text("[Timer]\nOnBootSec=1min\n[Install]\nWantedBy=timers.target\n")
    commands = _systemctl_calls(monkeypatch)
    plan(root)
    assert commands == [["systemctl", f"--root={root}", "is-enabled", RECONCILE_TIMER, "claude-auth-sync@alice.timer",
                         "claude-auth-sync@bob.timer"]]  # carol (parked) plainly disabled: not asked


def test_a_converged_observe_runs_no_systemctl_and_a_mask_is_still_asked(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    converge(root)
    commands = _systemctl_calls(monkeypatch)
    assert plan(root)[0] == []
    assert commands == []
    # A masked instance is not what the links alone can tell: systemctl is asked about it alone.
    (root / "etc" / "systemd" / "system" / "claude-auth-sync@alice.timer").symlink_to("/dev/null")
    changes, _ = plan(root)
    assert commands == [["systemctl", f"--root={root}", "is-enabled", "claude-auth-sync@alice.timer"]]
    assert [(c.action, c.name) for c in changes if c.kind is Kind.TIMER] == [(A, "claude-auth-sync@alice.timer")]


def test_drift_is_repaired(root: Path) -> None:
    converge(root)
    unit_dir = root / "etc" / "systemd" / "system"
    bob = Account("bob", 5002, 5002, root / "home" / "bob")
    homefs.write_private_file(bob, TOKEN_FILE, b"hvs.bob\n")
    good_unit = (unit_dir / SYNC_SERVICE).read_bytes()

    with open(unit_dir / SYNC_SERVICE, "a") as handle:  # a unit edited by hand
        handle.write("MemoryDenyWriteExecute=yes\n")
    (unit_dir / "timers.target.wants" / "claude-auth-sync@alice.timer").unlink()  # a timer link removed
    (root / "home" / "bob" / STATE_DIR).chmod(0o755)  # a folder chmod 0755
    os.chown(root / "home" / "bob" / TOKEN_FILE, 5002, 0)  # a token file given root's group
    subprocess.run(["systemctl", f"--root={root}", "enable", "claude-auth-sync@carol.timer"],
                   check=True, capture_output=True)  # a parked user whose timer is enabled

    changes, _ = plan(root)
    assert summary(changes) == {
        (U, Kind.UNIT, SYNC_SERVICE, "content differs"),
        (A, Kind.TIMER, "claude-auth-sync@alice.timer", "disabled, want enabled"),
        (U, Kind.DIRECTORY, "bob:~/.local/state/claude-auth-sync", "mode 0755, want 0700"),
        (U, Kind.TOKEN_FILE, "bob:~/.config/claude-auth-sync/vault-token", "group gid 0, want gid 5002"),
        (D, Kind.TIMER, "claude-auth-sync@carol.timer", "enabled, want disabled (parked)"),
    }
    [unit_change] = [c for c in changes if c.kind is Kind.UNIT]
    assert unit_change.before_text is not None and unit_change.before_text.endswith("MemoryDenyWriteExecute=yes\n")
    assert unit_change.after_text == good_unit.decode()

    assert apply(root, changes) == {}
    assert (unit_dir / SYNC_SERVICE).read_bytes() == good_unit
    assert mode_owner(root / "home" / "bob" / STATE_DIR) == (0o700, 5002, 5002)
    assert mode_owner(root / "home" / "bob" / TOKEN_FILE) == (0o600, 5002, 5002)
    assert is_enabled(root, "claude-auth-sync@alice.timer", "claude-auth-sync@carol.timer") == ["enabled", "disabled"]
    assert plan(root)[0] == []


@pytest.mark.parametrize("entry", [CONFIG_DIR, STATE_DIR, TOKEN_FILE])
def test_root_owned_entries_are_refused_not_chowned(root: Path, entry: str) -> None:
    """Root gives a person only what it has just created: an existing entry of root's (a legacy tool's,
    an admin's `sudo mkdir`, or one a person raced into the name) is left untouched, that person gets
    one ERROR line naming the fix, the others converge, and once it is the person's the run converges."""
    converge(root)
    bob_home = root / "home" / "bob"
    homefs.write_private_file(Account("bob", 5002, 5002, bob_home), TOKEN_FILE, b"hvs.bob\n")
    path = bob_home / entry
    os.chown(path, 0, 0)
    path.chmod(0o755 if path.is_dir() else 0o644)
    before = mode_owner(path)
    changes, seen = plan(root)
    assert [(p.user, p.message) for p in seen.problems] == [
        ("bob", f"~/{entry} is owned by root, not by bob; refusing to give it to bob "
                "(remove it, or chown it to bob yourself)")]
    assert [c for c in changes if c.user == "bob"] == []
    assert apply(root, changes) == {}
    assert mode_owner(path) == before
    os.chown(path, 5002, 5002)  # the admin follows the line
    changes, seen = plan(root)
    assert seen.problems == ()
    assert apply(root, changes) == {}
    assert mode_owner(path)[1:] == (5002, 5002) and plan(root)[0] == []


def test_missing_users_fail_alone(root: Path) -> None:
    roster = Roster(users={**ROSTER.users, "dave": User("dave"), "erin": User("erin", parked=True)})
    with open(root / "etc" / "passwd", "a") as handle:
        handle.write(passwd_line("erin", 5005))  # erin has an account but no home folder
    # erin was parked after her home was removed; her timer is still enabled.
    converge(root)
    subprocess.run(["systemctl", f"--root={root}", "enable", "claude-auth-sync@erin.timer"],
                   check=True, capture_output=True)

    changes, seen = plan(root, roster)
    assert seen.problems == (
        UserProblem("dave", f"no such account in {root}/etc/passwd"),
        UserProblem("erin", f"home folder {root}/home/erin does not exist"),
    )
    # dave's timer is not enabled for an account that does not exist; erin's still stops.
    assert summary(changes) == {(D, Kind.TIMER, "claude-auth-sync@erin.timer", "enabled, want disabled (parked)")}
    assert apply(root, changes, roster) == {}
    assert is_enabled(root, "claude-auth-sync@dave.timer", "claude-auth-sync@erin.timer") == ["disabled", "disabled"]


def test_missing_user_does_not_stop_the_others(root: Path) -> None:
    roster = Roster(users={**ROSTER.users, "dave": User("dave")})
    changes, seen = plan(root, roster)
    assert seen.problems == (UserProblem("dave", f"no such account in {root}/etc/passwd"),)
    assert not [c for c in changes if c.user == "dave"]
    assert len([c for c in changes if c.kind is Kind.DIRECTORY]) == 6
    assert apply(root, changes, roster) == {}
    assert plan(root, roster)[0] == []
    assert mode_owner(root / "home" / "carol" / STATE_DIR) == (0o700, 5003, 5003)


def test_timer_of_a_user_no_longer_in_the_roster(root: Path) -> None:
    converge(root)
    smaller = Roster(users={"alice": User("alice"), "carol": User("carol", parked=True)})
    changes, _ = plan(root, smaller)
    assert summary(changes) == {
        (O, Kind.TIMER, "claude-auth-sync@bob.timer", "enabled, user not in the roster; `apply --prune` disables it"),
        (O, Kind.TIMER, "claude-auth-backup@bob.path", "enabled, user not in the roster; `apply --prune` disables it"),
        *((O, Kind.UNIT, f"claude-auth-{unit}@bob.{kind}.d/home.conf",
           "user not in the roster; `apply --prune` removes it")
          for unit, kind in (("sync", "service"), ("backup", "service"), ("backup", "path")))}
    pruned, _ = plan(root, smaller, prune=True)
    assert apply(root, pruned, smaller) == {}
    assert is_enabled(root, "claude-auth-sync@bob.timer", "claude-auth-backup@bob.path") == ["disabled", "disabled"]
    assert not list((root / "etc/systemd/system").glob("claude-auth-*@bob.*.d"))
    assert plan(root, smaller, prune=True)[0] == []


# --- attacks: a user plants links in their own home ------------------------


def snapshot(path: Path) -> dict[str, tuple[int, int, int, bytes | None]]:
    result = {}
    for entry in [path, *(sorted(path.rglob("*")) if path.is_dir() else [])]:
        st = entry.lstat()
        result[str(entry)] = (st.st_mode, st.st_uid, st.st_gid,
                              entry.read_bytes() if stat.S_ISREG(st.st_mode) else None)
    return result


def _replace_with_link(path: Path, target: Path, *, hard: bool = False) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    if hard:
        os.link(target, path)
    else:
        os.symlink(target, path)


ATTACKS = {
    "config folder symlink to a root folder": (CONFIG_DIR, "dir", False,
                                               "~/.config/claude-auth-sync is a symbolic link; refusing to follow it"),
    "~/.config symlink": (".config", "dir", False, "~/.config is a symbolic link; refusing to follow it"),
    "~/.local symlink": (".local", "dir", False, "~/.local is a symbolic link; refusing to follow it"),
    "token file symlink to a root file": (TOKEN_FILE, "file", False,
                                          "~/.config/claude-auth-sync/vault-token is a symbolic link; refusing to follow it"),
    "token file hard link to a root file": (TOKEN_FILE, "file", True,
                                            "~/.config/claude-auth-sync/vault-token has 2 hard links (one may be planted); "
                                            "refusing to touch it"),
    "state folder symlink": (STATE_DIR, "dir", False,
                             "~/.local/state/claude-auth-sync is a symbolic link; refusing to follow it"),
}


@pytest.fixture
def victims(root: Path) -> Iterator[dict[str, Path]]:
    folder = root / "etc" / "victim"
    folder.mkdir(parents=True)
    folder.chmod(0o755)
    (folder / "settings").write_bytes(b"root's settings\n")
    (folder / "settings").chmod(0o644)
    secret = root / "etc" / "shadow"
    secret.write_bytes(b"root:$6$salt$hash:19000:0:99999:7:::\n")
    secret.chmod(0o640)
    yield {"dir": folder, "file": secret}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_leaves_the_victim_untouched_and_fails_only_that_user(
        root: Path, victims: dict[str, Path], attack: str) -> None:
    rel_path, victim_kind, hard, message = ATTACKS[attack]
    converge(root)
    bob = root / "home" / "bob"
    homefs.write_private_file(Account("bob", 5002, 5002, bob), TOKEN_FILE, b"hvs.bob\n")
    # Drift for bob (every managed path needs fixing) and for alice, then a plan made before the attack.
    (bob / CONFIG_DIR).chmod(0o755)
    (bob / STATE_DIR).chmod(0o755)
    os.chown(bob / TOKEN_FILE, 5002, 0)
    (bob / TOKEN_FILE).chmod(0o644)
    (root / "home" / "alice" / STATE_DIR).chmod(0o755)
    stale_plan, _ = plan(root)
    assert {c.user for c in stale_plan} == {"alice", "bob"}

    victim = victims[victim_kind]
    before = snapshot(victims["dir"]) | snapshot(victims["file"])
    _replace_with_link(bob / rel_path, victim, hard=hard)

    # Observing now: a clear problem for bob only, no change planned in bob's home.
    changes, seen = plan(root)
    assert seen.problems == (UserProblem("bob", message),)
    assert [c.name for c in changes] == ["alice:~/.local/state/claude-auth-sync"]

    # Applying the plan made before the attack: bob's affected changes fail, alice's succeed.
    errors = apply(root, stale_plan)
    assert errors, "at least one of bob's changes must have been refused"
    assert set(errors) <= {c.name for c in stale_plan if c.user == "bob"}
    assert all("refusing" in text for text in errors.values()), errors
    assert mode_owner(root / "home" / "alice" / STATE_DIR) == (0o700, 5001, 5001)

    assert snapshot(victims["dir"]) | snapshot(victims["file"]) == before
    assert plan(root)[1].problems == (UserProblem("bob", message),)


def test_an_attack_between_plan_and_apply_is_refused_by_homefs(root: Path, victims: dict[str, Path]) -> None:
    converge(root)
    bob = root / "home" / "bob"
    (bob / CONFIG_DIR).chmod(0o755)
    [change] = plan(root)[0]
    _replace_with_link(bob / CONFIG_DIR, victims["dir"])
    before = snapshot(victims["dir"])
    ctx = LocalContext.create(root, accounts(root))
    with pytest.raises(UnsafePath, match=r"~/\.config/claude-auth-sync is a symbolic link"):
        apply_local_change(change, ctx)
    assert snapshot(victims["dir"]) == before


# --- reload / start / stop order on the live root (systemctl recorded, not run) ---


@pytest.fixture
def live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Pretend tmp_path is the live root; record the systemctl verbs instead of running them."""
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(systemd, "is_live_root", lambda root: True)
    monkeypatch.setattr(systemd, "daemon_reload", lambda: calls.append(("daemon-reload",)))
    monkeypatch.setattr(systemd, "enable", lambda root, units: calls.append(("enable", *units)))
    monkeypatch.setattr(systemd, "disable", lambda root, units: calls.append(("disable", *units)))
    monkeypatch.setattr(systemd, "start", lambda units: calls.append(("start", *units)))
    monkeypatch.setattr(systemd, "stop", lambda units: calls.append(("stop", *units)))
    return calls


def _unit_change(name: str) -> Change:
    return Change(A, Kind.UNIT, name, "missing", desired=DesiredUnit(name, "[Unit]\n"))


def _timer_change(action: Action, unit: str, enabled: bool) -> Change:
    return Change(action, Kind.TIMER, unit, "r", desired=DesiredTimer(unit, enabled, "alice", "parked"))


def test_live_root_reloads_once_before_starting_timers(tmp_path: Path, live: list[tuple[str, ...]]) -> None:
    ctx = LocalContext(tmp_path, {})
    done = [apply_local_change(change, ctx) for change in (
        _unit_change(SYNC_SERVICE), _unit_change(SYNC_TIMER),
        _timer_change(A, "claude-auth-sync@alice.timer", True), _timer_change(D, "claude-auth-sync@bob.timer", False))]
    finish_local({Kind.UNIT, Kind.TIMER}, ctx)
    assert done == ["written", "written", "enabled and started", "disabled and stopped"]
    assert live == [("daemon-reload",), ("enable", "claude-auth-sync@alice.timer"),
                    ("start", "claude-auth-sync@alice.timer"), ("disable", "claude-auth-sync@bob.timer"),
                    ("stop", "claude-auth-sync@bob.timer")]


def test_live_root_reloads_once_after_unit_changes_alone(tmp_path: Path, live: list[tuple[str, ...]]) -> None:
    ctx = LocalContext(tmp_path, {})
    apply_local_change(_unit_change(SYNC_SERVICE), ctx)
    apply_local_change(_unit_change(RECONCILE_SERVICE), ctx)
    finish_local({Kind.UNIT}, ctx)
    assert live == [("daemon-reload",)]
    finish_local(set(), LocalContext(tmp_path, {}))
    assert live == [("daemon-reload",)]


def test_other_roots_never_start_stop_or_reload(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("must not be called with a root other than /")

    for verb in ("start", "stop", "daemon_reload", "is_active"):
        monkeypatch.setattr(systemd, verb, refuse)
    converge(root)


def test_a_change_of_another_domain_is_refused(root: Path) -> None:
    with pytest.raises(local_apply.LocalChangeError, match="not a local change"):
        apply_local_change(Change(A, Kind.POLICY, "p", "missing"), LocalContext(root, {}))


# --- the command line, end to end (real OpenBao, temporary --root) ---------


def test_cli_plan_apply_plan_again(root: Path, openbao: Any, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import secrets

    from reconcile.cli import main

    prefix = f"local-cli-{secrets.token_hex(3)}"
    roster_file = root.parent / "roster.yaml"
    roster_file.write_text(
        f"vault:\n  path_prefix: test/{prefix}\n  policy_prefix: {prefix}-\n"
        "users:\n  alice: {}\n  bob: {}\n  carol: {parked: true}\n  dave: {}\n")
    monkeypatch.setenv("VAULT_ADDR", openbao.address)
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    monkeypatch.delenv("CLAUDE_AUTH_NO_ADMIN", raising=False)
    args = ["--roster", str(roster_file), "--root", str(root), "--json"]

    # dave has no account: exit 1 (a problem), everyone else still planned and applied.
    assert main(["plan", *args]) == 1
    captured = capsys.readouterr()
    assert f"dave: no such account in {root}/etc/passwd" in captured.err
    planned = {(c["kind"], c["name"]) for c in json.loads(captured.out)}
    assert {("directory", "alice:~/.config/claude-auth-sync"), ("directory", "carol:~/.local/state/claude-auth-sync"),
            ("unit", SYNC_SERVICE), ("unit", RECONCILE_TIMER), ("timer", "claude-auth-sync@bob.timer"),
            ("timer", RECONCILE_TIMER)} <= planned
    local_kinds = {"directory", "token-file", "unit", "timer"}
    assert not [name for kind, name in planned if kind in local_kinds and "dave" in name]

    assert main(["apply", *args]) == 1
    capsys.readouterr()
    for name, uid in IDS.items():
        assert mode_owner(root / "home" / name / TOKEN_FILE) == (0o600, uid, uid)  # written by the Vault side
        assert mode_owner(root / "home" / name / STATE_DIR) == (0o700, uid, uid)
    assert is_enabled(root, "claude-auth-sync@alice.timer", "claude-auth-sync@carol.timer") == ["enabled", "disabled"]

    roster_file.write_text(roster_file.read_text().replace("  dave: {}\n", ""))
    assert main(["plan", *args]) == 2
    # Only dave's Vault policy is reported as orphaned (--prune removes it); pending: the host's role and
    # host policy, which still allow dave's policy (issue 23).
    assert sorted((c["action"], c["kind"]) for c in json.loads(capsys.readouterr().out)) == [
        ("orphaned", "policy"), ("update", "host-role"), ("update", "policy")]
