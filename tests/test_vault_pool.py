"""The per-person token lookups overlap on a small bounded pool (reconcile.vault.pool).

Against a real OpenBao behind the loopback proxy (tests/support/faultproxy.py),
which holds each of the first lookups until the pool's size of them are in
flight at once: lookups sent one after another would break that barrier, so
the proof needs no timing. The output is the same whatever the pool size.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator

import pytest

from reconcile.common.exitcodes import Exit
from reconcile.vault.retry import Deadline
from reconcile.vault.pool import CONNECTIONS, CONNECTIONS_ENV, connections
from tests.support.faultproxy import FaultProxy
from tests.support.openbao import OpenBaoServer
from tests.support.world import World

ADMIN_LOOKUP = b"POST /v1/auth/token/lookup HTTP"
SELF_LOOKUP = b"GET /v1/auth/token/lookup-self HTTP"
PEOPLE = {f"u{index:02d}": {} for index in range(10)}


@dataclass
class InFlight:
    """Counts the matching requests the proxy holds at once; the first `gate` wait for each other."""

    match: bytes
    gate: int
    most: int = 0
    broken: bool = False
    _now: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _barrier: threading.Barrier | None = None

    def __post_init__(self) -> None:
        self._barrier = threading.Barrier(self.gate, timeout=10) if self.gate > 1 else None

    def on_request(self, head: bytes, number: int) -> None:
        if self.match not in head:
            return
        with self._lock:
            self._now += 1
            self.most = max(self.most, self._now)
        if self._barrier is not None and number <= self.gate:
            try:
                self._barrier.wait()  # sequential lookups never get `gate` of them here at once
            except threading.BrokenBarrierError:
                self.broken = True

    def after_reply(self, head: bytes, number: int) -> None:
        if self.match in head:
            with self._lock:
                self._now -= 1


@pytest.fixture
def proxy(openbao: OpenBaoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    with FaultProxy(upstream_port=openbao.port) as fault:
        monkeypatch.setenv("VAULT_ADDR", fault.address)
        yield fault


def watch(proxy: FaultProxy, match: bytes, gate: int) -> InFlight:
    flight = InFlight(match, gate)
    proxy.count = (match,)
    proxy.on_request = flight.on_request
    proxy.after_reply = flight.after_reply
    return flight


def no_op_plan(world: World, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, *, size: int,
               match: bytes = ADMIN_LOOKUP) -> tuple[str, InFlight]:
    monkeypatch.setenv(CONNECTIONS_ENV, str(size))
    flight = watch(proxy, match, size)
    result = world.run("plan")
    assert result.code == Exit.OK, result.err
    assert not flight.broken, f"fewer than {size} lookups were ever in flight at once"
    return result.out, flight


def test_the_lookups_of_a_no_op_plan_overlap_up_to_the_pool_size(world: World, proxy: FaultProxy,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    world.write_roster(PEOPLE)
    assert world.run("apply").code == Exit.OK
    pooled, flight = no_op_plan(world, proxy, monkeypatch, size=4)
    assert flight.most == 4  # overlapped, and never more than the pool's size
    assert proxy.seen[ADMIN_LOOKUP] == len(PEOPLE) + 1  # one lookup per person, none repeated; the host token's
    sequential, flight = no_op_plan(world, proxy, monkeypatch, size=1)
    assert flight.most == 1  # a pool of one is the sequential loop
    assert pooled == sequential  # same lines, same order


def test_the_hourly_runs_lookup_self_requests_overlap_too(world: World, proxy: FaultProxy,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    world.write_roster(PEOPLE)
    assert world.run("apply").code == Exit.OK
    monkeypatch.setenv("CLAUDE_AUTH_NO_ADMIN", "1")
    pooled, flight = no_op_plan(world, proxy, monkeypatch, size=3, match=SELF_LOOKUP)
    assert flight.most == 3
    sequential, flight = no_op_plan(world, proxy, monkeypatch, size=1, match=SELF_LOOKUP)
    assert flight.most == 1
    assert pooled == sequential


def test_a_failed_lookup_stays_its_persons_row_in_a_pool(world: World, proxy: FaultProxy,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The hourly run: OpenBao answers 500 to the lookup-self of these two garbage tokens (as in
    tests/test_isolation.py); only their owners fail, the same lines as with a pool of one."""
    world.write_roster(PEOPLE)
    assert world.run("apply").code == Exit.OK
    world.put_token("u03", "b.!!!!")
    world.put_token("u07", "hvb.AAAAAQ%%%%")
    monkeypatch.setenv("CLAUDE_AUTH_NO_ADMIN", "1")
    runs = []
    for size in ("4", "1"):
        monkeypatch.setenv(CONNECTIONS_ENV, size)
        runs.append(world.run("plan"))
    pooled, sequential = runs
    assert pooled.code == Exit.ERROR
    errors = [line.split(":")[0] for line in pooled.err.splitlines() if line.startswith("ERROR")]
    assert errors == ["ERROR u03", "ERROR u07"], pooled.err
    assert (pooled.code, pooled.out, pooled.err) == (sequential.code, sequential.out, sequential.err)


def test_the_pool_size_setting() -> None:
    assert connections({}) == CONNECTIONS == 4
    assert connections({CONNECTIONS_ENV: "1"}) == 1
    assert connections({CONNECTIONS_ENV: " 8 "}) == 8
    for bad in ("0", "-2", "many", "1.5", "65"):
        assert connections({CONNECTIONS_ENV: bad}) == CONNECTIONS


def test_overlapping_requests_spend_the_deadline_once() -> None:
    """Two requests in flight at once over the same second use one second of the run's deadline."""
    now = [0.0]
    deadline = Deadline(10.0, clock=lambda: now[0])
    first, second = deadline.running(), deadline.running()
    first.__enter__()
    now[0] = 0.5
    second.__enter__()
    now[0] = 1.0
    first.__exit__(None, None, None)
    assert deadline.remaining() == 9.0  # the second still runs: the clock goes on
    now[0] = 1.5
    second.__exit__(None, None, None)
    assert deadline.remaining() == 8.5
    now[0] = 5.0
    assert deadline.remaining() == 8.5  # nothing in flight: no time spent
