"""What is wrong with a roster, located: RosterIssue, RosterInvalid, and the parsed Document.

A problem names its file, line and dotted path (`format_path`); messages quote at most
EXCERPT_CHARS of a value (`excerpt`) and one file reports at most MAX_ISSUES problems.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass


PathPart = str | int
DocPath = tuple[PathPart, ...]


EXCERPT_CHARS = 40
"""How much of a value an error line quotes."""
MAX_ISSUES = 100
"""Problems reported for one file; the rest are counted in one last line."""
_MAX_MESSAGE = 400
_MAX_PATH = 200


def excerpt(value: object) -> str:
    """`repr(value)`, cut to a short excerpt so an error line never repeats a huge value.

    `excerpt("x" * 50)` is `'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'… (50 characters)`.
    """
    if isinstance(value, str) and len(value) > EXCERPT_CHARS:
        return f"{value[:EXCERPT_CHARS]!r}… ({len(value):,} characters)"
    return clip(repr(value), EXCERPT_CHARS * 4)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass(frozen=True)
class RosterIssue:
    """One problem, located by file, line (None: the file as a whole) and dotted path."""

    file: str
    line: int | None
    path: str
    message: str

    def __post_init__(self) -> None:
        # The last guard against a message quoting a huge value: the quoting sites use excerpt().
        object.__setattr__(self, "path", clip(self.path, _MAX_PATH))
        object.__setattr__(self, "message", clip(self.message, _MAX_MESSAGE))

    def format(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return ": ".join(part for part in (where, self.path, self.message) if part)

    def as_json(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "path": self.path, "message": self.message}

    def sort_key(self) -> tuple[int, str, str]:
        return (self.line or 0, self.path, self.message)


class RosterInvalid(Exception):
    """The roster cannot be used; `issues` holds every problem found, sorted by line."""

    def __init__(self, issues: tuple[RosterIssue, ...] | list[RosterIssue]) -> None:
        ordered = sorted(issues, key=RosterIssue.sort_key)
        if len(ordered) > MAX_ISSUES:
            more = len(ordered) - MAX_ISSUES
            ordered = [*ordered[:MAX_ISSUES],
                       RosterIssue(ordered[0].file, None, "", f"{more:,} more problems not shown")]
        self.issues = tuple(ordered)
        super().__init__("\n".join(issue.format() for issue in self.issues))


@dataclass
class Document:
    """The parsed file: plain Python data, and the line each path starts on."""

    file: str
    data: object = None
    lines: dict[DocPath, int] = dataclasses.field(default_factory=dict)
    issues: list[RosterIssue] = dataclasses.field(default_factory=list)

    def line(self, path: DocPath) -> int:
        # A path the file does not have (a missing field) is reported where
        # its nearest existing parent starts.
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path, 1)

    def issue(self, path: DocPath, message: str) -> RosterIssue:
        return RosterIssue(self.file, self.line(path), format_path(path), message)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_path(path: DocPath) -> str:
    """`("users", "bob", "repos", 1)` -> `users.bob.repos[1]`; odd keys are quoted: `users["a b"]`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif len(part) > EXCERPT_CHARS:  # a key pasted by mistake, or a bomb: its start only
            text += f"[{json.dumps(part[:EXCERPT_CHARS], ensure_ascii=False)}…]"
        elif _PLAIN_KEY.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part, ensure_ascii=False)}]"
    return text


def show_value(value: object) -> str:
    """A value as the roster's author wrote it, for 'got ...' in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return excerpt(value)
