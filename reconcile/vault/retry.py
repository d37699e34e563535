"""The one retry policy: what a failure means, how long to wait, when to stop.

Every Vault request goes through `call_with_retries` (reconcile.vault.connection's
`Connection._call`), so plan, apply, status and sync ride out the same faults the
same way; nothing else grows its own loop. This module knows nothing about
Vault or HTTP: the caller hands it a `classify` function that sorts an
exception into one of three `Transience` values, and a `Deadline` for the
whole run.

- PERMANENT: retrying cannot help (a 4xx, an answer that cannot be read).
  Raised at once.
- NOT_DONE: the server certainly did not act on the request (connection
  refused, a 307 to a leader that is gone, 429, 503 from a sealed or standby
  node). Safe to send again, writes included.
- MAYBE_DONE: the request may have been carried out (a timeout or a reset
  after it was sent). Sent again only when the caller says the request is
  idempotent; a mint is not (see docs/design.md, "Failure model").

Transient failures are retried with equal-jitter exponential backoff for up to
`retry_window` seconds after that request was first sent (a leader
election takes 2.5-5 s: FACTS.md), at most `max_attempts` times, and never
past the run's deadline. When they run out, `GaveUp` carries the last error:
the caller then knows the server is unavailable, not merely that one request
was refused.
"""

from __future__ import annotations

import os
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Iterator, Mapping, TypeVar

from reconcile.common.pause import pause

T = TypeVar("T")

TIMEOUT_ENV = "CLAUDE_AUTH_VAULT_TIMEOUT"
"""Seconds one request may take (connect and each read); default REQUEST_TIMEOUT."""
DEADLINE_ENV = "CLAUDE_AUTH_VAULT_DEADLINE"
"""Seconds all Vault requests of one run (and the waits between their retries) may take together;
default DEADLINE."""
SCAN_BUDGET_ENV = "CLAUDE_AUTH_TOKEN_SCAN_BUDGET"
"""Seconds an admin run's scan of every token (resolving interrupted mints) may take; default SCAN_BUDGET."""
REQUEST_TIMEOUT = 5.0
RETRY_WINDOW = 10.0
DEADLINE = 60.0
SCAN_BUDGET = 20.0
"""A third of DEADLINE: a scan cut short here (plus one last request's retry window) still leaves
the run time for everyone's changes."""


def scan_budget(environ: Mapping[str, str] | None = None) -> float:
    """SCAN_BUDGET, or the environment's value when it is a positive number (like the deadline)."""
    env = os.environ if environ is None else environ
    return _seconds(env.get(SCAN_BUDGET_ENV), SCAN_BUDGET)


class Transience(Enum):
    PERMANENT = "permanent"
    NOT_DONE = "not-done"
    MAYBE_DONE = "maybe-done"


@dataclass(frozen=True)
class RetryPolicy:
    request_timeout: float = REQUEST_TIMEOUT
    """Per request: a hung server (TCP open, no answer) costs this much per attempt."""
    retry_window: float = RETRY_WINDOW
    """Per request: keep retrying transient failures this long after it was first sent."""
    max_attempts: int = 30
    """A backstop against a server that fails instantly: with the backoff capped at 1 s, 12 tries
    spent only about 7 s of the window, and an election on a loaded host outlasted them (seen in
    tests/test_fleet.py); 30 leaves `retry_window` the bound that matters."""
    base_delay: float = 0.1
    max_delay: float = 1.0
    deadline: float = DEADLINE
    """For the whole run, counting only time spent on Vault (Deadline): no request starts, and none
    waits, past it."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "RetryPolicy":
        """The defaults, with the timeout and the deadline taken from the environment when set there.

        An unusable value (not a positive number) is ignored rather than fatal:
        the defaults are safe, and a typo must not stop the hourly run.
        """
        env = os.environ if environ is None else environ
        return cls(request_timeout=_seconds(env.get(TIMEOUT_ENV), REQUEST_TIMEOUT),
                   deadline=_seconds(env.get(DEADLINE_ENV), DEADLINE))

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The wait after failed attempt number `attempt` (1 for the first): equal jitter, so
        many clients retrying at once spread out but none retries at once."""
        ceiling: float = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return ceiling / 2 + rand() * ceiling / 2


def _seconds(text: str | None, default: float) -> float:
    try:
        value = float(text) if text else default
    except ValueError:
        return default
    return value if 0 < value < float("inf") else default


class Deadline:
    """The Vault time left to a whole run, shared by every client of that run.

    Only time spent in requests and in waits between their retries counts
    (`running`): a sync run's minutes-long Claude check between two Vault
    requests must not use up the budget that bounds a Vault that stops
    answering.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._spent = 0.0
        self._since: float | None = None
        self._running = 0
        """Requests in flight (a pool overlaps them): the clock runs while there is at least one."""
        self._lock = threading.Lock()

    def remaining(self) -> float:
        running = self._clock() - self._since if self._since is not None else 0.0
        return max(0.0, self.seconds - self._spent - running)

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0

    @contextmanager
    def running(self) -> Iterator[None]:
        """Count the time spent inside: once, if nested or overlapped by other threads' requests
        (wall time while any request runs, so a pool of connections cannot stretch the deadline)."""
        with self._lock:
            if self._running == 0:
                self._since = self._clock()
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0 and self._since is not None:
                    self._spent += self._clock() - self._since
                    self._since = None


class GaveUp(Exception):
    """Transient failures outlasted the retry window, the attempts or the deadline."""

    def __init__(self, last: BaseException | None, attempts: int, why: str) -> None:
        super().__init__(why)
        self.last = last
        """The last failure, or None when the deadline passed before any attempt."""
        self.attempts = attempts
        self.why = why


def call_with_retries(attempt: Callable[[float], T], classify: Callable[[BaseException], Transience], *,
                      policy: RetryPolicy, deadline: Deadline, idempotent: bool = True,
                      sleep: Callable[[float], None] = pause,
                      clock: Callable[[], float] = time.monotonic,
                      rand: Callable[[], float] = random.random) -> T:
    """`attempt(timeout)` until it returns, under the policy.

    Each attempt gets a timeout no longer than the deadline leaves. A PERMANENT
    failure, and a MAYBE_DONE one of a request that is not `idempotent`, is
    raised as is. Raises GaveUp when transient failures run out of time or
    attempts.
    """
    with deadline.running():
        return _retry(attempt, classify, policy, deadline, idempotent, sleep, clock, rand)


def _retry(attempt: Callable[[float], T], classify: Callable[[BaseException], Transience], policy: RetryPolicy,
           deadline: Deadline, idempotent: bool, sleep: Callable[[float], None], clock: Callable[[], float],
           rand: Callable[[], float]) -> T:
    started = clock()
    tries = 0
    last: BaseException | None = None
    while True:
        left = deadline.remaining()
        if left <= 0:
            raise GaveUp(last, tries, f"the run's deadline of {deadline.seconds:g} s for Vault passed")
        tries += 1
        try:
            return attempt(min(policy.request_timeout, left))
        except Exception as exc:
            verdict = classify(exc)
            if verdict is Transience.PERMANENT or (verdict is Transience.MAYBE_DONE and not idempotent):
                raise
            last = exc
        now = clock()
        if tries >= policy.max_attempts:
            raise GaveUp(last, tries, f"{tries} attempts failed")
        wait = policy.delay(tries, rand)
        if now + wait - started > policy.retry_window:
            raise GaveUp(last, tries, f"still failing after {tries} attempts in {now - started:.1f} s")
        if wait >= deadline.remaining():
            raise GaveUp(last, tries, f"the run's deadline of {deadline.seconds:g} s for Vault passed")
        sleep(wait)

