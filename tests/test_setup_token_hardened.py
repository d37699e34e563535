"""Setup-token mode with the sync's hardening (issue 10) under it: what the merge of the two put together.

Against a real OpenBao and the real pinned claude CLI, as tests/test_setup_token.py:

- the setup-token install goes through credentials.replace_oauth, so it waits
  for Claude's own refresh lock; held past the wait, the run is a SKIP that
  writes nothing (neither the file, nor a kept copy, nor the OAuth backup);
- `claude-auth setup-token` stores by check-and-set through the undecoded
  reader and writer, so a sibling key no decoder could read (nested 3,000
  deep) is carried over byte for byte, and the sync then reads the path beside
  it;
- a `claude_setup_token` field nested deep or huge is one clean FAIL line;
- the probe that proves a setup token sends no nonessential traffic;
- `claude-auth setup-token` reads the person's token file as the sync does
  (a FIFO there is one FAIL line, not a hang).
"""

from __future__ import annotations

import io
import json
import os
import threading

import pytest

from reconcile.commands import setup_token_cmd
from reconcile.sync import livecheck
from reconcile.sync import setup_token as st
from tests.test_setup_token import Spawned, new_setup_token, person, spawned, store, stored  # noqa: F401
from tests.test_sync_hostile_kv import deep, read_raw, write_raw
from tests.test_sync_real import SIBLING, SyncUser, claude_on_path, current_version, new_oauth  # noqa: F401
from tests.test_sync_refresh_lock import ForeignHolder


@pytest.mark.parametrize("oauth_backed_up", [True, False], ids=["install", "backup-before-install"])
def test_a_held_refresh_lock_makes_the_setup_token_sync_skip_and_write_nothing(
        person: SyncUser, oauth_backed_up: bool) -> None:
    # The person's refreshable login; backed up already (the install is the only write due), or
    # newer than the backup (it is backed up first, under the same lock, then installed over).
    person.extra_env["CLAUDE_AUTH_LOGIN"] = "oauth"
    person.login(new_oauth("first"))
    assert person.sync().status.value == "OK"
    if not oauth_backed_up:
        person.login(new_oauth("refreshed"))
    token = new_setup_token()
    stored(store(person, token))
    person.extra_env.update(CLAUDE_AUTH_LOGIN="setup-token", CLAUDE_AUTH_REFRESH_LOCK_WAIT="2")
    raw, version = person.credentials.read_bytes(), current_version(person.root, person.kv_path)
    lock = person.home / ".claude" / ".oauth_refresh.lock"

    with ForeignHolder(lock):
        outcome = person.sync()
        assert lock.is_dir()  # never taken over from a live holder

    assert (outcome.status.value, outcome.exit_code) == ("SKIP", 0), outcome.line
    assert outcome.line.startswith(f"SKIP {person.name}: claude is refreshing the login "
                                   "(~/.claude/.oauth_refresh.lock held for more than 2 s)")
    assert "the setup token was not installed" in outcome.line
    assert person.credentials.read_bytes() == raw
    assert person.kept_copies() == []
    assert current_version(person.root, person.kv_path) == version
    assert not (person.home / ".claude.lock").exists()

    # Once Claude is done, the next run installs it.
    assert person.sync().line.startswith(f"OK {person.name}: setup token works")
    assert json.loads(person.credentials.read_text())["claudeAiOauth"]["accessToken"] == token


def test_storing_carries_a_deeply_nested_sibling_over_byte_for_byte(person: SyncUser) -> None:
    sibling = deep()
    write_raw(person, {SIBLING: sibling, "note": json.dumps("kept")})
    before = read_raw(person)
    token = new_setup_token()

    code, out, err = store(person, token)

    assert (code, err) == (0, ""), out + err
    after = read_raw(person)
    assert after[SIBLING] == before[SIBLING] == sibling.encode()
    assert after["note"] == before["note"]
    assert json.loads(after[st.FIELD_TOKEN]) == token

    # The sync reads the path beside it too, and installs the token.
    outcome = person.sync()
    assert outcome.line.startswith(f"OK {person.name}: setup token works"), outcome.line
    assert read_raw(person)[SIBLING] == sibling.encode()


HOSTILE_TOKEN_FIELD = {
    "nested 2,000 deep": (deep(2000), "is not usable JSON (nested deeper than 2 levels)"),  # 4,001 bytes: under the cap
    "5 MB of text": (json.dumps("sk-ant-oat01-" + "x" * 5_000_000), "is larger than 4160 bytes"),
}


@pytest.mark.parametrize("case", list(HOSTILE_TOKEN_FIELD))
def test_a_hostile_setup_token_field_is_one_clean_fail_and_changes_nothing(person: SyncUser, case: str) -> None:
    value, why = HOSTILE_TOKEN_FIELD[case]
    write_raw(person, {st.FIELD_TOKEN: value, st.FIELD_EXPIRES_AT_MS: "1900000000000"})
    raw = person.login(new_oauth())
    version = current_version(person.root, person.kv_path)

    outcome = person.sync()

    assert outcome.line == (f"FAIL {person.name}: {st.FIELD_TOKEN} at secret/data/{person.kv_path} {why}; "
                            f"{st.HINT}; ~/.claude/.credentials.json left untouched")
    assert person.credentials.read_bytes() == raw
    assert current_version(person.root, person.kv_path) == version


def test_the_setup_token_probe_sends_no_nonessential_traffic(person: SyncUser, spawned: Spawned) -> None:
    stored(store(person, new_setup_token()))
    assert person.sync().status.value == "OK"

    assert len(spawned.oauth_envs) == 2  # the store's probe and the sync's, each with the token alone
    for env in spawned.oauth_envs:
        assert env[livecheck.NONESSENTIAL_TRAFFIC_VARIABLE] == "1"


def test_a_fifo_for_the_persons_token_file_is_one_fail_line_not_a_hang(
        person: SyncUser, monkeypatch: pytest.MonkeyPatch) -> None:
    # Read as the sync reads it (safefile): non-blocking, a regular file only. The identity check
    # is pointed at the person (the test runs as root); Vault is never reached.
    monkeypatch.setattr(setup_token_cmd, "_current_user", lambda: person.name)
    person.token_file.unlink()
    os.mkfifo(person.token_file, 0o600)
    token = new_setup_token()
    person.remember(token)
    out, err = io.StringIO(), io.StringIO()
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(setup_token_cmd.run(
        person.name, None, environ=person.environment(), stdin=io.StringIO(token), out=out, err=err,
        is_root=False)), daemon=True)

    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # blocked in open(): let it go, then fail
        os.close(os.open(person.token_file, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("claude-auth setup-token hung on a FIFO token file")

    assert result == [1] and out.getvalue() == ""
    assert err.getvalue() == (f"FAIL {person.name}: cannot read your Vault token file {person.token_file}: "
                              "is a FIFO, not a regular file; refusing to use it; nothing stored\n")
    person.outputs += [err.getvalue()]
    assert current_version(person.root, person.kv_path) == 0
