"""The roster's second and third gates: the JSON Schema, and the rules a schema cannot say.

Both read the composed Document (reconcile.roster.loader) and yield located
RosterIssues in the roster's own words; `build_roster` turns a document that
passed every gate into the immutable Roster. jsonschema is imported only when a
roster is checked, never by the sync.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from reconcile.roster.durations import format_duration, parse_duration
from reconcile.roster.values import Roster, StatusSettings, SyncSettings, User, VaultSettings
from reconcile.roster.issues import DocPath, Document, RosterIssue, excerpt, show_value

if TYPE_CHECKING:
    from jsonschema import ValidationError


def top_level_problem(data: object) -> str:
    return f"the roster must be a mapping with a 'users' key at the top level, got {show_value(data)}"


# --- JSON Schema ---------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    from reconcile.common.resources import schema_file

    loaded: dict[str, Any] = json.loads(schema_file().read_text(encoding="utf-8"))
    return loaded


def schema_issues(document: Document) -> Iterator[RosterIssue]:
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
        yield path, f"expected {_type_words(value)}, got {show_value(error.instance)}"
    elif kind == "enum":
        choices = ", ".join(str(choice) for choice in value)
        yield path, f"expected one of {choices}, got {show_value(error.instance)}"
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
            yield (*path, index), f"{show_value(item)} is listed twice (first as item {seen[key]})"
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
    # Rotation is checked by the hourly run: a shorter age would replace every token every run.
    ("vault", "token_max_age"): 3600,
    # Every sync run sends one billed `claude -p` request.
    ("sync", "interval"): 60,
    ("sync", "randomized_delay"): 0,
}


def rule_issues(document: Document) -> Iterator[RosterIssue]:
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


def _duration_issues(document: Document, data: Mapping[str, object]) -> Iterator[RosterIssue]:
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


def _user_issues(document: Document, users: Mapping[str, object]) -> Iterator[RosterIssue]:
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


def _tier_issues(document: Document, path: DocPath, fields: Mapping[str, object]) -> Iterator[RosterIssue]:
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


def _repo_issues(document: Document, path: DocPath, fields: Mapping[str, object]) -> Iterator[RosterIssue]:
    repos = fields.get("repos")
    layout = fields.get("code_layout")
    if isinstance(repos, list) and repos and layout != "workspace":
        shown = f"code_layout is {layout}" if isinstance(layout, str) else "code_layout is not set"
        yield document.issue((*path, "repos"), f"repos need code_layout: workspace ({shown})")
    yield from _list_item_issues(document, (*path, "repos"), repos, _repo_problem)


def _list_item_issues(document: Document, path: DocPath, items: object,
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


def build_roster(data: Mapping[str, Any], source: str) -> Roster:
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
