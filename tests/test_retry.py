"""The retry policy (reconcile.vault.retry) as pure logic: a fake clock, a recorded sleep, fixed jitter.

The same policy against a real OpenBao behind a faulty proxy is in tests/test_vault_faults.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hvac.exceptions import InternalServerError

from reconcile.vault.retry import (DEADLINE, REQUEST_TIMEOUT, Deadline, GaveUp, RetryPolicy, Transience,
                                   call_with_retries)
from reconcile.vault.transport import classify as vault_classify

REPO = Path(__file__).resolve().parent.parent


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Refused(Exception):
    pass


class Lost(Exception):
    pass


class Denied(Exception):
    pass


def classify(exc: BaseException) -> Transience:
    return {Refused: Transience.NOT_DONE, Lost: Transience.MAYBE_DONE}.get(type(exc), Transience.PERMANENT)


def failing(clock: FakeClock, failures: list[Exception], *, cost: float = 0.0) -> tuple[list[float], object]:
    """An attempt that raises each of `failures` in turn, then answers "ok"; each attempt costs `cost` s."""
    timeouts: list[float] = []

    def attempt(timeout: float) -> str:
        timeouts.append(timeout)
        clock.now += cost
        if failures:
            raise failures.pop(0)
        return "ok"
    return timeouts, attempt


def run(clock: FakeClock, attempt: object, policy: RetryPolicy | None = None, *, idempotent: bool = True,
        deadline: Deadline | None = None) -> object:
    policy = policy or RetryPolicy()
    return call_with_retries(attempt, classify, policy=policy,  # type: ignore[arg-type]
                             deadline=deadline or Deadline(policy.deadline, clock=clock),
                             idempotent=idempotent, sleep=clock.sleep, clock=clock, rand=lambda: 1.0)


def test_a_short_outage_is_ridden_out_with_growing_waits() -> None:
    clock = FakeClock()
    timeouts, attempt = failing(clock, [Refused() for _ in range(5)])
    assert run(clock, attempt) == "ok"
    assert len(timeouts) == 6
    assert clock.sleeps == [0.1, 0.2, 0.4, 0.8, 1.0]  # doubling, capped at max_delay


def test_jitter_stays_between_half_and_all_of_the_ceiling() -> None:
    policy = RetryPolicy()
    assert policy.delay(3, rand=lambda: 0.0) == pytest.approx(0.2)
    assert policy.delay(3, rand=lambda: 1.0) == pytest.approx(0.4)
    assert policy.delay(50, rand=lambda: 0.5) == pytest.approx(0.75)


def test_a_permanent_failure_is_raised_at_once() -> None:
    clock = FakeClock()
    timeouts, attempt = failing(clock, [Denied()])
    with pytest.raises(Denied):
        run(clock, attempt)
    assert len(timeouts) == 1 and clock.sleeps == []


def test_a_lost_answer_is_not_sent_again_unless_idempotent() -> None:
    clock = FakeClock()
    timeouts, attempt = failing(clock, [Lost()])
    with pytest.raises(Lost):
        run(clock, attempt, idempotent=False)
    assert len(timeouts) == 1
    timeouts, attempt = failing(clock, [Lost()])
    assert run(clock, attempt, idempotent=True) == "ok"
    assert len(timeouts) == 2


def test_a_refused_write_is_sent_again_even_when_not_idempotent() -> None:
    clock = FakeClock()
    timeouts, attempt = failing(clock, [Refused(), Refused()])
    assert run(clock, attempt, idempotent=False) == "ok"
    assert len(timeouts) == 3


def test_a_lasting_outage_gives_up_after_the_window() -> None:
    clock = FakeClock()
    start = clock.now
    timeouts, attempt = failing(clock, [Refused() for _ in range(100)])
    with pytest.raises(GaveUp) as caught:
        run(clock, attempt)
    assert isinstance(caught.value.last, Refused)
    assert clock.now - start <= RetryPolicy().retry_window
    assert caught.value.attempts == len(timeouts) > 5


def test_a_hung_server_costs_about_two_timeouts_per_request() -> None:
    clock = FakeClock()
    start = clock.now
    timeouts, attempt = failing(clock, [Lost() for _ in range(100)], cost=REQUEST_TIMEOUT)
    with pytest.raises(GaveUp):
        run(clock, attempt)
    assert len(timeouts) == 2
    assert clock.now - start < 2 * REQUEST_TIMEOUT + 1


def test_the_deadline_caps_each_timeout_and_stops_the_retries() -> None:
    clock = FakeClock()
    deadline = Deadline(3.0, clock=clock)
    timeouts, attempt = failing(clock, [Lost(), Lost()], cost=2.0)
    with pytest.raises(GaveUp) as caught:
        run(clock, attempt, deadline=deadline)
    assert timeouts[0] == 3.0  # not the 5 s of the policy: only 3 s are left
    assert "deadline" in caught.value.why
    timeouts, attempt = failing(clock, [])
    with pytest.raises(GaveUp):  # nothing is sent once the deadline passed
        run(clock, attempt, deadline=deadline)
    assert timeouts == []


def test_max_attempts_bounds_a_fast_failing_server() -> None:
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=3, retry_window=1000)
    timeouts, attempt = failing(clock, [Refused() for _ in range(10)])
    with pytest.raises(GaveUp):
        run(clock, attempt, policy)
    assert len(timeouts) == 3


def test_timeout_and_deadline_come_from_the_environment() -> None:
    policy = RetryPolicy.from_env({"CLAUDE_AUTH_VAULT_TIMEOUT": "1.5", "CLAUDE_AUTH_VAULT_DEADLINE": "20"})
    assert (policy.request_timeout, policy.deadline) == (1.5, 20.0)
    for bad in ("", "0", "-3", "nan", "inf", "soon"):
        policy = RetryPolicy.from_env({"CLAUDE_AUTH_VAULT_TIMEOUT": bad, "CLAUDE_AUTH_VAULT_DEADLINE": bad})
        assert (policy.request_timeout, policy.deadline) == (REQUEST_TIMEOUT, DEADLINE)


def test_only_time_spent_on_vault_counts_against_the_deadline() -> None:
    """A sync run's long Claude check between two requests must not use up the Vault budget."""
    clock = FakeClock()
    deadline = Deadline(10.0, clock=clock)
    timeouts, attempt = failing(clock, [], cost=4.0)
    run(clock, attempt, deadline=deadline)
    clock.now += 600  # ten minutes of other work
    assert deadline.remaining() == pytest.approx(6.0)
    timeouts, attempt = failing(clock, [])
    run(clock, attempt, deadline=deadline)
    assert timeouts == [5.0]


def test_a_500_is_an_election_by_vaults_error_text_never_by_the_url() -> None:
    """The URL names people and paths: a person named `leader` must not make a real 500 on their path
    (or a mint's) look transient, retried until the run counts Vault as gone."""
    def error(text: str, url: str) -> InternalServerError:
        return InternalServerError(text, errors=[text], method="get", url=url)

    election = error("local node not active but active cluster node not found", "http://v/v1/sys/health")
    assert vault_classify(election) is Transience.NOT_DONE
    assert vault_classify(error("internal error", "http://v/v1/secret/data/claude-users/leader")) \
        is Transience.PERMANENT
    assert vault_classify(error("internal error", "http://v/v1/sys/policies/acl/claude-sealed")) \
        is Transience.PERMANENT


SHIFTED_RETRY = """
from reconcile.vault.retry import Deadline, RetryPolicy, Transience, call_with_retries
failures = [ConnectionRefusedError(), ConnectionRefusedError()]
def attempt(timeout):
    if failures:
        raise failures.pop(0)
    return "answered"
print(call_with_retries(attempt, lambda exc: Transience.NOT_DONE, policy=RetryPolicy(),
                        deadline=Deadline(60.0)))
"""


@pytest.mark.parametrize("shift", ["+3h", "-2h"])
def test_the_waits_between_retries_survive_a_shifted_clock(shift: str) -> None:
    """Under libfaketime (how the soak jumps a host's clock) CPython's time.sleep fails with
    OSError EINVAL; the soak saw an hourly run die of it mid-retry (issue 27). The real default
    sleep, in a real shifted process: no fake clock here."""
    library = os.environ.get("CLAUDE_AUTH_FAKETIME_LIB") or str(REPO / ".tools/libfaketime.so.1")
    assert Path(library).exists(), f"libfaketime is missing at {library}: run `make setup`"
    env = dict(os.environ, LD_PRELOAD=library, FAKETIME=shift, FAKETIME_DONT_FAKE_MONOTONIC="1",
               FAKETIME_NO_CACHE="1", PYTHONPATH=str(REPO))
    shifted_sleep = subprocess.run([sys.executable, "-c", "import time; time.sleep(0.01)"], env=env,
                                   capture_output=True, text=True, timeout=60)
    done = subprocess.run([sys.executable, "-c", SHIFTED_RETRY], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "answered", (shifted_sleep.stderr[-300:], done.stderr)
