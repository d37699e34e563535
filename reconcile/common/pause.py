"""Waiting a little, in a way a shifted or jumping clock cannot break.

CPython 3.11's `time.sleep` is `clock_nanosleep(CLOCK_MONOTONIC,
TIMER_ABSTIME, ...)`; a time shim in the process (libfaketime, as the soak
uses to jump a host's clock, and as some sites use to test expiry) turns that
absolute wait into EINVAL, and the run died of an `OSError` in the middle of a
retry (seen in the soak, issue 27). A wait on a private `threading.Event` is a
relative, monotonic timed wait that such shims leave alone, and it is clamped
so a negative or overlong figure computed from a clock that jumped can neither
raise nor hang.
"""

from __future__ import annotations

import threading

LONGEST = 60.0
"""No caller waits longer in one go (the longest pause asked for is a retry's 1 s, a lock's poll)."""


def pause(seconds: float) -> None:
    """Wait `seconds`, clamped to [0, LONGEST]; never raises for the clock's sake."""
    wait = min(max(seconds, 0.0), LONGEST)
    if wait > 0:
        threading.Event().wait(wait)
