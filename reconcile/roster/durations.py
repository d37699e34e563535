"""Durations as the roster writes them (`768h`, `6h`, `10m`, `1h30m`, `45s`, `3600`).

Owns turning that text into whole seconds and seconds back into short text
for people. The accepted form is deliberately the small subset that Vault's
token period and our systemd timers both read the same way: whole numbers
with the units `h`, `m` and `s`, each at most once and in that order, or a
bare number of seconds. Days are written in hours (`768h`), as Vault does.
"""

from __future__ import annotations

import re

_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# Each unit at most once, largest first: "1h30m" reads one way only; "30m1h"
# and "1h1h" are typos more often than intent.
_DURATION = re.compile(r"(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?")
_SECONDS = re.compile(r"\d+")
_FORM_HINT = "write whole numbers with h, m or s, e.g. 768h, 6h, 10m, 1h30m, 45s (a bare number means seconds)"


def parse_duration(text: str, *, allow_zero: bool = False) -> int:
    """Return the whole seconds `text` stands for.

    Raises ValueError naming the text and the accepted form when it is not a
    duration, and when it is negative, or zero unless `allow_zero`.
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"empty duration; {_FORM_HINT}")
    if stripped.startswith("-"):
        raise ValueError(f"{text!r} is negative; a duration must be positive")
    seconds = _to_seconds(stripped)
    if seconds is None:
        raise ValueError(f"{text!r} is not a duration: {_FORM_HINT}")
    if seconds == 0 and not allow_zero:
        raise ValueError(f"{text!r} is zero; a duration must be positive")
    return seconds


def _to_seconds(text: str) -> int | None:
    if _SECONDS.fullmatch(text):
        return int(text)
    match = _DURATION.fullmatch(text)
    if match is None or not any(match.groupdict().values()):
        return None
    return sum(int(count) * _UNIT_SECONDS[unit] for unit, count in match.groupdict().items() if count)


def format_duration(seconds: int) -> str:
    """Short text for people: 2764800 -> '32d', 5400 -> '1h30m', 0 -> '0s'.

    Uses days too, so the output is for reading, not for writing back into a
    roster.
    """
    if seconds < 0:
        raise ValueError(f"negative duration: {seconds}")
    if seconds == 0:
        return "0s"
    parts = []
    remaining = seconds
    for unit, size in _UNIT_SECONDS.items():
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
