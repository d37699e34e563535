"""reconcile.local.execaccess and its use by plan/apply: can each person run the units' ExecStart= program?

First the permission decision on literal values, then the walk over real
files (links, `#!` scripts, interpreters), then plan and apply in a sandbox
--root against the real OpenBao with the program installed below a 0700
folder, as an administrator installing into /root would.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest


from reconcile.local.execaccess import (EXECUTE, READ, SEARCH, Access, Person, Program, denial, is_granted,
                                        observe_program, people)
from reconcile.local import desired as local_desired
from reconcile.local.accounts import Account
from reconcile.common.exitcodes import Exit
from tests.support.world import World

ALICE = Person("alice", 5001, frozenset({5001, 600}))


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A 0755 folder every uid can enter (pytest's own tmp_path sits below a 0700 folder)."""
    folder = Path(tempfile.mkdtemp(prefix="claude-auth-exec-", dir="/var/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("access, granted", [
    (Access("/opt", SEARCH, 0o40755, 0, 0), True),
    (Access("/root", SEARCH, 0o40700, 0, 0), False),
    (Access("/srv/own", SEARCH, 0o40700, 5001, 5001), True),           # the person's own folder
    (Access("/srv/team", SEARCH, 0o40750, 0, 600), True),              # a supplementary group
    (Access("/srv/other", SEARCH, 0o40750, 0, 601), False),            # a group they are not in
    (Access("/srv/odd", SEARCH, 0o40607, 5001, 0), False),             # owner bits win, even if "other" allows
    (Access("/srv/grp", SEARCH, 0o40705, 0, 600), False),              # group bits win over "other"
    (Access("/opt/x", EXECUTE, 0o100755, 0, 0), True),
    (Access("/opt/x", EXECUTE, 0o100744, 0, 0), False),
    (Access("/opt/x", READ, 0o100711, 0, 0), False),                   # a script must be readable
    (Access("/opt/x", READ, 0o100644, 0, 0), True),
])
def test_permission_bits(access: Access, granted: bool) -> None:
    assert is_granted(access, ALICE) is granted


def test_root_searches_anything_but_executes_only_with_an_x_bit() -> None:
    root = Person("root", 0, frozenset({0}))
    assert is_granted(Access("/root", SEARCH, 0o40700, 5001, 5001), root)
    assert not is_granted(Access("/opt/x", EXECUTE, 0o100644, 0, 0), root)


def test_denial_names_the_first_path_refused_and_who_owns_it() -> None:
    program = Program("/root/venv/bin/claude-auth", (
        Access("/", SEARCH, 0o40755, 0, 0),
        Access("/root", SEARCH, 0o40700, 0, 0),
        Access("/root/venv/bin/claude-auth", EXECUTE, 0o100755, 0, 0)))
    assert denial(program, ALICE) == ("cannot run /root/venv/bin/claude-auth: cannot enter the folder /root "
                                      "(mode 0700, owner uid 0, group gid 0)")
    assert denial(Program("/x", (), broken="/x does not exist"), ALICE) == "cannot run /x: /x does not exist"
    assert denial(Program("/usr/bin/true", (Access("/usr/bin/true", EXECUTE, 0o100755, 0, 0),)), ALICE) is None


# --- the walk, on real files ---------------------------------------------------------------------


def test_a_venv_script_needs_its_folders_itself_and_its_linked_interpreter(reachable: Path) -> None:
    """Like a venv: bin/claude-auth is `#!.../bin/python`, a link to the system python."""
    prefix = reachable / "opt"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python").symlink_to(os.path.realpath(sys.executable))
    script = prefix / "bin" / "claude-auth"
    script.write_text(f"#!{prefix}/bin/python\nprint('hi')\n")
    script.chmod(0o755)
    link = reachable / "claude-auth"
    link.symlink_to(script)  # as /usr/local/bin/claude-auth is

    program = observe_program(str(link))
    assert program.broken is None
    needs = [(a.path, a.need, a.role) for a in program.accesses]
    assert (str(prefix / "bin"), SEARCH, "program") in needs
    assert (str(script), EXECUTE, "program") in needs and (str(script), READ, "program") in needs
    assert (str(prefix / "bin"), SEARCH, "interpreter") in needs
    real_python = os.path.realpath(sys.executable)
    assert (real_python, EXECUTE, "interpreter") == needs[-1]
    assert (os.path.dirname(real_python), SEARCH, "interpreter") in needs
    assert denial(program, ALICE) is None

    prefix.chmod(0o700)  # what `make install PREFIX=/root/...` would meet
    try:
        why = denial(observe_program(str(link)), ALICE)
    finally:
        prefix.chmod(0o755)
    assert why == (f"cannot run {link}: cannot enter the folder {prefix} "
                   f"(mode 0700, owner uid 0, group gid 0)")


def test_an_unreachable_interpreter_is_named_as_such(reachable: Path) -> None:
    hidden = reachable / "hidden"
    hidden.mkdir(mode=0o700)
    (hidden / "python").symlink_to(os.path.realpath(sys.executable))
    public = reachable / "public"
    public.mkdir(mode=0o755)
    script = public / "claude-auth"
    script.write_text(f"#!{hidden}/python -I\n")
    script.chmod(0o755)
    why = denial(observe_program(str(script)), ALICE)
    assert why == (f"cannot run {script}: cannot enter the folder {hidden} (the interpreter of {script}) "
                   f"(mode 0700, owner uid 0, group gid 0)")


@pytest.mark.parametrize("make, expected", [
    (lambda p: None, "does not exist"),
    (lambda p: (p.parent / "loop").symlink_to("loop") or p.symlink_to(p.parent / "loop"), "too many symbolic links"),
    (lambda p: p.mkdir(), "is not a regular file"),
    (lambda p: p.write_text("#!\n") or p.chmod(0o755), "has an empty #! line"),
])
def test_what_nobody_can_run(tmp_path: Path, make: object, expected: str) -> None:
    path = tmp_path / "claude-auth"
    make(path)  # type: ignore[operator]
    program = observe_program(str(path))
    assert program.broken is not None and expected in program.broken


def test_groups_come_from_the_user_database_under_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "group").write_text("root:x:0:\nstaff:x:600:bob,alice\nother:x:601:bob\nbad line\n")
    found = people(tmp_path, [Account("alice", 5001, 5001, tmp_path / "home/alice")])
    assert found == {"alice": Person("alice", 5001, frozenset({5001, 600}))}


# --- plan and apply, with the program below a 0700 folder ---------------------------------------


def install_below(folder: Path, mode: int) -> str:
    """A console script like pip writes (`#!<venv>/bin/python`), inside `folder` (its mode `mode`)."""
    bin_dir = folder / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(os.path.realpath(sys.executable))
    script = bin_dir / "claude-auth"
    script.write_text(f"#!{bin_dir}/python\nfrom reconcile.cli import main\n")
    script.chmod(0o755)
    folder.chmod(mode)
    return str(script)


def timer_state(world: World, user: str) -> str:
    result = subprocess.run(["systemctl", f"--root={world.root}", "is-enabled", f"claude-auth-sync@{user}.timer"],
                            capture_output=True, text=True)
    return result.stdout.strip() or result.stderr.strip()


def test_an_install_below_a_0700_folder_is_one_error_per_person_and_no_timer(
        world: World, reachable: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    program = install_below(reachable / "private", 0o700)
    monkeypatch.setattr(local_desired, "default_exec_path", lambda: program)
    world.write_roster({"alice": {}, "bob": {"parked": True}})

    planned = world.run("plan")
    assert planned.code == Exit.ERROR
    denied = (f"cannot run {program}: cannot enter the folder {reachable / 'private'} (mode 0700, owner uid 0, "
              "group gid 0); their sync timer is not enabled (install where every person can reach it: README, "
              "\"Install on a workstation\")")
    # One ERROR line naming the path and the person; bob (parked, no timer) is not checked.
    assert planned.err.splitlines().count(f"ERROR alice: {denied}") == 1
    assert "ERROR bob" not in planned.err
    assert "claude-auth-sync@alice.timer" not in planned.out

    applied = world.run("apply")
    assert applied.code == Exit.ERROR
    assert applied.err.splitlines().count(f"ERROR alice: {denied}") == 1
    assert timer_state(world, "alice") == "disabled"
    assert world.token("alice") is not None  # everything else for alice is still done

    (reachable / "private").chmod(0o755)  # the administrator fixes the install
    again = world.run("apply")
    assert again.code == Exit.OK, again.err
    assert "ERROR" not in again.err
    assert timer_state(world, "alice") == "enabled"
    world.assert_converged()


def test_a_group_that_opens_the_folder_is_enough(world: World, reachable: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    folder = reachable / "team"
    program = install_below(folder, 0o750)
    os.chown(folder, 0, 4242)
    monkeypatch.setattr(local_desired, "default_exec_path", lambda: program)
    world.write_roster({"alice": {}, "bob": {}})
    (world.root / "etc" / "group").write_text("root:x:0:\nclaude-auth:x:4242:alice\n")

    applied = world.run("apply")
    assert applied.code == Exit.ERROR
    assert [line.split(":")[0] for line in applied.err.splitlines() if line.startswith("ERROR")] == ["ERROR bob"]
    assert (timer_state(world, "alice"), timer_state(world, "bob")) == ("enabled", "disabled")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
