"""The long-lived setup token (`claude setup-token`): its shape, where it is stored, how it is probed.

Shared by `claude-auth setup-token` (which stores it) and the sync in
setup-token mode (which installs it). Stored at the person's KV path, merged
with check-and-set beside every other key, which are carried over byte for byte
(reconcile.sync.backup.merge_write over Vault.kv_read_raw/kv_write_cas_raw):

- `claude_setup_token`: the token (`sk-ant-oat01-…`);
- `claude_setup_token_stored_at`: ISO 8601 UTC;
- `claude_setup_token_expires_at_ms`: --expires-at when given, else stored_at
  plus the lifetime `claude setup-token` printed (`Your OAuth token (valid for
  1 year|N days|less than a day):`, from the server's expiresAt since 2.1.332),
  when its output was given rather than the bare token, else plus 365 days;
- `claude_setup_token_expiry_source`: which of the three (`given`, `claude`,
  `default`), so `status` can say whether the date is known or assumed.

Installed into `~/.claude/.credentials.json` as `claudeAiOauth`
{accessToken, expiresAt, scopes: ["user:inference"]} with no refresh token:
nothing for concurrent sessions to refresh, so nothing to race. The OAuth
backup (`claude_ai_oauth_json`) is never written from here.

Read back undecoded as well (stored_token_raw): only these three fields are
decoded, size and depth capped, so a hostile value there is a reason to FAIL.

The probe hands the token to one `claude -p` only, through its environment
(CLAUDE_CODE_OAUTH_TOKEN, never argv), in a private throw-away HOME, so it
proves the token alone and touches nobody's files; like every probe it runs
with CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 (livecheck.child_environment).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from reconcile.common import boundedjson
from reconcile.sync import livecheck
from reconcile.sync.credentials import is_setup_token_object
from reconcile.sync.livecheck import LiveResult
from reconcile.vault.values import Secret

PREFIX = "sk-ant-oat01-"
FIELD_TOKEN = "claude_setup_token"
FIELD_STORED_AT = "claude_setup_token_stored_at"
FIELD_EXPIRES_AT_MS = "claude_setup_token_expires_at_ms"
FIELD_EXPIRY_SOURCE = "claude_setup_token_expiry_source"
EXPIRY_GIVEN, EXPIRY_FROM_CLAUDE, EXPIRY_DEFAULT = "given", "claude", "default"
EXPIRY_SOURCES = (EXPIRY_GIVEN, EXPIRY_FROM_CLAUDE, EXPIRY_DEFAULT)
SCOPES = ("user:inference",)
VALIDITY_DAYS = 365
"""`claude setup-token` tokens live about a year; the stored expiry when none is given."""
WARN_DAYS = 30
"""The sync prints a WARN line when fewer days are left."""
DAY_MS = 86_400_000
MAX_LENGTH = 4096
FIELD_LIMIT = MAX_LENGTH + 64
"""Largest JSON text of a stored setup-token field decoded (a token of MAX_LENGTH, quoted, fits)."""
FIELD_MAX_DEPTH = 2
"""The stored fields are a string and numbers: deeper nesting is refused before decoding."""
_TOKEN_SHAPE = re.compile(r"sk-ant-oat01-[A-Za-z0-9_-]{20,}")
HINT = "run claude setup-token, then claude-auth setup-token"
PASTE_LIMIT = 16_384
"""Most bytes of standard input read: the whole output of `claude setup-token` is under 1 KiB."""
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
_TOKEN_START = re.compile(r"sk-ant-oat01-[A-Za-z0-9_-]*")
_CONTINUATION = re.compile(r"[A-Za-z0-9_-]+")
# Both CLIs print `Your OAuth token (valid for <lifetime>):`; 2.1.332 computes <lifetime> from the
# server's expiresAt, rounded to days: "1 year" at 365, "less than a day" under half a day.
_VALID_FOR = re.compile(r"valid for\s+(1 year|less than a day|(\d{1,5}) days?)\s*\)")
_LIFETIMES = {"1 year": VALIDITY_DAYS * 86_400, "less than a day": 43_200}


@dataclass(frozen=True)
class Given:
    """What standard input held: the token, and the lifetime claude printed beside it (if it did)."""

    token: str
    lifetime_seconds: int | None


def _clean_lines(text: str) -> list[str]:
    return [_ANSI.sub("", line).strip() for line in text.splitlines()]


def _tokens(lines: list[str]) -> list[tuple[str, int]]:
    """Each token-shaped text and the index of its last line; a token the terminal wrapped onto
    further lines (letters, digits, '-' and '_' only) is joined back."""
    found: list[tuple[str, int]] = []
    index = 0
    while index < len(lines):
        match = _TOKEN_START.search(lines[index])
        if match:
            token = match.group(0)
            if match.end() == len(lines[index]):
                while index + 1 < len(lines) and _CONTINUATION.fullmatch(lines[index + 1]):
                    index += 1
                    token += lines[index]
            found.append((token, index))
        index += 1
    return found


def read_given(text: str) -> Given | str:
    """The setup token in `text` (the bare token, or all that `claude setup-token` printed, colours
    and a wrapped token line included) and the lifetime printed with it; or why there is none
    (never quoting the input)."""
    lines = _clean_lines(text)
    distinct = {token for token, _ in _tokens(lines)}
    if not distinct:
        return format_problem(text.strip()) or "no setup token in the input"
    if len(distinct) > 1:
        return "more than one setup token in the input; give one"
    token = distinct.pop()
    problem = format_problem(token)
    if problem:
        return problem
    lifetimes = set()
    for line in lines:
        match = _VALID_FOR.search(line)
        if match:
            lifetimes.add(int(match.group(2)) * 86_400 if match.group(2) else _LIFETIMES[match.group(1)])
    if len(lifetimes) > 1:
        return "the input names more than one lifetime (valid for ...); give one output of claude setup-token"
    return Given(token, lifetimes.pop() if lifetimes else None)


def given_complete(text: str) -> bool:
    """Whether a paste into the terminal is over: a bare token on the first line, or a token
    followed by any line that does not continue it (the rest of claude's output, or Enter)."""
    lines = _clean_lines(text)
    if not text.endswith("\n"):
        return False
    filled = [line for line in lines if line]
    if filled and _TOKEN_START.fullmatch(filled[0]) and len(filled) == 1 and lines[-1] == filled[0]:
        return True
    found = _tokens(lines)
    return bool(found) and found[-1][1] < len(lines) - 1


def format_problem(token: str) -> str | None:
    """Why `token` cannot be a setup token (never quoting it), or None."""
    if not token:
        return "no token given on standard input"
    if not token.startswith(PREFIX):
        return f"not a setup token: it must start with {PREFIX} (the output of `claude setup-token`)"
    if len(token) > MAX_LENGTH or not _TOKEN_SHAPE.fullmatch(token):
        return f"not a setup token: after {PREFIX} it must be at least 20 letters, digits, '-' or '_'"
    return None


def installed_object(token: str, expires_at_ms: int) -> dict[str, Any]:
    """The claudeAiOauth object the sync installs: no refresh token, inference scope only."""
    return {"accessToken": token, "expiresAt": int(expires_at_ms), "scopes": list(SCOPES)}


def is_installed(oauth: object, token: str, expires_at_ms: int) -> bool:
    """Whether the local object already is this token as the sync installs it (extra keys claude
    may add are allowed; a different token, expiry or any refresh token is not)."""
    if not is_setup_token_object(oauth):
        return False
    assert isinstance(oauth, dict)
    return (oauth.get("accessToken") == token and oauth.get("expiresAt") == expires_at_ms
            and oauth.get("scopes") == list(SCOPES))


@dataclass(frozen=True)
class StoredToken:
    token: Secret
    expires_at_ms: int
    stored_at: str
    version: int
    expiry_source: str | None = None
    """given | claude | default; None when stored before the source was recorded."""


def stored_token(data: Mapping[str, Any], version: int, where: str) -> StoredToken | str:
    """The token stored at the path, or why there is no usable one (never quoting a value)."""
    token = data.get(FIELD_TOKEN)
    if token is None:
        return f"no setup token stored at {where}"
    if not isinstance(token, str) or format_problem(token):
        return f"{FIELD_TOKEN} at {where} is not a setup token ({PREFIX}…)"
    try:
        expires = boundedjson.bounded_int(data.get(FIELD_EXPIRES_AT_MS), low=0, high=boundedjson.EPOCH_MS_MAX,
                                          what=f"{FIELD_EXPIRES_AT_MS} at {where}", text_ok=True)
    except boundedjson.OutOfRange as exc:
        return str(exc)
    stored_at = data.get(FIELD_STORED_AT)
    source = data.get(FIELD_EXPIRY_SOURCE)
    return StoredToken(Secret(token), expires, stored_at if isinstance(stored_at, str) else "", version,
                       source if source in EXPIRY_SOURCES else None)


def stored_token_raw(fields: Mapping[str, bytes], version: int, where: str) -> StoredToken | str:
    """As stored_token, from the path's undecoded values (Vault.kv_read_raw): only the three
    setup-token fields are decoded, each capped in size and depth first, so a huge or deeply
    nested value is a reason, never a MemoryError or RecursionError. Other keys are not looked at."""
    data: dict[str, Any] = {}
    for name in (FIELD_TOKEN, FIELD_STORED_AT, FIELD_EXPIRES_AT_MS, FIELD_EXPIRY_SOURCE):
        raw = fields.get(name)
        if raw is None:
            continue
        if len(raw) > FIELD_LIMIT:
            return f"{name} at {where} is larger than {FIELD_LIMIT} bytes"
        try:
            data[name] = boundedjson.loads(raw, max_depth=FIELD_MAX_DEPTH)
        except boundedjson.JsonProblem as exc:
            return f"{name} at {where} is not usable JSON ({exc})"
    return stored_token(data, version, where)


def store_fields(token: str, stored_at: str, expires_at_ms: int,
                 expiry_source: str = EXPIRY_DEFAULT) -> dict[str, Any]:
    return {FIELD_TOKEN: token, FIELD_STORED_AT: stored_at, FIELD_EXPIRES_AT_MS: int(expires_at_ms),
            FIELD_EXPIRY_SOURCE: expiry_source}


def expiry(now: float, given_ms: int | None, lifetime_seconds: int | None) -> tuple[int, str]:
    """(expiresAt in ms, its source): --expires-at, else what claude printed, else 365 days."""
    if given_ms is not None:
        return given_ms, EXPIRY_GIVEN
    if lifetime_seconds is not None:
        return int(now * 1000) + lifetime_seconds * 1000, EXPIRY_FROM_CLAUDE
    return default_expiry_ms(now), EXPIRY_DEFAULT


SOURCE_PHRASES = {EXPIRY_GIVEN: "as given with --expires-at", EXPIRY_FROM_CLAUDE: "as claude setup-token reported",
                  EXPIRY_DEFAULT: f"assumed: {VALIDITY_DAYS} days, claude setup-token's output was not given"}


def default_expiry_ms(now: float) -> int:
    return int(now * 1000) + VALIDITY_DAYS * DAY_MS


def parse_expiry(text: str) -> int:
    """`--expires-at`: an ISO date (end of that day, UTC) or date-time (UTC unless it says); ms since the epoch.

    Raises ValueError with a message for people.
    """
    value = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            at = datetime.fromisoformat(value).replace(hour=23, minute=59, second=59, tzinfo=timezone.utc)
        else:
            at = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if at.tzinfo is None:
                at = at.replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"--expires-at {text!r} is not an ISO date such as 2027-06-30") from None
    return int(at.timestamp() * 1000)


def expiry_date(expires_at_ms: int) -> str:
    """YYYY-MM-DD (UTC); never raises, whatever the number."""
    try:
        return datetime.fromtimestamp(expires_at_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")
    except (ValueError, OverflowError, OSError):
        return "unknown"


def days_left(expires_at_ms: int, now: float | None = None) -> float:
    return (expires_at_ms - (time.time() if now is None else now) * 1000) / DAY_MS


def rejected_reason(result: LiveResult) -> str:
    """The FAIL reason for a setup token the API rejected."""
    match = re.search(r"HTTP (\d{3})", result.reason)
    code = f"HTTP {match.group(1)}" if match else "authentication failed"
    return f"setup token rejected ({code}); {HINT}"


def probe(token: Secret, environ: Mapping[str, str], model: str, timeout: float) -> LiveResult:
    """The live check with `token` alone: handed to this one claude through its environment,
    in a private empty HOME (removed afterwards), so no login file is read or written."""
    env, _ = livecheck.child_environment(environ)
    home = tempfile.mkdtemp(prefix="claude-auth-probe-")
    try:
        env.update(HOME=home, CLAUDE_CODE_OAUTH_TOKEN=token.reveal())
        return livecheck.run(model, env, timeout, cwd=home)
    finally:
        shutil.rmtree(home, ignore_errors=True)
