"""Tests that each fail when one small, realistic bug is put into the product (issue 15).

Each section names the bug it guards. Every test here was run against its bug
by hand (the bug put in, the test seen failing, the bug taken out again); see
"How we know the tests bite" in docs/design.md. The races are forced, never
left to chance: a hook runs the competing writer between a read and its write.
Real components where the bug lives: OpenBao for check-and-set and policies,
the pinned claude CLI against the loopback Messages API stand-in for the sync.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import hvac
import pytest

from reconcile.common.exitcodes import Exit
from reconcile.sync import backup, livecheck
from reconcile.sync.livecheck import Verdict
from reconcile.vault.client import Vault
from reconcile.vault.values import CasConflict, KvRawSecret, Secret
from tests.support.openbao import OpenBaoServer
from tests.support.policy_text import expected_policy
from tests.support.world import World
from tests.test_sync_real import (  # noqa: F401  (claude_on_path and user are fixtures)
    KV_MOUNT, SIBLING, SyncUser, cas_merge, claude_on_path, current_version, new_oauth, read_kv, user,
)

# --- 1. check-and-set: a stale version never overwrites ------------------------------------------
# Bug guarded: Vault.kv_write_cas (or kv_write_cas_raw, the one the backup uses) stops sending
# `cas` and simply overwrites.


def _kv_path() -> str:
    return f"bites-{secrets.token_hex(4)}/claude-users/alice"


def test_a_write_with_a_stale_version_is_a_conflict_and_changes_nothing(openbao: OpenBaoServer,
                                                                        root_client: hvac.Client) -> None:
    vault = Vault(openbao.address, Secret(openbao.root_token))
    path = _kv_path()
    assert vault.kv_write_cas(KV_MOUNT, path, {"a": "1"}, cas=0) == 1
    assert vault.kv_write_cas(KV_MOUNT, path, {"a": "2"}, cas=1) == 2

    with pytest.raises(CasConflict):
        vault.kv_write_cas(KV_MOUNT, path, {"a": "stale"}, cas=1)
    with pytest.raises(CasConflict):  # cas=0 means "the path is new", and it is not
        vault.kv_write_cas(KV_MOUNT, path, {"a": "as-if-new"}, cas=0)

    assert read_kv(root_client, path) == (2, {"a": "2"})


def test_a_raw_write_with_a_stale_version_is_a_conflict_and_changes_nothing(openbao: OpenBaoServer,
                                                                            root_client: hvac.Client) -> None:
    vault = Vault(openbao.address, Secret(openbao.root_token))
    path = _kv_path()
    assert vault.kv_write_cas_raw(KV_MOUNT, path, {"a": b'"1"'}, cas=0) == 1
    assert vault.kv_write_cas_raw(KV_MOUNT, path, {"a": b'"2"'}, cas=1) == 2

    with pytest.raises(CasConflict):
        vault.kv_write_cas_raw(KV_MOUNT, path, {"a": b'"stale"'}, cas=1)
    with pytest.raises(CasConflict):
        vault.kv_write_cas_raw(KV_MOUNT, path, {"a": b'"as-if-new"'}, cas=0)

    assert read_kv(root_client, path) == (2, {"a": "2"})


def _stored_oauth(data: Mapping[str, Any]) -> Any:
    """The backed-up login as the sync decodes it, from a decoded KV map."""
    return backup.decode_stored_oauth(backup.json_fields(data))[0]


class _RacedStore:
    """A real Vault whose first consistent read (the one the write's version comes from) is followed
    at once by another tool's merge write.

    The backup then writes with the version it read, which is stale every
    time: the interleaving the check-and-set exists for, forced, not hoped for.
    """

    def __init__(self, vault: Vault, competing_write: Callable[[], None]) -> None:
        self.vault = vault
        self.competing_write = competing_write
        self.reads = 0

    def kv_read_raw(self, mount: str, path: str, *, consistent: bool = False) -> KvRawSecret | None:
        current = self.vault.kv_read_raw(mount, path, consistent=consistent)
        if consistent:  # the read whose version the write names
            self.reads += 1
            if self.reads == 1:
                self.competing_write()
        return current

    def kv_write_cas_raw(self, mount: str, path: str, fields: Mapping[str, bytes], cas: int) -> int:
        return self.vault.kv_write_cas_raw(mount, path, fields, cas)


@pytest.mark.parametrize("path_exists", [False, True], ids=["new-path", "existing-path"])
def test_a_sibling_written_between_the_backups_read_and_write_survives(
        openbao: OpenBaoServer, root_client: hvac.Client, path_exists: bool) -> None:
    path = _kv_path()
    if path_exists:
        cas_merge(root_client, path, {"other_tool": "kept"})
    password = "vw-" + secrets.token_urlsafe(16)
    store = _RacedStore(Vault(openbao.address, Secret(openbao.root_token)),
                        lambda: cas_merge(root_client, path, {SIBLING: password}))
    oauth = new_oauth()

    result = backup.back_up(store, KV_MOUNT, path, oauth, "2026-01-01T00:00:00Z", sleep=lambda _: None)

    version, data = read_kv(root_client, path) or (0, {})
    assert data.get(SIBLING) == password
    assert (result.written, result.attempts) == (True, 2)  # the first write lost, the second merged
    assert version == result.version == (3 if path_exists else 2)
    assert _stored_oauth(data) == oauth
    if path_exists:
        assert data["other_tool"] == "kept"


def test_a_full_sync_keeps_a_sibling_written_between_its_read_and_its_write(
        user: SyncUser, monkeypatch: pytest.MonkeyPatch) -> None:
    cas_merge(user.root, user.kv_path, {"other_tool": "kept"})
    password = "vw-" + secrets.token_urlsafe(16)
    user.remember(password)
    reads: list[int] = []
    original = Vault.kv_read_raw

    def raced_read(self: Vault, mount: str, path: str, *args: Any, **kwargs: Any) -> KvRawSecret | None:
        current = original(self, mount, path, *args, **kwargs)
        if not kwargs.get("consistent"):
            return current  # a first look from any node; the write names a consistent read's version
        reads.append(current.version if current else 0)
        if len(reads) == 1:
            cas_merge(user.root, user.kv_path, {SIBLING: password})
        return current

    monkeypatch.setattr(Vault, "kv_read_raw", raced_read)
    oauth = new_oauth()
    user.login(oauth)

    outcome = user.sync()

    assert outcome.status.value == "OK", outcome.line
    assert (user.stored() or (0, {}))[1].get(SIBLING) == password
    assert reads == [1, 2]  # read v1; the other tool wrote v2; the stale write lost; read again
    version, data = user.stored() or (0, {})
    assert version == 3
    assert (data[SIBLING], data["other_tool"]) == (password, "kept")
    assert _stored_oauth(data) == oauth


# --- 2. a policy is compared by its whole text, never by its header --------------------------------
# Bug guarded: plan compares only the `# Managed by claude-auth for user alice` line.


def _add_list(text: str, world: World) -> str:
    return text.replace('["create", "read", "update"]', '["create", "read", "update", "list"]', 1)


def _widen_path(text: str, world: World) -> str:
    kv = f"{world.path_prefix}/alice"
    return text.replace(f'"secret/data/{kv}"', f'"secret/data/{kv}*"', 1)


def _extra_stanza(text: str, world: World) -> str:
    return text + '\npath "secret/data/*" {\n  capabilities = ["read"]\n}\n'


@pytest.mark.parametrize("edit", [_add_list, _widen_path, _extra_stanza], ids=["adds-list", "widens-path",
                                                                              "extra-stanza"])
def test_a_policy_body_edited_by_hand_is_planned_and_restored_exactly(
        world: World, edit: Callable[[str, World], str]) -> None:
    world.write_roster({"alice": {}, "bob": {}})
    assert world.run("apply").code == Exit.OK
    want = expected_policy("alice", f"{world.path_prefix}/alice")
    assert world.policy_text("alice") == want
    edited = edit(want, world)
    assert edited != want and edited.split("\n", 1)[0] == want.split("\n", 1)[0]  # the header kept
    world.client.sys.create_or_update_acl_policy(world.policy_name("alice"), edited)

    plan = world.run("plan")
    assert plan.code == Exit.CHANGES_PENDING, plan.out + plan.err
    assert plan.lines == [f"~ policy {world.prefix}alice: text differs from the template",
                          "Plan: 0 to add, 1 to change, 0 to remove."]

    applied = world.run("apply")
    assert applied.code == Exit.OK, applied.out + applied.err
    assert world.policy_text("alice") == want
    assert world.policy_text("bob") == expected_policy("bob", f"{world.path_prefix}/bob")
    world.assert_converged()


# --- 3. outage signs win over authentication signs ---------------------------------------------------
# Bug guarded: classify() checks the auth rules before the outage rules.

BOTH_SIGNS = [
    # Printed by the real claude 2.1.197 for a 500 whose error message names an auth failure:
    "API Error: 500 authentication_error: Invalid bearer token (auth backend down). This is a server-side issue, "
    "usually temporary \u2014 try again in a moment. If it persists, check your inference gateway (127.0.0.1:39653).",
    # Shapes of the same build's messages, with both signs:
    'API Error: 500 {"type":"error","error":{"type":"authentication_error","message":"upstream auth service down"}}',
    "Failed to authenticate. API Error: 503 Service Unavailable",
    'API Error: 529 {"type":"error","error":{"type":"overloaded_error"}} \u00b7 Please run /login',
    "API Error: 502 Bad Gateway (OAuth error while contacting the identity provider)",
    "API Error: Unable to connect to API (ConnectionRefused) \u00b7 Not logged in",
    "Invalid bearer token \u00b7 Request timed out",
]


@pytest.mark.parametrize("output", BOTH_SIGNS)
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_an_answer_with_both_outage_and_auth_signs_is_an_outage(output: str, stream: str) -> None:
    stdout, stderr = (output + "\n", "") if stream == "stdout" else ("", output + "\n")
    result = livecheck.classify(1, stdout, stderr)
    assert result.verdict is Verdict.OUTAGE, result.reason
    assert result.reason.startswith("outage: ")


# --- 4. any group or other bit on the token file warns -----------------------------------------------
# Bug guarded: the warning checks only the "others" bits (0o007) or only read bits.


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o620, 0o610], ids=lambda mode: f"{mode:04o}")
def test_a_token_file_open_to_group_or_others_is_a_warning(user: SyncUser, mode: int) -> None:
    user.login(new_oauth())
    user.token_file.chmod(mode)

    outcome = user.sync()

    assert outcome.status.value == "OK", outcome.line
    assert user.outputs[-1].splitlines()[0] == (
        f"WARN {user.name}: the Vault token file {user.token_file} has mode {mode:04o}; expected 0600")


def test_a_token_file_of_mode_0600_gives_no_warning(user: SyncUser) -> None:
    user.login(new_oauth())
    outcome = user.sync()
    assert outcome.status.value == "OK", outcome.line
    assert not any(line.startswith("WARN") for line in user.outputs[-1].splitlines())


# --- 5. only an authentication failure may restore --------------------------------------------------
# Bug guarded: a timeout or an unexpected answer from claude leads to a restore.


@pytest.fixture
def silent_api() -> Iterator[str]:
    """A loopback port that accepts connections and never answers: claude waits until it is killed."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        server.close()


@pytest.fixture
def auth_worded_outage_api() -> Iterator[str]:
    """A Messages API that answers every request 500 with an authentication_error message."""
    body = json.dumps({"type": "error", "error": {"type": "authentication_error",
                                                  "message": "authentication_error: Invalid bearer token"}}).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


FAILURES = {
    "timeout": "timeout: ",
    "unexpected-answer": "claude answered something other than AUTH_OK",
    "outage": "outage: the API answered HTTP 500",
    "outage-in-auth-words": "outage: the API answered HTTP 500",
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failure_other_than_auth_never_restores_a_different_valid_backup(
        user: SyncUser, silent_api: str, auth_worded_outage_api: str, failure: str) -> None:
    good = new_oauth("good")
    user.login(good)
    assert user.sync().status.value == "OK"  # the backup: valid, and different from the login below
    backed_up = user.stored()
    raw = user.login(new_oauth("local"))
    if failure == "timeout":
        user.extra_env.update(ANTHROPIC_BASE_URL=silent_api, CLAUDE_AUTH_CLAUDE_TIMEOUT="5")
    elif failure == "unexpected-answer":
        user.api.reply_text = "I cannot comply with that."
    elif failure == "outage":
        user.api.outage = True
    else:
        user.extra_env["ANTHROPIC_BASE_URL"] = auth_worded_outage_api

    outcome = user.sync()

    assert outcome.status.value == "FAIL", outcome.line
    assert outcome.line.startswith(f"FAIL {user.name}: {FAILURES[failure]}"), outcome.line
    assert outcome.line.endswith("~/.claude/.credentials.json left untouched, no restore"), outcome.line
    assert user.credentials.read_bytes() == raw
    assert user.kept_copies() == []
    assert user.stored() == backed_up
