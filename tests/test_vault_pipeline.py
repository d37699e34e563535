"""Pipelined Vault requests (reconcile.vault.pipeline): a fast path that changes no outcome.

Against a real OpenBao, behind the loopback fault proxy where a test needs to
see or break the wire: the lookups of a no-op plan and the policy writes of a
first apply are written several to a connection before any answer is read
(the proxy counts requests that arrived behind an earlier one), and whatever
is not answered plainly (a connection dropped mid-batch, a refusal, an answer
that cannot be read) is sent again the ordinary way, so every run prints what
the one-request-at-a-time path prints. The parser's own edge cases (chunked
bodies, an answer cut short, a huge one, garbage) are driven by a scripted
loopback server: OpenBao never sends those.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, Callable, Iterator

import pytest
import requests

from reconcile.vault import pipeline as vault_pipeline
from reconcile.common.exitcodes import Exit
from reconcile.vault.client import Vault
from reconcile.vault.values import Secret
from reconcile.vault.pipeline import Answer, Request
from tests.support.faultproxy import FaultProxy
from tests.support.openbao import OpenBaoServer
from tests.support.world import World

ADMIN_LOOKUP = b"POST /v1/auth/token/lookup HTTP"
SELF_LOOKUP = b"GET /v1/auth/token/lookup-self HTTP"
POLICY_WRITE = b"PUT /v1/sys/policies/acl/"
BACKUP_READ = b"GET /v1/secret/data/"
ACCESSOR_LOOKUP = b"POST /v1/auth/token/lookup-accessor HTTP"
PEOPLE = {f"p{index:02d}": {} for index in range(24)}


@pytest.fixture
def proxy(openbao: OpenBaoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    with FaultProxy(upstream_port=openbao.port) as fault:
        monkeypatch.setenv("VAULT_ADDR", fault.address)
        yield fault


def ordinary_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pipelined request unanswered and unsent: the run takes the ordinary path for all."""
    def nothing(address: str, wanted: Any, **kwargs: Any) -> vault_pipeline.Exchange:
        return vault_pipeline.Exchange(answers=[None] * len(wanted), sent=[False] * len(wanted))

    monkeypatch.setattr(vault_pipeline, "exchange", nothing)


def count(proxy: FaultProxy, *matches: bytes) -> None:
    proxy.count = matches
    proxy.seen.clear()
    proxy.pipelined = 0


# --- real OpenBao: the plan's lookups -------------------------------------------------------------


def test_a_no_op_plan_pipelines_its_lookups_and_prints_what_the_ordinary_path_prints(
        world: World, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    world.write_roster(PEOPLE)
    assert world.run("apply").code == Exit.OK
    count(proxy, ADMIN_LOOKUP)
    pipelined = world.run("plan")
    assert pipelined.code == Exit.OK, pipelined.err
    assert proxy.seen[ADMIN_LOOKUP] == len(PEOPLE) + 1  # one lookup each (and the host token's): every answer used
    assert proxy.pipelined > 0  # lookups arrived behind earlier ones, before those were answered

    count(proxy, ADMIN_LOOKUP)
    ordinary_only(monkeypatch)
    ordinary = world.run("plan")
    assert proxy.seen[ADMIN_LOOKUP] == len(PEOPLE) + 1  # and the host token's
    assert proxy.pipelined == 0
    assert (pipelined.code, pipelined.out, pipelined.err) == (ordinary.code, ordinary.out, ordinary.err)


def test_the_policy_list_is_read_while_the_tokens_are_looked_up(world: World, proxy: FaultProxy) -> None:
    """The LIST of every policy waits at the proxy until a token lookup has arrived: read before the
    lookups (one after the other), it would wait in vain."""
    world.write_roster(PEOPLE)
    assert world.run("apply").code == Exit.OK
    looked_up = threading.Event()
    waited_in_vain: list[bool] = []

    def on_request(head: bytes, number: int) -> None:
        if ADMIN_LOOKUP in head:
            looked_up.set()
        elif b"LIST /v1/sys/policies/detailed/acl" in head:
            waited_in_vain.append(not looked_up.wait(timeout=4))

    proxy.on_request = on_request
    planned = world.run("plan")
    assert planned.code == Exit.OK, planned.err
    assert waited_in_vain == [False]


def test_a_connection_lost_mid_batch_sends_the_unanswered_lookups_again_the_ordinary_way(
        world: World, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    world.write_roster(PEOPLE)
    assert world.run("apply").code == Exit.OK
    clean = world.run("plan")
    monkeypatch.setenv("CLAUDE_AUTH_VAULT_CONNECTIONS", "1")  # one connection: one batch after another
    count(proxy, ADMIN_LOOKUP)
    proxy.on_reply = lambda head, number: number != 5  # the 5th answer never arrives; the connection dies
    broken = world.run("plan")
    assert (broken.code, broken.out, broken.err) == (clean.code, clean.out, clean.err)
    # The 5th and every lookup written behind it on that connection were asked again, one by one.
    assert proxy.seen[ADMIN_LOOKUP] > len(PEOPLE)
    assert proxy.pipelined > 0


def test_the_hourly_runs_lookup_self_requests_are_pipelined_and_refusals_stay_the_persons_row(
        world: World, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Garbage tokens get a 500 (and a revoked one a 403) on the fast path: each is asked again the
    ordinary way, and only its owner's row says so, exactly as without the pipeline."""
    world.write_roster(PEOPLE)
    assert world.run("apply").code == Exit.OK
    world.put_token("p03", "b.!!!!")
    world.put_token("p07", "hvb.AAAAAQ%%%%")
    world.client.auth.token.revoke(world.token("p11"))
    monkeypatch.setenv("CLAUDE_AUTH_NO_ADMIN", "1")
    count(proxy, SELF_LOOKUP)
    pipelined = world.run("plan")
    assert proxy.pipelined > 0
    # The three refused ones asked again, and the host token's own lookup-self (issue 23).
    assert proxy.seen[SELF_LOOKUP] == len(PEOPLE) + 3 + 1
    errors = sorted(line.split(":")[0] for line in pipelined.err.splitlines() if line.startswith("ERROR"))
    assert errors == ["ERROR p03", "ERROR p07"], pipelined.err
    assert "p11" in pipelined.out + pipelined.err

    ordinary_only(monkeypatch)
    ordinary = world.run("plan")
    assert (pipelined.code, pipelined.out, pipelined.err) == (ordinary.code, ordinary.out, ordinary.err)


# --- real OpenBao: the apply's policy writes ------------------------------------------------------


def test_a_first_apply_writes_its_policies_pipelined_with_the_ordinary_output(
        world: World, proxy: FaultProxy) -> None:
    world.write_roster(PEOPLE)
    count(proxy, POLICY_WRITE)
    applied = world.run("apply")
    assert applied.code == Exit.OK, applied.err
    assert proxy.seen[POLICY_WRITE] == len(PEOPLE) + 1  # and this host's host policy (issue 23)
    assert proxy.pipelined > 0
    created = [line for line in applied.out.splitlines() if line.startswith("+ policy")]
    assert created == sorted(created) and len(created) == len(PEOPLE) + 1
    for user in PEOPLE:
        assert world.policy_text(user) is not None
    assert ("PUT", f"/v1/sys/policies/acl/{world.policy_name('p00')}") in world.writes()  # seen by the world
    world.assert_converged()


def test_policy_writes_whose_answers_are_lost_are_written_again_the_ordinary_way(
        world: World, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server carried out the 3rd write but its answer was lost with the connection: that one
    and those written behind it are sent again (a whole text: harmless twice); the run is clean."""
    world.write_roster(PEOPLE)
    monkeypatch.setenv("CLAUDE_AUTH_VAULT_CONNECTIONS", "1")
    count(proxy, POLICY_WRITE)
    proxy.drop_after(POLICY_WRITE, nth=3)
    applied = world.run("apply")
    assert applied.code == Exit.OK, applied.err
    assert proxy.seen[POLICY_WRITE] > len(PEOPLE)
    assert "ERROR" not in applied.err and "WARN" not in applied.err
    world.assert_converged()


def status_rows(world: World, *args: str) -> dict[str, dict[str, Any]]:
    run = world.run("status", "--json", *args)
    assert run.code == Exit.OK, run.err
    rows = {row["user"]: row for row in json.loads(run.out)["users"]}
    for row in rows.values():
        row.pop("token_ttl_seconds")  # counts down between two runs
    return rows


@pytest.mark.parametrize("hourly", [False, True], ids=["admin", "each-persons-own-token"])
def test_status_reads_the_backups_pipelined_and_a_hostile_one_stays_its_owners_cell(
        world: World, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, hourly: bool) -> None:
    """Backups read pipelined, each with the token the ordinary read would use; one nested too deep
    for the bounded reader is read again the ordinary way and fails only its owner's cell."""
    world.write_roster(PEOPLE)
    assert world.run("apply").code == Exit.OK
    for index, user in enumerate(list(PEOPLE)[:6]):
        world.client.secrets.kv.v2.create_or_update_secret(
            path=f"{world.path_prefix}/{user}", mount_point="secret",
            secret={"claude_ai_oauth_json": "{}", "backed_up_at": f"2026-11-0{index + 1}T00:00:00Z", "sib": "x"})
    deep = b'{"data": {"nest": ' + b"[" * 100 + b"]" * 100 + b"}}"
    answer = requests.post(f"{world.server.address}/v1/secret/data/{world.path_prefix}/p09", data=deep,
                           headers={"X-Vault-Token": world.token("p09") or ""}, timeout=30)
    assert answer.status_code == 200
    if hourly:
        monkeypatch.delenv("VAULT_TOKEN")
    count(proxy, BACKUP_READ)
    pipelined = status_rows(world)
    assert proxy.pipelined > 0
    assert proxy.seen[BACKUP_READ] == len(PEOPLE) + 1  # p09's, read again the ordinary way
    assert [pipelined[user]["backup_version"] for user in list(PEOPLE)[:6]] == [1] * 6
    assert pipelined["p03"]["backup_at"].startswith("2026-11-04")
    assert pipelined["p09"]["backup_version"] is None
    assert any("nests deeper than 64 levels" in note for note in pipelined["p09"]["notes"])
    assert all("backup: no backup yet" in row["notes"]
               for user, row in pipelined.items() if user not in list(PEOPLE)[:6] + ["p09"])
    # Each of those costs a metadata read too (deleted or never written?), pipelined as well.

    ordinary_only(monkeypatch)
    assert status_rows(world) == pipelined


def test_the_garbage_scan_of_apply_prune_looks_accessors_up_pipelined(
        world: World, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """`plan --prune` looks up every accessor in Vault: pipelined, with the ordinary output."""
    monkeypatch.setenv("CLAUDE_AUTH_HOSTNAME", "pipe-host")
    world.write_roster({"p00": {}, "p01": {}})
    assert world.run("apply").code == Exit.OK
    strays = sorted(str(world.client.auth.token.create_orphan(
        policies=[world.policy_name("p01")], period="768h", no_default_policy=True,
        display_name="devvm-claude-auth-p01",
        meta={"managed_by": "claude-auth", "user": "p01", "host": "pipe-host"})["auth"]["accessor"])
        for _ in range(30))
    count(proxy, ACCESSOR_LOOKUP)
    asked_alone: list[str] = []
    original = Vault.lookup_accessor

    def lookup_accessor(self: Vault, accessor: str) -> Any:
        asked_alone.append(accessor)
        return original(self, accessor)

    monkeypatch.setattr(Vault, "lookup_accessor", lookup_accessor)
    pipelined = world.run("plan", "--prune")
    assert pipelined.code == Exit.CHANGES_PENDING, pipelined.err
    assert proxy.pipelined > 0
    # A pipelined answer that would get a token revoked is asked again on its own before it counts.
    assert set(strays) <= set(asked_alone)
    listed = sorted(line.split()[2] for line in pipelined.out.splitlines() if "referenced by nothing" in line)
    assert listed == sorted(f"{accessor[:8]}…" for accessor in strays)

    ordinary_only(monkeypatch)
    ordinary = world.run("plan", "--prune")
    assert (pipelined.code, pipelined.out, pipelined.err) == (ordinary.code, ordinary.out, ordinary.err)
    assert world.run("apply", "--prune").code == Exit.OK
    for accessor in strays:
        with pytest.raises(Exception):
            world.client.auth.token.lookup_accessor(accessor)


def test_the_pipeline_sends_nothing_once_vault_counts_as_down(openbao: OpenBaoServer) -> None:
    vault = Vault(openbao.address, Secret(openbao.root_token))
    vault._link.down = "gone for the test"
    assert vault.lookup_tokens_pipelined([Secret(openbao.root_token)], own=True) == [None]
    assert vault.write_policies_pipelined([("x", 'path "a" { capabilities = ["read"] }')]) == [False]
    assert sum(vault.requests.values()) == 0


def test_an_http_proxy_in_the_environment_keeps_the_fast_path_off(openbao: OpenBaoServer,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a proxy, requests go as requests sends them; the pipeline speaks to Vault directly."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    vault = Vault(openbao.address, Secret(openbao.root_token))
    assert vault.lookup_tokens_pipelined([Secret(openbao.root_token)], own=True) == [None]
    assert sum(vault.requests.values()) == 0


def test_the_pipelined_lookups_answer_what_the_ordinary_ones_answer(openbao: OpenBaoServer) -> None:
    vault = Vault(openbao.address, Secret(openbao.root_token))
    token = Secret(openbao.root_token)
    quick = vault.lookup_tokens_pipelined([token, Secret("hvs.not-a-token")], own=False)
    assert quick[0] == vault.lookup_token(token)
    assert quick[1] is None  # refused: for the ordinary path (the active node) to decide
    assert vault.requests["POST-READ"] == 2 + 1


def test_pipelined_lookups_over_tls_verify_the_server_with_the_configured_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real OpenBao with `-dev-tls`: the fast path speaks TLS with the CA the client is configured
    with (VAULT_CACERT here), and with any other CA it answers nothing (the certificate is refused,
    never skipped), leaving every lookup to the ordinary path."""
    import certifi

    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "VAULT_CACERT"):
        monkeypatch.delenv(name, raising=False)
    with OpenBaoServer(tls=True) as server:
        vault = Vault(server.address, Secret(server.root_token), cacert=str(server.ca_path))
        minted = [vault.create_orphan_token(policies=["default"], period="1h", display_name=f"tls-{index}",
                                            meta={"user": f"u{index}"}) for index in range(20)]
        quick = vault.lookup_tokens_pipelined([token.token for token in minted], own=False)
        assert [info.accessor if info else None for info in quick] == [token.accessor for token in minted]
        assert vault.requests["POST-READ"] == 20

        stranger = Vault(server.address, Secret(server.root_token), cacert=certifi.where())
        assert stranger.lookup_tokens_pipelined([token.token for token in minted], own=False) == [None] * 20


# --- the parser, against a scripted loopback server ------------------------------------------------


class Scripted:
    """Answers each connection's requests with the next scripted reply bytes (one per request)."""

    def __init__(self, replies: list[bytes], *, close_after: int | None = None) -> None:
        self.replies = replies
        self.close_after = close_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = 0
        self.raw = b""
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            buffer = b""
            answered = 0
            while answered < len(self.replies):
                while buffer.count(b"\r\n\r\n") <= answered:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                self.received = buffer.count(b"\r\n\r\n")
                self.raw = buffer
                conn.sendall(self.replies[answered])
                answered += 1
                if self.close_after is not None and answered >= self.close_after:
                    return

    def close(self) -> None:
        self.listener.close()


def run(server: Scripted, n: int, *, max_body: int = 1 << 20) -> list[Answer | None]:
    wanted = [Request("GET", f"/v1/x/{index}", (("X-Vault-Token", "s.secret"),)) for index in range(n)]
    return vault_pipeline.exchange(server.address, wanted, connections=1, depth=8, timeout=2.0,
                                   until=time.monotonic() + 5, max_body=max_body).answers


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    servers: list[Scripted] = []

    def make(replies: list[bytes], **kwargs: Any) -> Scripted:
        servers.append(Scripted(replies, **kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_answers_are_matched_to_requests_in_order_with_lengths_and_chunks(scripted: Callable[..., Scripted]) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=1\r\n\":1}\r\n0\r\nT: 1\r\n\r\n"
    server = scripted([ok(b'{"n":0}'), chunked, b"HTTP/1.1 204 No Content\r\n\r\n", ok(b"[]")])
    answers = run(server, 4)
    assert answers == [Answer(200, b'{"n":0}'), Answer(200, b'{"a":1}'), Answer(204, b""), Answer(200, b"[]")]
    assert server.received == 4  # all four were written before the first answer went back


@pytest.mark.parametrize("bad", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort",  # cut short by the close
    b"SMTP ready\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: " + b"y" * 10000 + b"\r\n\r\nZ",  # a header line too long
    b"HTTP/1.1 200 OK\r\n\r\n",  # no length: it would end with the connection
])
def test_an_answer_that_cannot_be_read_leaves_it_and_those_behind_it_unanswered(
        scripted: Callable[..., Scripted], bad: bytes) -> None:
    server = scripted([ok(b"1"), bad, ok(b"3")], close_after=2)
    assert run(server, 3) == [Answer(200, b"1"), None, None]


def test_an_answer_larger_than_the_cap_is_not_read(scripted: Callable[..., Scripted]) -> None:
    big = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"x" * 1024 + b"\r\n"
    assert run(scripted([ok(b"1"), big * 1]), 2, max_body=1000) == [Answer(200, b"1"), None]
    assert run(scripted([ok(b"x" * 2000)]), 1, max_body=1000) == [None]


def test_connection_close_ends_the_connection_after_that_answer(scripted: Callable[..., Scripted]) -> None:
    server = scripted([b"HTTP/1.1 503 Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", ok(b"2")])
    assert run(server, 2) == [Answer(503, b""), None]


def test_a_header_value_with_a_line_break_is_never_written() -> None:
    assert vault_pipeline.encode(Request("GET", "/v1/x", (("X-Vault-Token", "a\r\nX-Evil: 1"),)), "h") is None
    assert vault_pipeline.encode(Request("GET", "/v1/x", (("X-Vault-Token", "hvs.ok"),)), "h") is not None


def test_the_host_header_never_carries_credentials_of_the_address(scripted: Callable[..., Scripted]) -> None:
    server = scripted([ok(b"1")])
    address = server.address.replace("http://", "http://user:pass@")
    result = vault_pipeline.exchange(address, [Request("GET", "/v1/x")], connections=1, timeout=2.0,
                                     until=time.monotonic() + 5, max_body=1000)
    assert result.answers == [Answer(200, b"1")]
    assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in server.raw and b"pass" not in server.raw


def test_a_refused_connection_leaves_everything_unanswered_and_unsent() -> None:
    port = socket.create_server(("127.0.0.1", 0))
    address = f"http://127.0.0.1:{port.getsockname()[1]}"
    port.close()
    result = vault_pipeline.exchange(address, [Request("GET", "/v1/x")] * 3, connections=2, timeout=1.0,
                                     until=time.monotonic() + 5, max_body=1000)
    assert result.answers == [None] * 3 and result.sent == [False] * 3


def test_a_silent_server_is_given_up_on_at_the_timeout(scripted: Callable[..., Scripted]) -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    try:
        start = time.monotonic()
        result = vault_pipeline.exchange(f"http://127.0.0.1:{listener.getsockname()[1]}",
                                         [Request("GET", "/v1/x")] * 3, connections=1, timeout=0.5,
                                         until=time.monotonic() + 5, max_body=1000)
        assert result.answers == [None] * 3 and result.sent == [True] * 3
        assert time.monotonic() - start < 3
    finally:
        listener.close()
