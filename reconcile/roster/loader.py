"""Reads a roster file into a Roster, or explains everything wrong with it.

Owns the three gates a roster passes before anything else runs: YAML
(composed to nodes, so every value keeps its line, duplicate keys are seen,
and only `true`/`false` are booleans), the JSON Schema in
schema/roster.schema.json, and the rules a schema cannot say. All problems of
one file are collected and raised together as RosterInvalid, sorted by line.
Nothing here talks to Vault or touches the disk beyond reading the one file.

The file is read as something its author may have got badly wrong, or worse:
only a regular file (opened without blocking, so a FIFO cannot hang the run),
at most MAX_BYTES, at most MAX_DEPTH levels deep and MAX_NODES values, and
aliases may repeat at most MAX_ALIAS_VALUES values in all (a "billion laughs"
document expands to billions). Messages quote at most EXCERPT_CHARS of a
value. Each limit is one located error line, never a traceback.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any, ClassVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconcile.roster.values import Roster
from reconcile.roster.issues import (EXCERPT_CHARS, DocPath, Document, RosterInvalid, RosterIssue, clip,
                                     excerpt, format_path)
from reconcile.roster.rules import build_roster, rule_issues, schema_issues, top_level_problem


MAX_BYTES = 4 * 1024 * 1024
"""A roster is a few KiB per hundred people; anything above this is refused unread."""
MAX_DEPTH = 32
"""Nesting levels; a roster needs five (users.alice.repos[0] is the deepest value)."""
MAX_NODES = 50_000
"""YAML values, keys included: 25,000 people with every default, 2,500 with every field set."""
MAX_ALIAS_VALUES = 10_000
"""Values read again through aliases, each use of an alias counting its whole value."""


_READ_CHUNK = 1024 * 1024
_LIMIT_TEXT = f"{MAX_BYTES // (1024 * 1024)} MiB ({MAX_BYTES:,} bytes)"


def load_roster(path: str) -> Roster:
    """Read, check and return the roster at `path`; raise RosterInvalid otherwise."""
    try:
        return _load(path)
    except (RecursionError, MemoryError):
        # The limits below should make this unreachable; should they not, still one line, no traceback.
        raise RosterInvalid([RosterIssue(path, None, "", "the roster is too large or too deeply nested to read")]) \
            from None


def _load(path: str) -> Roster:
    text = _read_text(path)
    document = _compose(path, text)
    if not isinstance(document.data, dict):
        raise RosterInvalid([document.issue((), top_level_problem(document.data))])
    issues = [*document.issues, *schema_issues(document), *rule_issues(document)]
    if issues:
        raise RosterInvalid(issues)
    return build_roster(document.data, path)


# --- reading -----------------------------------------------------------------


def _read_text(path: str) -> str:
    raw = _read_bytes(path)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        bad = raw[exc.start : exc.start + 1].hex()
        raise RosterInvalid([RosterIssue(path, line, "", f"not valid UTF-8 text (byte 0x{bad})")]) from None


def _read_bytes(path: str) -> bytes:
    """The file's bytes: a regular file of at most MAX_BYTES, read without ever blocking.

    O_NONBLOCK makes opening a FIFO return at once (no writer needed); the
    type is then checked on the open descriptor, so a FIFO, a device (a link
    to /dev/zero) or a folder is refused without a single read. The read is
    bounded too: a file that grows after fstat cannot make it read more.
    """
    def refuse(why: str) -> RosterInvalid:
        return RosterInvalid([RosterIssue(path, None, "", f"cannot read the roster: {why}")])

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise refuse("no such file") from None
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise refuse(f"it is {_file_type(info.st_mode)}, not a regular file") from None
        if info.st_size > MAX_BYTES:
            raise refuse(f"it is {info.st_size:,} bytes; a roster may be at most {_LIMIT_TEXT}")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, min(_READ_CHUNK, MAX_BYTES + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if size > MAX_BYTES:  # it grew after fstat
        raise refuse(f"it is larger than {_LIMIT_TEXT}, the most a roster may be")
    return b"".join(chunks)


def _file_type(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return f"of type 0o{stat.S_IFMT(mode):o}"


# --- YAML --------------------------------------------------------------------

_YAML = "tag:yaml.org,2002:"


class _CoreLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema scalars.

    YAML 1.1 reads `no`, `on`, `off`, `yes` as booleans, `1:30` as 5400 and
    `2024-01-01` as a date; in a roster those are almost always mistakes, so
    they stay strings and the schema then names them.
    """

    # A class variable in PyYAML itself; its stubs declare it as an instance variable.
    yaml_implicit_resolvers: ClassVar[dict[Any, list[tuple[str, re.Pattern[str]]]]] = {}  # type: ignore[misc]

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.nodes = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        # PyYAML composes recursively: without a cap, 5,000 nested brackets end in a RecursionError.
        self.depth += 1
        self.nodes += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _LimitExceeded(self._line(), f"nested more than {MAX_DEPTH} levels deep; "
                                     "a roster needs five")
            if self.nodes > MAX_NODES:
                raise _LimitExceeded(self._line(), f"more than {MAX_NODES:,} values; "
                                     "the roster is too large to be one")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def _line(self) -> int:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        return int(event.start_mark.line) + 1


class _LimitExceeded(Exception):
    """The document passes a limit of this module: one located line."""

    def __init__(self, line: int, message: str, path: str = "") -> None:
        super().__init__(message)
        self.line = line
        self.message = message
        self.path = path


for _tag, _pattern in (
    ("null", r"~|null|Null|NULL|"),
    ("bool", r"[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]"),
    ("int", r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+"),
    ("float", r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"),
):
    _CoreLoader.add_implicit_resolver(_YAML + _tag, re.compile(f"^(?:{_pattern})$"), None)


def _compose(file: str, text: str) -> Document:
    document = Document(file)
    try:
        root = _single_node(text)
    except yaml.MarkedYAMLError as exc:
        raise RosterInvalid([_yaml_error_issue(file, exc)]) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        message = f"invalid YAML: control character 0x{exc.character:02x} is not allowed"
        raise RosterInvalid([RosterIssue(file, line, "", message)]) from None
    except _LimitExceeded as exc:
        raise RosterInvalid([RosterIssue(file, exc.line, exc.path, exc.message)]) from None
    if root is None:
        what = "empty" if not text.strip() else "only comments"
        raise RosterInvalid([RosterIssue(file, 1, "", f"the roster is {what}; it needs at least a 'users' mapping")])
    try:
        document.data = _NodeReader(document).read(root, (), _line_of(root))
    except _LimitExceeded as exc:
        raise RosterInvalid([RosterIssue(file, exc.line, exc.path, exc.message)]) from None
    return document


def _single_node(text: str) -> Node | None:
    # Constructing the loader already scans the text: control characters raise here.
    loader = _CoreLoader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _yaml_error_issue(file: str, exc: yaml.MarkedYAMLError) -> RosterIssue:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    detail = exc.problem or exc.context or "syntax error"
    if exc.context and exc.problem and exc.context_mark is not None:
        detail = f"{exc.context} on line {exc.context_mark.line + 1}, {exc.problem}"
    # PyYAML quotes anchors, aliases and tags whole: keep the start only.
    return RosterIssue(file, line, "", clip(f"invalid YAML: {detail}", 2 * EXCERPT_CHARS + 80))


def _line_of(node: Node) -> int:
    return int(node.start_mark.line) + 1


class _NodeReader:
    """Turns YAML nodes into dicts, lists and scalars, recording lines and problems.

    Keys are always the text as written, so `no:`, `null:` or `123:` under
    `users` stay names for the name rules to judge rather than turning into
    False, None or 123.
    """

    def __init__(self, document: Document) -> None:
        self.document = document
        self.active: set[int] = set()
        self.seen: set[int] = set()
        self.repeated = 0
        self.alias_use: tuple[DocPath, int] | None = None
        """Where the outermost alias being read is used: named when aliases repeat too much."""

    def read(self, node: Node, path: DocPath, line: int) -> object:
        self.document.lines.setdefault(path, line)
        if id(node) in self.active:
            self._problem(path, "an alias refers to its own parent; recursive data is not allowed")
            return None
        # The composer shares an anchored node between its uses, so a node read before is
        # read again through an alias; nine aliases of nine aliases of ... expand to billions.
        outermost = False
        if id(node) in self.seen:
            if self.alias_use is None:
                self.alias_use, outermost = (path, line), True
            self.repeated += 1
            if self.repeated > MAX_ALIAS_VALUES:
                use_path, use_line = self.alias_use
                raise _LimitExceeded(use_line, f"aliases repeat more than {MAX_ALIAS_VALUES:,} values; "
                                     "a roster needs few if any", format_path(use_path))
        else:
            self.seen.add(id(node))
        self.active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                return self._sequence(node, path)
            return self._scalar(node, path)
        finally:
            self.active.discard(id(node))
            if outermost:
                self.alias_use = None

    def _mapping(self, node: MappingNode, path: DocPath) -> dict[str, object]:
        self._check_tag(node, "map", path)
        result: dict[str, object] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = _line_of(key_node)
            if not isinstance(key_node, ScalarNode):
                self.document.issues.append(RosterIssue(
                    self.document.file, line, format_path(path), "a key must be a plain name, not a list or mapping"))
                continue
            key = str(key_node.value)
            if key in first_line:
                self.document.issues.append(RosterIssue(
                    self.document.file, line, format_path((*path, key)),
                    f"duplicate key {excerpt(key)}: defined on line {first_line[key]} and again on line {line}"))
                continue
            first_line[key] = line
            result[key] = self.read(value_node, (*path, key), line)
        return result

    def _sequence(self, node: SequenceNode, path: DocPath) -> list[object]:
        self._check_tag(node, "seq", path)
        return [self.read(item, (*path, index), _line_of(item)) for index, item in enumerate(node.value)]

    def _scalar(self, node: Node, path: DocPath) -> object:
        value = str(node.value)
        tag = node.tag
        if tag == _YAML + "null":
            return None
        if tag == _YAML + "bool":
            return value.lower() == "true"
        if tag == _YAML + "int":
            try:
                return _to_int(value)
            except ValueError:
                # Python converts at most 4,300 digits (_to_int caps 0x/0o numbers alike); no roster
                # field wants more, so the text as written goes on for the schema or the rules to
                # refuse in their own words.
                return value
        if tag == _YAML + "float":
            return _to_float(value)
        self._check_tag(node, "str", path)
        return value

    def _check_tag(self, node: Node, expected: str, path: DocPath) -> None:
        if node.tag != _YAML + expected:
            shown = node.tag.replace(_YAML, "!!")
            self._problem(path, f"unsupported YAML tag {excerpt(shown)}")

    def _problem(self, path: DocPath, message: str) -> None:
        self.document.issues.append(self.document.issue(path, message))


_MAX_INT_BITS = 14_000
"""About 4,200 decimal digits: an int bigger than this could not even be shown (Python's str() of an
int stops at 4,300 digits), and no roster field wants one."""


def _to_int(text: str) -> int:
    # Base 0 only for 0o/0x: it would refuse a decimal written as "010". int() limits decimal digits
    # only; a long 0x or 0o number is parsed, then refused here (ValueError) before anything shows it.
    value = int(text, 0) if text[:2] in ("0o", "0x") else int(text)
    if value.bit_length() > _MAX_INT_BITS:
        raise ValueError("too large")
    return value


def _to_float(text: str) -> float:
    lowered = text.lower()
    if lowered.endswith(".inf"):
        return float("-inf") if lowered.startswith("-") else float("inf")
    if lowered == ".nan":
        return float("nan")
    return float(text)
