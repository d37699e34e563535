"""Scale guards that run in milliseconds (issue 14); the 10,000-person figures live in `make bench`.

Timing is never asserted here (the machine is shared); what made the cost grow
faster than the number of people is counted instead, so each guard fails the
same way every run when its bug comes back.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from reconcile.local import desired as local_desired
from reconcile.local import observe as local_observe
from reconcile.local.accounts import lookup_accounts
from reconcile.common.exitcodes import Exit
from reconcile.roster.values import Roster, User
from tests.support.world import World

PEOPLE = 200


class CountedTuple(tuple):  # type: ignore[type-arg]
    """A tuple that counts how often it is walked."""

    walks = 0

    def __iter__(self) -> Iterator[Any]:
        type(self).walks += 1
        return super().__iter__()


def test_local_observation_walks_the_desired_paths_once_not_once_per_person(tmp_path: Path) -> None:
    names = [f"u{index:03d}" for index in range(PEOPLE)]
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("".join(
        f"{name}:x:{5001 + i}:{5001 + i}::/home/{name}:/bin/sh\n" for i, name in enumerate(names)))
    for i, name in enumerate(names):
        (tmp_path / "home" / name).mkdir(parents=True)
        os.chown(tmp_path / "home" / name, 5001 + i, 5001 + i)
    roster = Roster(users={name: User(name) for name in names})
    accounts = lookup_accounts(tmp_path, names)
    desired = local_desired.desired_local(roster, "/usr/bin/claude-auth", "/etc/claude-auth/roster.yaml",
                                        local_desired.homes_of(accounts))

    class Directories(CountedTuple):
        walks = 0

    class TokenFiles(CountedTuple):
        walks = 0

    counted = local_desired.DesiredLocal(desired.home_users, Directories(desired.directories),
                                       TokenFiles(desired.token_files), desired.units, desired.timers)
    observed = local_observe.observe_local(tmp_path, counted, accounts)

    assert len(observed.entries) == 3 * PEOPLE
    assert (Directories.walks, TokenFiles.walks) == (1, 1)  # per person it was PEOPLE each


def test_plan_observes_local_and_vault_in_one_thread(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker thread for the local walk made every Vault lookup wait for the GIL (the convoy)."""
    threads: list[threading.Thread] = []
    original = local_observe.observe_local

    def observe(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread())
        return original(*args, **kwargs)

    monkeypatch.setattr(local_observe, "observe_local", observe)
    world.write_roster({"alice": {}})
    assert world.run("plan").code == Exit.CHANGES_PENDING
    assert threads == [threading.current_thread()]
