"""statefile.Journal, the write-ahead log of mints, on a real file in a temporary root."""

from __future__ import annotations

import json
from pathlib import Path

from reconcile.local.statefile import Journal, State, read_state


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def on_disk(root: Path) -> dict[str, object]:
    return dict(json.loads((root / "var/lib/claude-auth/state.json").read_text()))


def test_every_intent_is_on_disk_before_its_nonce_is_handed_out(tmp_path: Path) -> None:
    journal = Journal(tmp_path, State({"old": "acc-old"}, (), {"n0": "carol"}), clock=Clock())
    journal.prepare(["alice", "bob"])
    written = on_disk(tmp_path)["intents"]
    assert sorted(entry["user"] for entry in written.values()) == ["alice", "bob", "carol"]  # type: ignore[union-attr]
    nonce = journal.intend("alice")
    assert nonce in written  # type: ignore[operator]
    surprise = journal.intend("dave")  # not prepared: written before it is handed out
    assert read_state(tmp_path).intents[surprise] == "dave"
    # A crash now: carol's (from before), alice's and dave's (asked for) are outstanding; bob's never was.
    assert set(journal.outstanding()) == {"n0", nonce, surprise}


def test_settling_records_the_token_and_writes_at_most_once_a_second(tmp_path: Path) -> None:
    clock = Clock()
    journal = Journal(tmp_path, State(), clock=clock)
    journal.prepare(["alice", "bob"])
    first, second = journal.intend("alice"), journal.intend("bob")
    journal.settle(first, "alice", "acc-a")
    assert read_state(tmp_path).records == {}  # written less than a second ago: not yet
    clock.now = 1.5
    journal.settle(second, "bob", "acc-b")
    state = read_state(tmp_path)
    assert state.records == {"alice": "acc-a", "bob": "acc-b"} and state.intents == {}
    assert journal.outstanding() == {}


def test_a_record_that_replaces_a_token_keeps_the_replaced_one_to_revoke_in_the_same_write(tmp_path: Path) -> None:
    """A crash after this write and before the revocation must leave the old token findable."""
    clock = Clock()
    journal = Journal(tmp_path, State({"alice": "acc-old"}, ("acc-other",)), clock=clock)
    journal.prepare(["alice"])
    nonce = journal.intend("alice")
    clock.now = 1.5
    journal.settle(nonce, "alice", "acc-new", replaced=("acc-old", "acc-new"))
    state = read_state(tmp_path)
    assert state.records == {"alice": "acc-new"}
    assert state.pending_revoke == ("acc-old", "acc-other")  # never the new one
