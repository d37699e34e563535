"""Many workstations, one roster, one 3-node OpenBao raft cluster (tests/support/cluster.py).

Each simulated host is a `--root` sandbox with its own host name
(CLAUDE_AUTH_HOSTNAME) running the real `claude-auth` as a subprocess, pointed at
one node. The cluster starts once for the module (about 13 s); each test uses
its own policy prefix so tests do not see each other's tokens.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import hvac
import pytest

from reconcile.sync.backup import back_up
from reconcile.vault.client import Vault
from reconcile.vault.values import Secret
from tests.support.cluster import RaftCluster
from tests.support.fleet import Host, Outcome, Relay, make_hosts, run_all, tool_tokens, write_roster
from tests.support.leaks import assert_no_secrets

PEOPLE = ["alice", "bob", "carol", "dave"]
CROWD = [f"u{i:02d}" for i in range(20)]
"""Enough people that the hosts' applies overlap (each host observes before the others have minted)."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[RaftCluster]:
    with RaftCluster() as running:
        running.enable_kv("secret")
        yield running


@pytest.fixture
def prefix() -> str:
    return f"f{secrets.token_hex(3)}-"


def root_client(cluster: RaftCluster) -> hvac.Client:
    return hvac.Client(url=cluster.wait_leader().address, token=cluster.root_token)


def all_ok(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        assert outcome.code == 0, f"{outcome.host} exit {outcome.code}:\n{outcome.out}\n{outcome.err}"


def referenced(hosts: list[Host], client: hvac.Client, users: list[str]) -> set[str]:
    """Accessors some host references: in a token file, a state record or a pending revocation."""
    accessors: set[str] = set()
    for host in hosts:
        for user in users:
            token = host.token_of(user)
            if token:
                try:
                    accessors.add(client.auth.token.lookup(token)["data"]["accessor"])
                except hvac.exceptions.Forbidden:
                    pass
        if host.state_file().exists():
            state = json.loads(host.state_file().read_text())
            accessors |= {entry["accessor"] for entry in state["tokens"].values()}
            accessors |= set(state.get("pending_revoke", []))
    return accessors


def unreferenced(hosts: list[Host], cluster: RaftCluster, prefix: str, users: list[str] = PEOPLE) -> set[str]:
    client = root_client(cluster)
    return set(tool_tokens(client, prefix)) - referenced(hosts, client, users)


def no_leaks(hosts: list[Host], cluster: RaftCluster, users: list[str] = PEOPLE) -> None:
    texts: list[str] = []
    values = {cluster.root_token}
    for host in hosts:
        texts += host.outputs
        if host.state_file().exists():
            texts.append(host.state_file().read_text())
        values |= {t for t in (host.token_of(user) for user in users) if t}
    assert_no_secrets(texts, values)


def converged(hosts: list[Host]) -> None:
    for outcome in run_all(hosts, "plan"):
        assert outcome.code == 0, f"{outcome.host}: {outcome.out}{outcome.err}"
        assert outcome.out.splitlines()[-1] == "No changes."


# --- separate homes -----------------------------------------------------------------------------


def test_hosts_apply_at_once_through_different_nodes(cluster: RaftCluster, prefix: str, tmp_path: Path) -> None:
    roster = tmp_path / "roster.yaml"
    write_roster(roster, prefix, {name: {} for name in PEOPLE})
    hosts = make_hosts(tmp_path, 5, PEOPLE, [n.address for n in cluster.nodes], cluster.root_token, roster,
                       shared_home=False)

    all_ok(run_all(hosts, "apply"))

    client = root_client(cluster)
    tokens = tool_tokens(client, prefix)
    assert len(tokens) == len(hosts) * len(PEOPLE)  # one per person per host
    for host in hosts:
        for user in PEOPLE:
            data = client.auth.token.lookup(host.token_of(user))["data"]
            assert {k: data["meta"][k] for k in ("managed_by", "user", "host")} == {
                "managed_by": "claude-auth", "user": user, "host": host.name}
    converged(hosts)
    assert len(tool_tokens(client, prefix)) == len(hosts) * len(PEOPLE)  # nobody revoked another's
    assert unreferenced(hosts, cluster, prefix) == set()
    no_leaks(hosts, cluster)


# --- shared homes ---------------------------------------------------------------------------------


def test_shared_homes_use_one_token_per_person(cluster: RaftCluster, prefix: str, tmp_path: Path) -> None:
    roster = tmp_path / "roster.yaml"
    write_roster(roster, prefix, {name: {} for name in CROWD})
    hosts = make_hosts(tmp_path, 5, CROWD, [n.address for n in cluster.nodes], cluster.root_token, roster,
                       shared_home=True)

    all_ok(run_all(hosts, "apply"))  # round 1: all hosts at once
    client = root_client(cluster)
    tokens = tool_tokens(client, prefix)
    assert sorted(data["meta"]["user"] for data in tokens.values()) == sorted(CROWD)  # one each
    assert unreferenced(hosts, cluster, prefix, CROWD) == set()
    for host in hosts:  # every host records the one token in the shared file
        state = json.loads(host.state_file().read_text())
        files = {user: client.auth.token.lookup(host.token_of(user))["data"]["accessor"] for user in CROWD}
        assert {u: e["accessor"] for u, e in state["tokens"].items()} == files
        assert state["pending_revoke"] == []

    written = {host.name: host.state_file().stat().st_mtime_ns for host in hosts}
    second = run_all(hosts, "apply")  # round 2: nothing to do, nothing written
    all_ok(second)
    for outcome in second:
        assert "Apply: 0 changed" in outcome.out or "No changes" in outcome.out, outcome.out
    assert {host.name: host.state_file().stat().st_mtime_ns for host in hosts} == written
    converged(hosts)
    assert set(tool_tokens(client, prefix)) == set(tokens)
    no_leaks(hosts, cluster, CROWD)


def test_shared_home_re_mint_replaces_the_one_token(cluster: RaftCluster, prefix: str, tmp_path: Path) -> None:
    """Every host finds the shared file gone at once: one host mints, the others adopt; the old token
    is revoked and nothing is left behind."""
    roster = tmp_path / "roster.yaml"
    write_roster(roster, prefix, {name: {} for name in CROWD})
    hosts = make_hosts(tmp_path, 5, CROWD, [n.address for n in cluster.nodes], cluster.root_token, roster,
                       shared_home=True)
    all_ok(run_all(hosts, "apply"))
    for user in CROWD:
        hosts[0].token_file(user).unlink()

    outcomes = run_all(hosts, "apply")
    all_ok(outcomes)
    assert sum(out.out.count("adopted") for out in outcomes) >= 1
    converged(hosts)
    all_ok(run_all(hosts, "apply"))  # each host revokes what it recorded and no longer uses
    client = root_client(cluster)
    assert sorted(d["meta"]["user"] for d in tool_tokens(client, prefix).values()) == sorted(CROWD)
    assert unreferenced(hosts, cluster, prefix, CROWD) == set()
    no_leaks(hosts, cluster, CROWD)


def test_a_host_never_removes_a_token_file_another_host_is_writing(cluster: RaftCluster, prefix: str,
                                                                    tmp_path: Path) -> None:
    """Apply removes temporary token files a killed run left, but in a shared home the temporary file
    may be another host's write in flight: removal waits for the person's mint lock."""
    roster = tmp_path / "roster.yaml"
    write_roster(roster, prefix, {"alice": {}})
    first, second = make_hosts(tmp_path, 2, ["alice"], [cluster.nodes[0].address], cluster.root_token, roster,
                               shared_home=True)
    all_ok([first.run("apply")])
    folder = first.token_file("alice").parent
    in_flight = folder / ".vault-token.tmp-0123456789abcdef"
    lock = os.open(folder / "mint.lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as the other host does while it writes
    try:
        in_flight.write_text("x")
        started = time.monotonic()
        process = second.start("apply")
        time.sleep(2)
        assert in_flight.exists()
    finally:
        os.close(lock)
    outcome = second.finish(process, started)
    all_ok([outcome])
    assert not in_flight.exists()  # once the writer is done, a leftover is stale and goes


# --- failover -------------------------------------------------------------------------------------


def test_a_leader_kill_mid_apply_is_ridden_out(cluster: RaftCluster, prefix: str, tmp_path: Path) -> None:
    people = [f"p{i:02d}" for i in range(30)]
    roster = tmp_path / "roster.yaml"
    write_roster(roster, prefix, {name: {} for name in people})
    leader = cluster.wait_leader()
    standbys = [n.address for n in cluster.nodes if n is not leader]
    hosts = make_hosts(tmp_path, 5, people, standbys, cluster.root_token, roster, shared_home=False)

    watch = hvac.Client(url=leader.address, token=cluster.root_token)
    before = len(watch.auth.token.list_accessors()["data"]["keys"])
    started = time.monotonic()
    processes = [(host, host.start("apply")) for host in hosts]
    while len(watch.auth.token.list_accessors()["data"]["keys"]) < before + 10:  # the mints are under way
        assert time.monotonic() - started < 60
        time.sleep(0.05)
    assert all(process.poll() is None for _, process in processes)  # the kill lands mid-apply
    cluster.kill(leader)
    try:
        outcomes = [host.finish(process, started, 180) for host, process in processes]
        all_ok(outcomes)
        print("apply seconds with a leader kill:", [round(o.seconds, 1) for o in outcomes])
        cluster.wait_leader(not_node=leader)
        client = root_client(cluster)
        assert len(tool_tokens(client, prefix)) == len(hosts) * len(people)
        for outcome in run_all(hosts, "plan"):
            assert outcome.code == 0 and outcome.out.splitlines()[-1] == "No changes.", outcome.out + outcome.err
        assert unreferenced(hosts, cluster, prefix, people) == set()
        # A leader killed while minting can leave accessors whose token was never written (403 on
        # lookup, even on the active node): a scan of every token must step over them.
        all_ok(run_all(hosts, "apply", "--prune"))
        assert unreferenced(hosts, cluster, prefix, people) == set()
        no_leaks(hosts, cluster, people)
    finally:
        cluster.restart(leader)


def test_every_mint_openbao_answered_survives_a_leader_kill(cluster: RaftCluster, prefix: str) -> None:
    """What the write-ahead intents rest on: a mint Vault answered with 200 is durable, so only an
    unanswered one can leave a token nobody knows about. Four clients mint through the standbys
    (an answered redirect followed, as hvac does) and straight to the leader, which is SIGKILLed
    mid-stream; each 200's token is then looked up on the new leader. (A pipelined prototype of
    ours once wrote tokens the new leader did not know: this shows that was the prototype's own
    doing, not OpenBao's.) The lookup is checked to bite on a token revoked on purpose."""
    import requests

    leader = cluster.wait_leader()
    targets = [node.address for node in cluster.nodes if node is not leader] + [leader.address] * 2
    answered: list[str] = []
    killed, lock = threading.Event(), threading.Lock()

    def mint(address: str) -> None:
        session = requests.Session()
        session.headers["X-Vault-Token"] = cluster.root_token
        after = 0
        deadline = time.monotonic() + 60
        while after < 15 and time.monotonic() < deadline:
            try:
                reply = session.post(f"{address}/v1/auth/token/create-orphan", timeout=5,
                                     json={"policies": [f"{prefix}probe"], "period": "768h",
                                           "meta": {"managed_by": "probe"}})
            except requests.RequestException:
                if killed.is_set() and address == leader.address:
                    return  # its node is gone
                time.sleep(0.05)
                continue
            if reply.status_code == 200:
                with lock:
                    answered.append(str(reply.json()["auth"]["client_token"]))
                after += killed.is_set()
            else:
                time.sleep(0.05)

    workers = [threading.Thread(target=mint, args=(address,)) for address in targets]
    for worker in workers:
        worker.start()
    try:
        while len(answered) < 120:
            assert all(worker.is_alive() for worker in workers)
            time.sleep(0.002)
        cluster.kill(leader)
        killed.set()
        for worker in workers:
            worker.join(timeout=90)
        client = root_client(cluster)
        revoked = answered[0]
        client.auth.token.revoke(revoked)

        def unknown(token: str) -> bool:
            try:
                client.auth.token.lookup(token)
            except (hvac.exceptions.VaultError, requests.RequestException):
                return True  # counted, never raised: a traceback would show the token argument
            return False

        lost = [index for index, token in enumerate(answered) if unknown(token)]
        count = len(answered)  # never the tokens themselves in a failure's message
        assert count >= 120 + 2 * 15 and lost == [0], (count, lost)
    finally:
        cluster.restart(leader)
        cleaner = root_client(cluster)  # the later tests' accessor scans need not step over these
        for token in answered[1:]:
            try:
                cleaner.auth.token.revoke(token)
            except (hvac.exceptions.VaultError, requests.RequestException):
                pass  # already gone; never raised with the token in a traceback


def test_plan_status_and_backups_ride_out_an_election(cluster: RaftCluster, prefix: str, tmp_path: Path) -> None:
    roster = tmp_path / "roster.yaml"
    write_roster(roster, prefix, {name: {} for name in PEOPLE})
    leader = cluster.wait_leader()
    standbys = [n for n in cluster.nodes if n is not leader]
    hosts = make_hosts(tmp_path, 4, PEOPLE, [n.address for n in standbys], cluster.root_token, roster,
                       shared_home=False)
    all_ok(run_all(hosts, "apply"))
    backup = Vault(standbys[0].address, Secret(cluster.root_token))
    mount, path = "secret", f"{prefix.rstrip('-')}/claude-users/alice"

    cluster.kill(leader)
    try:
        plans = [(host, host.start("plan")) for host in hosts[:2]]
        statuses = [(host, host.start("status")) for host in hosts[2:]]
        started = time.monotonic()
        written = back_up(backup, mount, path, {"accessToken": "a", "expiresAt": 1}, "2026-01-01T00:00:00Z")
        for host, process in plans:
            outcome = host.finish(process, started)
            assert outcome.code == 0 and outcome.out.splitlines()[-1] == "No changes.", outcome.out + outcome.err
        for host, process in statuses:
            outcome = host.finish(process, started)
            assert outcome.code == 0, outcome.out + outcome.err
            assert "unreachable" not in outcome.out + outcome.err
        assert written.written
        assert cluster.leader() is not None and cluster.leader() is not leader
    finally:
        cluster.restart(leader)
    no_leaks(hosts, cluster)


# --- backups from two hosts at once -------------------------------------------------------------


def test_two_hosts_backing_up_one_path_at_once_lose_no_key(cluster: RaftCluster, prefix: str) -> None:
    mount, path = "secret", f"{prefix.rstrip('-')}/claude-users/alice"
    leader = root_client(cluster)
    leader.secrets.kv.v2.create_or_update_secret(path=path, secret={"other_tool": "keep"}, mount_point=mount)
    standbys = [n for n in cluster.nodes if n is not cluster.wait_leader()]
    clients = [Vault(node.address, Secret(cluster.root_token)) for node in standbys]
    errors: list[BaseException] = []

    def host(index: int) -> None:
        try:
            for round_ in range(15):
                oauth = {"accessToken": f"h{index}-{round_}", "expiresAt": 1}
                back_up(clients[index], mount, path, oauth, f"2026-01-01T00:00:{round_:02d}Z", attempts=40)
                # Another tool adds its own key through the same node in between (read, merge, CAS).
                while True:
                    current = clients[index].kv_read(mount, path, consistent=True)
                    assert current is not None
                    data = {**current.data, f"h{index}-key{round_}": "x"}
                    try:
                        clients[index].kv_write_cas(mount, path, data, cas=current.version)
                        break
                    except Exception as exc:  # CasConflict: read again
                        if "check-and-set" not in str(exc):
                            raise
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=host, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    final = leader.secrets.kv.v2.read_secret_version(path=path, mount_point=mount,
                                                     raise_on_deleted_version=False)["data"]["data"]
    assert final["other_tool"] == "keep"
    assert {f"h{i}-key{r}" for i in range(2) for r in range(15)} <= set(final)


# --- reads on a standby ---------------------------------------------------------------------------


def test_a_token_minted_a_moment_ago_is_not_gone_on_a_standby(cluster: RaftCluster) -> None:
    """A standby lags the active node; a negative answer is asked again of the active node."""
    leader = cluster.wait_leader()
    standby = next(n for n in cluster.nodes if n is not leader)
    minting = hvac.Client(url=leader.address, token=cluster.root_token)
    reading = Vault(standby.address, Secret(cluster.root_token))
    for _ in range(10):
        auth = minting.auth.token.create_orphan(policies=["default"], ttl="10m")["auth"]
        assert reading.lookup_accessor(auth["accessor"]) is not None
        assert reading.lookup_token(Secret(auth["client_token"])) is not None
        minting.auth.token.revoke_accessor(auth["accessor"])


def test_behind_a_load_balancer_the_confirming_read_goes_to_the_active_node(cluster: RaftCluster) -> None:
    """VAULT_ADDR a round-robin balancer over a standby and the leader: `sys/leader` may come from the
    leader (is_self) while the next request lands on the standby, so the read must go to leader_address."""
    leader = cluster.wait_leader()
    standby = next(n for n in cluster.nodes if n is not leader)
    minting = hvac.Client(url=leader.address, token=cluster.root_token)
    with Relay([standby.address, leader.address]) as balancer:
        reading = Vault(balancer.address, Secret(cluster.root_token))
        for _ in range(12):
            auth = minting.auth.token.create_orphan(policies=["default"], ttl="10m")["auth"]
            assert reading.lookup_accessor(auth["accessor"]) is not None
            minting.auth.token.revoke_accessor(auth["accessor"])


def test_racing_revokes_of_one_accessor_all_succeed(cluster: RaftCluster) -> None:
    leader = cluster.wait_leader()
    minting = hvac.Client(url=leader.address, token=cluster.root_token)
    clients = [Vault(node.address, Secret(cluster.root_token)) for node in cluster.nodes]
    for _ in range(5):
        accessor = minting.auth.token.create_orphan(policies=["default"], ttl="10m")["auth"]["accessor"]
        errors: list[BaseException] = []

        def revoke(client: Vault) -> None:
            try:
                client.revoke_accessor(accessor)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=revoke, args=(c,)) for c in clients * 2]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []


# --- per-host rosters and garbage collection ------------------------------------------------------


def test_per_host_rosters(cluster: RaftCluster, prefix: str, tmp_path: Path) -> None:
    roster = tmp_path / "roster.yaml"
    write_roster(roster, prefix, {"alice": {"hosts": ["host0"]}, "bob": {"hosts": ["host*"]}, "carol": {}})
    hosts = make_hosts(tmp_path, 2, PEOPLE[:3], [cluster.nodes[0].address], cluster.root_token, roster,
                       shared_home=False)
    all_ok(run_all(hosts, "apply"))
    assert hosts[0].token_of("alice") and hosts[1].token_of("alice") is None
    assert hosts[1].token_of("bob") and hosts[1].token_of("carol")
    plan = hosts[1].run("plan")
    assert plan.code == 0, plan.out + plan.err
    assert "= user alice: not managed on host host1 (hosts: host0)" in plan.out.splitlines()
    client = root_client(cluster)
    policies = client.sys.list_acl_policies()["data"]["keys"]
    assert f"{prefix}alice" in policies  # policies are fleet-wide

    # bob is taken off host1: orphaned there, --prune revokes host1's token only.
    write_roster(roster, prefix, {"alice": {"hosts": ["host0"]}, "bob": {"hosts": ["host0"]}, "carol": {}})
    plan = hosts[1].run("plan")
    assert "! token devvm-claude-auth-bob: user bob is not assigned to host host1 (apply --prune revokes the " \
           "token)" in plan.out.splitlines(), plan.out
    bob_here = hosts[1].token_of("bob")
    assert hosts[1].run("apply", "--prune").code == 0
    assert _lookup(client, bob_here) is None
    assert _lookup(client, hosts[0].token_of("bob")) is not None
    assert f"{prefix}bob" in client.sys.list_acl_policies()["data"]["keys"]
    converged(hosts)
    no_leaks(hosts, cluster)


def test_prune_collects_this_hosts_unreferenced_tokens(cluster: RaftCluster, prefix: str, tmp_path: Path) -> None:
    roster = tmp_path / "roster.yaml"
    write_roster(roster, prefix, {"alice": {}})
    hosts = make_hosts(tmp_path, 2, ["alice"], [cluster.nodes[1].address], cluster.root_token, roster,
                       shared_home=False)
    all_ok(run_all(hosts, "apply"))
    client = root_client(cluster)

    def stray(host: str) -> str:
        return str(client.auth.token.create_orphan(
            policies=[f"{prefix}alice"], period="768h", no_default_policy=True,
            display_name="devvm-claude-auth-alice",
            meta={"managed_by": "claude-auth", "user": "alice", "host": host})["auth"]["accessor"])

    mine, theirs = stray("host0"), stray("host1")
    plan = hosts[0].run("plan", "--prune")
    assert (f"! token {mine[:8]}… (user alice, host host0): minted here, referenced by nothing; revoked by "
            "apply --prune") in plan.out.splitlines(), plan.out
    assert plan.out.count("referenced by nothing") == 1 and mine not in plan.out  # a prefix, never all of it
    assert plan.out.splitlines()[-1] == "Plan: 0 to add, 0 to change, 1 to remove."
    as_json = json.loads(hosts[0].run("plan", "--prune", "--json").out)
    assert [c["action"] for c in as_json if c["name"].startswith(mine[:8])] == ["collect"]
    assert hosts[0].run("plan").out.count("referenced by nothing") == 0  # only --prune pays the lookups
    applied = hosts[0].run("apply", "--prune")
    assert applied.code == 0
    assert f"! token {mine[:8]}… (user alice, host host0): revoked" in applied.out.splitlines(), applied.out
    live = tool_tokens(client, prefix)
    assert mine not in live and theirs in live  # host1's stray is host1's to collect
    assert hosts[1].run("apply", "--prune").code == 0
    assert theirs not in tool_tokens(client, prefix)
    assert len(tool_tokens(client, prefix)) == 2  # each host's token in use stays
    converged(hosts)


def _lookup(client: hvac.Client, token: str | None) -> Any:
    if token is None:
        return None
    try:
        return client.auth.token.lookup(token)["data"]
    except hvac.exceptions.Forbidden:
        return None


# --- a mint the election made twice -------------------------------------------------------------


class _Log:
    def __init__(self) -> None:
        self.nonce = f"n-{secrets.token_hex(6)}"
        self.settled: list[tuple[str, str | None, str | None]] = []

    def intend(self, user: str) -> str:
        return self.nonce

    def settle(self, nonce: str, user: str | None = None, accessor: str | None = None,
               replaced: Iterable[str] = ()) -> None:
        self.settled.append((nonce, user, accessor))


def test_a_mint_a_standby_forwarded_and_answered_307_leaves_no_twin(openbao: Any) -> None:
    """A standby forwards the mint, the leader commits it and dies before answering; the standby
    answers 307 (FACTS.md), the retry policy sends the mint again. The first copy must not live on."""
    mints: list[int] = []

    def standby(method: str, path: str, answer: tuple[int, bytes]) -> tuple[int, dict[str, str], bytes] | None:
        if not path.startswith("/v1/auth/token/create-orphan"):
            return None
        mints.append(answer[0])
        if len(mints) == 1:  # committed, answer lost: point at the dead leader
            return 307, {"Location": "http://127.0.0.1:9" + path}, b""
        return None

    with Relay([openbao.address], standby) as relay:
        from reconcile.common.model import Action, Change, Kind
        from reconcile.roster.values import Roster, User, VaultSettings
        from reconcile.vault.apply import VaultContext, apply_token
        from reconcile.vault.desired import desired_vault
        from reconcile.vault.plan import MintOrder

        prefix = f"tw{secrets.token_hex(3)}-"
        want = desired_vault(Roster(users={"alice": User("alice")}, vault=VaultSettings(policy_prefix=prefix)),
                             "h1").tokens["alice"]
        written: dict[str, bytes] = {}
        log = _Log()
        ctx = VaultContext(vault=Vault(relay.address, Secret(openbao.root_token)),
                           admin=True, write_token=lambda user, data, durable: written.__setitem__(user, data),
                           mint_log=log)
        change = Change(Action.CREATE, Kind.TOKEN, want.display_name, "no token yet; mint", user="alice",
                        needs_admin=True, desired=MintOrder(token=want, revoke=()))
        apply_token(change, ctx)
        assert mints == [200, 200]  # the mint really was made twice
        client = hvac.Client(url=openbao.address, token=openbao.root_token)
        twins = [a for a, data in tool_tokens(client, prefix).items() if data["meta"].get("mint_nonce") == log.nonce]
        assert twins == [ctx.outcomes.minted["alice"]]
        assert client.auth.token.lookup(written["alice"].decode())["data"]["accessor"] == twins[0]
        for accessor in twins:
            client.auth.token.revoke_accessor(accessor)
        assert_no_secrets([str(log.settled)], [written["alice"].decode()])
