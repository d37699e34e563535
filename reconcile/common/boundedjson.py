"""JSON that someone else wrote, read without recursion and with a depth cap.

The stdlib decoder (and so hvac and requests, which use it) recurses once per
nesting level: a value nested a few thousand levels deep raises
RecursionError, which is not a ValueError and escapes every caller's
`except ValueError`. The encoder recurses the same way, so such a value
cannot even be written back once decoded.

Two tools here, both iterative (a loop and a list, never the call stack):

- `object_members`: the members of one JSON object as byte spans of the
  input, without decoding the values. A caller can decode the few values it
  needs and carry every other value over byte for byte.
- `loads`: the stdlib decoder, but only after a scan has shown that the text
  nests no deeper than `max_depth` (JsonProblem otherwise).

Only structure is checked when skipping a value (strings, brackets and
scalars); a value's bytes are handed on as they came. Messages never quote
the input.
"""

from __future__ import annotations

import json
import re
from typing import Any

DEFAULT_MAX_DEPTH = 100
"""Deep enough for any login or Vault response seen; far below the stdlib's recursion limit."""

_WS = re.compile(rb"[ \t\n\r]*")
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SCALAR = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null")
# Inside a container only strings (whose brackets do not count) and brackets matter; a lone `"`
# is a string that never ends.
_STRUCTURE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}"]', re.DOTALL)
_CLOSING = {ord("{"): ord("}"), ord("["): ord("]")}


class JsonProblem(ValueError):
    """The text is not JSON of the expected shape; the message says why without quoting it."""


def _skip_ws(buf: bytes, pos: int) -> int:
    match = _WS.match(buf, pos)
    return match.end() if match else pos


def value_end(buf: bytes, pos: int, max_depth: int | None = None) -> int:
    """Where the JSON value starting at `pos` ends; JsonProblem when it is malformed or too deep."""
    if pos >= len(buf):
        raise JsonProblem("unexpected end of the text")
    first = buf[pos]
    if first == ord('"'):
        match = _STRING.match(buf, pos)
        if not match:
            raise JsonProblem("a string that never ends")
        return match.end()
    if first not in _CLOSING:
        match = _SCALAR.match(buf, pos)
        if not match:
            raise JsonProblem(f"unexpected text at byte {pos}")
        return match.end()
    expected = [_CLOSING[first]]
    for match in _STRUCTURE.finditer(buf, pos + 1):
        token = match.group()
        if len(token) > 1:
            continue  # a whole string
        char = token[0]
        if char == ord('"'):
            raise JsonProblem("a string that never ends")
        if char in _CLOSING:
            expected.append(_CLOSING[char])
            if max_depth is not None and len(expected) > max_depth:
                raise JsonProblem(f"nested deeper than {max_depth} levels")
        elif char == expected[-1]:
            expected.pop()
            if not expected:
                return match.end()
        else:
            raise JsonProblem(f"mismatched bracket at byte {match.start()}")
    raise JsonProblem("unexpected end of the text")


def object_members(buf: bytes, pos: int = 0) -> dict[str, tuple[int, int]]:
    """The members of the JSON object at `pos` (leading blanks allowed): key -> (start, end) of its value."""
    pos = _skip_ws(buf, pos)
    if buf[pos:pos + 1] != b"{":
        raise JsonProblem("not a JSON object")
    members: dict[str, tuple[int, int]] = {}
    pos = _skip_ws(buf, pos + 1)
    if buf[pos:pos + 1] == b"}":
        return members
    while True:
        if buf[pos:pos + 1] != b'"':
            raise JsonProblem(f"expected a member name at byte {pos}")
        key_end = value_end(buf, pos)
        key = json.loads(buf[pos:key_end])
        pos = _skip_ws(buf, key_end)
        if buf[pos:pos + 1] != b":":
            raise JsonProblem(f"expected ':' at byte {pos}")
        start = _skip_ws(buf, pos + 1)
        end = value_end(buf, start)
        members[key] = (start, end)
        pos = _skip_ws(buf, end)
        separator = buf[pos:pos + 1]
        if separator == b"}":
            return members
        if separator != b",":
            raise JsonProblem(f"expected ',' or '}}' at byte {pos}")
        pos = _skip_ws(buf, pos + 1)


def depth_problem(raw: bytes, max_depth: int) -> str | None:
    """Why `raw` cannot be decoded safely (too deep, malformed), or None."""
    try:
        start = _skip_ws(raw, 0)
        end = value_end(raw, start, max_depth)
    except JsonProblem as exc:
        return str(exc)
    if _skip_ws(raw, end) != len(raw):
        return "text after the JSON value"
    return None


def loads(raw: bytes | str, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """json.loads, but JsonProblem (never RecursionError) for text nested deeper than `max_depth`."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    problem = depth_problem(data, max_depth)
    if problem is not None:
        raise JsonProblem(problem)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError cannot happen below max_depth; kept as a guard
        raise JsonProblem(f"not valid JSON ({type(exc).__name__})") from None


EPOCH_MS_MAX = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z in ms: the last instant a datetime can show; later is not a time."""

_DIGITS_MAX = 20
"""Digits of a number given as text: more than any value in range, so the text is never converted."""


class OutOfRange(JsonProblem):
    """A decoded value is not an integer in the range its field allows; the message never quotes it."""


def bounded_int(value: object, *, low: int, high: int, what: str, text_ok: bool = False) -> int:
    """`value` (decoded from data someone else wrote) as an int in [low, high], else OutOfRange.

    The one place a number from a person's file or Vault data becomes an int: a JSON integer,
    an integral finite float, or (`text_ok`) a string of at most 20 digits. The range is checked
    before any conversion, so a 400-digit integer or an infinite float is one clean error, never
    an OverflowError from a later float() or datetime.
    """
    if isinstance(value, str) and text_ok and value.isascii() and value.isdigit():
        if len(value) > _DIGITS_MAX:  # never converted: int() of a long text is slow or refused
            raise OutOfRange(f"{what} is out of range ({low}..{high})")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OutOfRange(f"{what} is missing or not a number")
    if not low <= value <= high:  # False for NaN; no conversion of a huge int either
        raise OutOfRange(f"{what} is out of range ({low}..{high})")
    if isinstance(value, float) and not value.is_integer():
        raise OutOfRange(f"{what} is not a whole number")
    return int(value)
