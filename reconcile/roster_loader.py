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

import dataclasses
import difflib
import functools
import json
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconcile.durations import format_duration, parse_duration
from reconcile.roster import Roster, StatusSettings, SyncSettings, User, VaultSettings

if TYPE_CHECKING:
    from jsonschema import ValidationError

PathPart = str | int
DocPath = tuple[PathPart, ...]

MAX_BYTES = 4 * 1024 * 1024
"""A roster is a few KiB per hundred people; anything above this is refused unread."""
MAX_DEPTH = 32
"""Nesting levels; a roster needs five (users.alice.repos[0] is the deepest value)."""
MAX_NODES = 50_000
"""YAML values, keys included: 25,000 people with every default, 2,500 with every field set."""
MAX_ALIAS_VALUES = 10_000
"""Values read again through aliases, each use of an alias counting its whole value."""
EXCERPT_CHARS = 40
"""How much of a value an error line quotes."""
MAX_ISSUES = 100
"""Problems reported for one file; the rest are counted in one last line."""
_MAX_MESSAGE = 400
_MAX_PATH = 200
_READ_CHUNK = 1024 * 1024
_LIMIT_TEXT = f"{MAX_BYTES // (1024 * 1024)} MiB ({MAX_BYTES:,} bytes)"


def excerpt(value: object) -> str:
    """`repr(value)`, cut to a short excerpt so an error line never repeats a huge value.

    `excerpt("x" * 50)` is `'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'… (50 characters)`.
    """
    if isinstance(value, str) and len(value) > EXCERPT_CHARS:
        return f"{value[:EXCERPT_CHARS]!r}… ({len(value):,} characters)"
    return _clip(repr(value), EXCERPT_CHARS * 4)


def _clip(text: str, limit: int) -> str:
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
        object.__setattr__(self, "path", _clip(self.path, _MAX_PATH))
        object.__setattr__(self, "message", _clip(self.message, _MAX_MESSAGE))

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
        raise RosterInvalid([document.issue((), _top_level_problem(document.data))])
    issues = [*document.issues, *_schema_issues(document), *_rule_issues(document)]
    if issues:
        raise RosterInvalid(issues)
    return _build_roster(document.data, path)


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


@dataclass
class _Document:
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


def _compose(file: str, text: str) -> _Document:
    document = _Document(file)
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
    return RosterIssue(file, line, "", _clip(f"invalid YAML: {detail}", 2 * EXCERPT_CHARS + 80))


def _line_of(node: Node) -> int:
    return int(node.start_mark.line) + 1


class _NodeReader:
    """Turns YAML nodes into dicts, lists and scalars, recording lines and problems.

    Keys are always the text as written, so `no:`, `null:` or `123:` under
    `users` stay names for the name rules to judge rather than turning into
    False, None or 123.
    """

    def __init__(self, document: _Document) -> None:
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


def _top_level_problem(data: object) -> str:
    return f"the roster must be a mapping with a 'users' key at the top level, got {_show(data)}"


# --- JSON Schema ---------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    from reconcile.common.resources import schema_file

    loaded: dict[str, Any] = json.loads(schema_file().read_text(encoding="utf-8"))
    return loaded


def _schema_issues(document: _Document) -> Iterator[RosterIssue]:
    # Imported here: only roster loading pays for jsonschema, never `sync`.
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(_schema())
    for error in validator.iter_errors(document.data):
        path: DocPath = tuple(error.absolute_path)
        for sub_path, message in _translate(error, path):
            yield document.issue(sub_path, message)


def _translate(error: ValidationError, path: DocPath) -> Iterator[tuple[DocPath, str]]:
    """Yield (path, message) in the roster's words for one schema error."""
    kind = error.validator
    schema: Any = error.schema  # jsonschema types it as a union with bool and Unset
    value: Any = error.validator_value
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(schema.get("properties", {}))
        for key in error.instance:
            if key not in known:
                yield (*path, key), _unknown_field(str(key), known)
    elif kind == "type":
        yield path, f"expected {_type_words(value)}, got {_show(error.instance)}"
    elif kind == "enum":
        choices = ", ".join(str(choice) for choice in value)
        yield path, f"expected one of {choices}, got {_show(error.instance)}"
    elif kind == "required" and isinstance(error.instance, dict):
        for key in value:
            if key not in error.instance:
                yield path, f"missing required field {key!r}"
    elif kind == "uniqueItems" and isinstance(error.instance, list):
        yield from _duplicates(error.instance, path)
    elif kind == "minLength":
        yield path, "must not be empty"
    else:
        yield path, str(error.message)


def _unknown_field(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown field {excerpt(key)} (did you mean {close[0]!r}?)"
    return f"unknown field {excerpt(key)} (known fields: {', '.join(known)})"


def _duplicates(items: list[object], path: DocPath) -> Iterator[tuple[DocPath, str]]:
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        key = json.dumps(item, sort_keys=True)
        if key in seen:
            yield (*path, index), f"{_show(item)} is listed twice (first as item {seen[key]})"
        else:
            seen[key] = index


_TYPE_WORDS = {
    "boolean": "true or false",
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "array": "a list",
    "object": "a mapping",
    "null": "nothing (null)",
}


def _type_words(expected: object) -> str:
    names = [expected] if isinstance(expected, str) else list(expected)  # type: ignore[call-overload]
    return " or ".join(_TYPE_WORDS.get(str(name), str(name)) for name in names)


def _show(value: object) -> str:
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


# --- rules the schema cannot say ---------------------------------------------------

_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_USER_NAME_RULE = (
    "user names are POSIX account names: 1 to 32 characters, lower-case letters, digits, "
    "'_' and '-', starting with a lower-case letter or '_'"
)
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_POLICY_PREFIX = re.compile(r"[a-z0-9][a-z0-9._-]*")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")

# Smallest allowed value per duration setting, in seconds; 0 means zero is allowed.
_DURATION_MINIMUMS: dict[DocPath, int] = {
    # The hourly reconcile renews tokens; a shorter period could lapse in between.
    ("vault", "token_period"): 3600,
    # Every sync run sends one billed `claude -p` request.
    ("sync", "interval"): 60,
    ("sync", "randomized_delay"): 0,
}


def _rule_issues(document: _Document) -> Iterator[RosterIssue]:
    data = document.data
    assert isinstance(data, dict)
    for (section, key), check in _SETTING_RULES.items():
        settings = data.get(section)
        value = settings.get(key) if isinstance(settings, dict) else None
        if isinstance(value, str):
            problem = check(value)
            if problem:
                yield document.issue((section, key), problem)
    yield from _duration_issues(document, data)
    users = data.get("users")
    if isinstance(users, dict):
        yield from _user_issues(document, users)


_MAX_DURATION_CHARS = 32


def _duration_issues(document: _Document, data: Mapping[str, object]) -> Iterator[RosterIssue]:
    for path, minimum in _DURATION_MINIMUMS.items():
        section = data.get(str(path[0]))
        value = section.get(str(path[1])) if isinstance(section, dict) else None
        if value is None or isinstance(value, bool) or not isinstance(value, (str, int)):
            continue
        text = str(value)
        if len(text) > _MAX_DURATION_CHARS:  # also spares parse_duration Python's own digit limit
            yield document.issue(path, f"{excerpt(text)} is not a duration: too long")
            continue
        try:
            seconds = parse_duration(text, allow_zero=minimum == 0)
        except ValueError as exc:
            yield document.issue(path, str(exc).replace(repr(text), excerpt(text)))
            continue
        if seconds < minimum:
            yield document.issue(path, f"{excerpt(value)} is too short; at least {format_duration(minimum)}")


def _address_problem(value: str) -> str | None:
    expected = "expected an http:// or https:// URL such as https://vault.example.org:8200"
    try:
        parts = urlsplit(value)
    except ValueError as exc:  # such as an unclosed IPv6 bracket: http://[::1
        return f"{expected}; {excerpt(value)} is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or any(char.isspace() for char in value):
        return f"{expected}, got {excerpt(value)}"
    if not parts.hostname:
        return f"{expected}; {excerpt(value)} has no host"
    if not _has_valid_port(value):
        return f"{expected}; {excerpt(value)} has an invalid port"
    if parts.username is not None or parts.password is not None:
        return "the Vault address must not contain credentials"
    if parts.query or parts.fragment:
        return f"{expected}; {excerpt(value)} has a query or fragment"
    return None


def _has_valid_port(url: str) -> bool:
    try:
        urlsplit(url).port  # noqa: B018 - the property raises on a bad port
    except ValueError:
        return False
    return True


def _kv_mount_problem(value: str) -> str | None:
    if _SEGMENT.fullmatch(value):
        return None
    return (f"invalid mount {excerpt(value)}: one path segment of letters, digits, '.', '_' and '-', "
            "starting with a letter or digit")


def _path_prefix_problem(value: str) -> str | None:
    rule = ("slash-separated segments of letters, digits, '.', '_' and '-', each starting with a "
            "letter or digit, with no leading or trailing slash")
    if value.startswith("/") or value.endswith("/"):
        return f"invalid path {excerpt(value)}: no leading or trailing slash; {rule}"
    for segment in value.split("/"):
        if not segment:
            return f"invalid path {excerpt(value)}: empty segment; {rule}"
        if segment == "..":
            return f"invalid path {excerpt(value)}: '..' is not allowed; {rule}"
        if not _SEGMENT.fullmatch(segment):
            return f"invalid path {excerpt(value)}: bad segment {excerpt(segment)}; {rule}"
    return None


def _policy_prefix_problem(value: str) -> str | None:
    if _POLICY_PREFIX.fullmatch(value):
        return None
    return (f"invalid policy prefix {excerpt(value)}: lower-case letters, digits, '.', '_' and '-', starting "
            "with a letter or digit (Vault lower-cases policy names, so upper case would never match)")


def _model_problem(value: str) -> str | None:
    if _MODEL.fullmatch(value):
        return None
    return (f"invalid model {excerpt(value)}: letters, digits, '.', '_', ':' and '-', "
            "starting with a letter or digit")


def _textfile_problem(value: str) -> str | None:
    if os.path.isabs(value) and value.endswith(".prom") and "\0" not in value:
        return None
    return f"expected an absolute path ending in .prom (node_exporter's textfile collector), got {excerpt(value)}"


_SETTING_RULES: dict[tuple[str, str], Callable[[str], str | None]] = {
    ("vault", "address"): _address_problem,
    ("vault", "kv_mount"): _kv_mount_problem,
    ("vault", "path_prefix"): _path_prefix_problem,
    ("vault", "policy_prefix"): _policy_prefix_problem,
    ("sync", "model"): _model_problem,
    ("status", "prometheus_textfile"): _textfile_problem,
}


def _user_issues(document: _Document, users: Mapping[str, object]) -> Iterator[RosterIssue]:
    authentik_owner: dict[str, str] = {}
    for name, fields in users.items():
        path: DocPath = ("users", name)
        problem = _user_name_problem(name)
        if problem:
            yield document.issue(path, problem)
        if not isinstance(fields, dict):
            continue
        yield from _tier_issues(document, path, fields)
        yield from _repo_issues(document, path, fields)
        yield from _list_item_issues(document, (*path, "namespaces"), fields.get("namespaces"), _namespace_problem)
        authentik = fields.get("authentik_user")
        if isinstance(authentik, str) and authentik:
            if authentik in authentik_owner:
                other = authentik_owner[authentik]
                yield document.issue(
                    (*path, "authentik_user"),
                    f"authentik_user {excerpt(authentik)} is also used by user {excerpt(other)} "
                    f"(line {document.line(('users', other, 'authentik_user'))})")
            else:
                authentik_owner[authentik] = name


def _user_name_problem(name: str) -> str | None:
    if _USER_NAME.fullmatch(name):
        return None
    if not name:
        reason = "it is empty"
    elif len(name) > 32:
        reason = f"it is {len(name)} characters long"
    elif not re.fullmatch(r"[a-z_]", name[0]):
        reason = f"it starts with {name[0]!r}"
    else:
        bad = next(char for char in name if not re.fullmatch(r"[a-z0-9_-]", char))
        reason = f"it contains {bad!r}"
    return f"invalid user name {excerpt(name)}: {reason}; {_USER_NAME_RULE}"


def _tier_issues(document: _Document, path: DocPath, fields: Mapping[str, object]) -> Iterator[RosterIssue]:
    tier = fields.get("tier")
    namespaces = fields.get("namespaces")
    if not isinstance(namespaces, (list, type(None))) or not isinstance(tier, (str, type(None))):
        return  # the schema already reports the wrong type
    if tier == "namespace-owner" and not namespaces:
        yield document.issue((*path, "tier"), "tier namespace-owner needs a non-empty 'namespaces' list")
    elif tier != "namespace-owner" and namespaces:
        shown = f"tier is {tier}" if tier else "no tier is set"
        yield document.issue(
            (*path, "namespaces"), f"only tier namespace-owner has namespaces ({shown})")


def _repo_issues(document: _Document, path: DocPath, fields: Mapping[str, object]) -> Iterator[RosterIssue]:
    repos = fields.get("repos")
    layout = fields.get("code_layout")
    if isinstance(repos, list) and repos and layout != "workspace":
        shown = f"code_layout is {layout}" if isinstance(layout, str) else "code_layout is not set"
        yield document.issue((*path, "repos"), f"repos need code_layout: workspace ({shown})")
    yield from _list_item_issues(document, (*path, "repos"), repos, _repo_problem)


def _list_item_issues(document: _Document, path: DocPath, items: object,
                      check: Callable[[str], str | None]) -> Iterator[RosterIssue]:
    if not isinstance(items, list):
        return
    for index, item in enumerate(items):
        if isinstance(item, str):
            problem = check(item)
            if problem:
                yield document.issue((*path, index), problem)


def _repo_problem(name: str) -> str | None:
    if _SEGMENT.fullmatch(name) and name not in (".", ".."):
        return None
    return (f"invalid repository name {excerpt(name)}: letters, digits, '.', '_' and '-', "
            "starting with a letter or digit")


def _namespace_problem(name: str) -> str | None:
    if _DNS_LABEL.fullmatch(name):
        return None
    return (f"invalid namespace {excerpt(name)}: a DNS label of at most 63 lower-case letters, digits "
            "and '-', starting and ending with a letter or digit")


# --- building the value ------------------------------------------------------------


def _build_roster(data: Mapping[str, Any], source: str) -> Roster:
    users_data: Mapping[str, Any] = data["users"]
    users = {name: _build_user(name, fields or {}) for name, fields in users_data.items()}
    return Roster(
        users=users,
        vault=_build_settings(VaultSettings, data.get("vault"), "vault"),
        sync=_build_settings(SyncSettings, data.get("sync"), "sync"),
        status=_build_settings(StatusSettings, data.get("status"), "status"),
        source=source,
    )


def _build_settings(cls: type[Any], section: Mapping[str, Any] | None, name: str) -> Any:
    values = dict(section or {})
    for (section_name, key), minimum in _DURATION_MINIMUMS.items():
        if section_name == name and key in values:
            values[key] = str(values[key])
            values[f"{key}_seconds"] = parse_duration(values[key], allow_zero=minimum == 0)
    return cls(**values)


def _build_user(name: str, fields: Mapping[str, Any]) -> User:
    values: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value for key, value in fields.items()}
    return User(name=name, **values)
