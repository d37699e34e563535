"""The live check: one minimal real inference with `claude -p`, and what its output means.

The command is fixed (argument list, no shell, nothing secret on it):

    claude -p 'Reply with exactly AUTH_OK and nothing else.' --model <model>
      --max-turns 1 --no-session-persistence --tools "" --disable-slash-commands
      --setting-sources ""

`claude` is found on PATH. Its environment is the user's minus every
variable that would make the check prove a different login than the file the
sync backs up (~/.claude/.credentials.json), plus `CLAUDE_CODE_MAX_RETRIES=0`
unless already set: without it claude retries a 5xx answer or a refused
connection for minutes, silently; with it an outage prints
`API Error: 500 ...` or `Unable to connect to API` within a second. And
always `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`: a login probe needs no
telemetry, and without it every run adds about 160 KB under
~/.claude/telemetry (CLI 2.1.197, measured; tests/test_sync_claude_cli.py).
stdin is /dev/null; on timeout the whole process group is killed.

The variables removed (OVERRIDING_VARIABLES; the flow prints a WARN line for
each one that was set):

- credentials that outrank the login file: CLAUDE_CODE_OAUTH_TOKEN,
  ANTHROPIC_API_KEY, ANTHROPIC_AUTH_TOKEN, CLAUDE_CODE_OAUTH_REFRESH_TOKEN,
  CLAUDE_CODE_SESSION_ACCESS_TOKEN (their values are secrets);
- folders claude reads its login from instead of ~/.claude: it takes
  $CLAUDE_SECURESTORAGE_CONFIG_DIR, else $CLAUDE_CONFIG_DIR, else ~/.claude;
- provider switches that route the check away from the claude.ai login:
  CLAUDE_CODE_USE_BEDROCK, CLAUDE_CODE_USE_VERTEX, CLAUDE_CODE_USE_FOUNDRY.

Why remove them rather than follow them: the systemd unit's environment never
carries them, and a person running `claude-auth sync` by hand from a shell
that has them must get the same check the timer does. Otherwise the check
passes on a login claude read elsewhere while the sync backs up the file's
login, which claude never read: a rejected login could overwrite a good backup.

Only output that shows an authentication failure (HTTP 401/403, "Failed to
authenticate", an OAuth/login error) is AUTH and may lead to a restore. An
outage (5xx, overloaded, 429, network errors, timeouts) or anything else
never does: restoring an older backup over a working newer login would break it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Mapping

from reconcile.common import childenv

PROMPT = "Reply with exactly AUTH_OK and nothing else."
EXPECTED = "AUTH_OK"
CREDENTIAL_VARIABLES = ("CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN",
                        "CLAUDE_CODE_OAUTH_REFRESH_TOKEN", "CLAUDE_CODE_SESSION_ACCESS_TOKEN")
"""Credentials that outrank ~/.claude/.credentials.json (their values are secrets)."""
CONFIG_DIR_VARIABLES = ("CLAUDE_SECURESTORAGE_CONFIG_DIR", "CLAUDE_CONFIG_DIR")
"""Folders claude would read its login from instead of ~/.claude (the first one set wins)."""
PROVIDER_VARIABLES = ("CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_FOUNDRY",
                      "CLAUDE_CODE_USE_ANTHROPIC_AWS", "CLAUDE_CODE_USE_MANTLE", "CLAUDE_CODE_USE_GATEWAY",
                      "CLAUDE_CODE_USE_ANTHROPIC_GOOGLE_CLOUD", "CLAUDE_CODE_PROVIDER_MANAGED_BY_HOST")
"""Switches to another provider (or to a host that manages it) instead of the claude.ai login: the
CLI's own list of provider-selecting variables, in 2.1.197 and 2.1.332 (docs/claude-cli.md). Without
a switch, cloud credentials (AWS_*, GOOGLE_*) are not used for inference, so they may stay."""
OVERRIDING_VARIABLES = CREDENTIAL_VARIABLES + CONFIG_DIR_VARIABLES + PROVIDER_VARIABLES
"""Never handed to claude: each would make the check prove another login than the one backed up."""
EXCERPT_LENGTH = 120
NONESSENTIAL_TRAFFIC_VARIABLE = "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"
"""Set to 1 for every probe (and in the sync unit): no telemetry, no update checks."""


class Verdict(str, Enum):
    OK = "ok"
    REFRESHING = "refreshing"
    """claude gave up because another process held its refresh lock (2.1.332): the login is not in
    question, and a restore now would race the refresh."""
    AUTH = "auth"
    """The login was rejected: a restore from the backup may help."""
    OUTAGE = "outage"
    """The API or the network failed: the login is not in question."""
    UNEXPECTED = "unexpected"
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class LiveResult:
    verdict: Verdict
    reason: str
    """For people; built from fixed phrases and a scrubbed excerpt of claude's output."""

    @property
    def is_ok(self) -> bool:
        return self.verdict is Verdict.OK


def command(model: str) -> list[str]:
    return ["claude", "-p", PROMPT, "--model", model, "--max-turns", "1", "--no-session-persistence",
            "--tools", "", "--disable-slash-commands", "--setting-sources", ""]


def why_removed(name: str) -> str:
    """The reason a WARN line gives for removing `name` (one of OVERRIDING_VARIABLES)."""
    if name in CONFIG_DIR_VARIABLES:
        return "claude would read its login from that folder, not the ~/.claude login this sync backs up"
    if name in PROVIDER_VARIABLES:
        return "claude would use another provider, not this user's own login"
    return "it would override this user's own login"


def child_environment(environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The environment handed to claude, and the names of the variables removed from it."""
    # The Vault credentials a sync (or root's setup-token) holds are none of claude's business.
    env = {k: v for k, v in childenv.without_vault(environ).items() if k not in OVERRIDING_VARIABLES}
    removed = [name for name in OVERRIDING_VARIABLES if name in environ]
    env.setdefault("CLAUDE_CODE_MAX_RETRIES", "0")
    env[NONESSENTIAL_TRAFFIC_VARIABLE] = "1"
    return env, removed


# --- classification -------------------------------------------------------------
# Each rule: (pattern, reason); checked, case-insensitively, on stdout + stderr of a
# failed run. The patterns are compiled on first use: a run that succeeds needs none.

REFRESHING_RULES: tuple[tuple[str, str], ...] = (
    (r"another Claude Code process is (?:holding the refresh lock|refreshing it)",
     "claude found its refresh lock held by another process"),
)
OUTAGE_CODES = ("ECONNREFUSED", "ConnectionRefused", "ECONNRESET", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH",
                "ENETUNREACH", "ENETDOWN", "EHOSTDOWN", "EPIPE", "ECONNABORTED", "FailedToOpenSocket",
                "ConnectionClosed", "ERR_SOCKET_CLOSED", "UND_ERR_SOCKET", "Malformed_HTTP_Response",
                "ERR_PROXY_TUNNEL")
"""Network error codes either supported CLI prints (node's, undici's and Bun's names): an outage, by
code, whatever sentence wraps it."""
OUTAGE_RULES: tuple[tuple[str, str], ...] = (
    (r"API Error: (5\d\d)\b", "the API answered HTTP {0}"),
    (r"\b529\b|overloaded", "the API is overloaded"),
    (r"API Error: 429\b|rate[ _]limit", "the API rate-limited the request (HTTP 429)"),
    (r"Unable to connect to API", "claude could not connect to the API"),
    (r"\b(" + "|".join(OUTAGE_CODES) + r")\b", "claude could not reach the API ({0})"),
    (r"Connection error|Connection refused|socket hang up|fetch failed|network",
     "claude could not reach the API (network error)"),
    (r"Request timed out|ETIMEDOUT|timed out", "the API request timed out"),
    (r"high load", "the API is under high load"),
    (r"temporary", "claude reported a temporary failure"),
)
POLICY_RULES: tuple[tuple[str, str], ...] = (
    (r"not allowed for this organization|organization has disabled",
     "the organization does not allow this login (a restore cannot help)"),
    (r"Credit balance is too low|usage limit", "the account has no usage left (a restore cannot help)"),
)
AUTH_RULES: tuple[tuple[str, str], ...] = (
    (r"API Error: (40[13])\b", "the API rejected the login (HTTP {0})"),
    (r"Failed to authenticate", "the API rejected the login (failed to authenticate)"),
    (r"OAuth token (?:has been )?revoked|OAuth token has expired", "the OAuth token was revoked or expired"),
    (r"Not logged in", "claude is not logged in"),
    (r"Please run /login|Please login again", "claude asks for a new login"),
    (r"authentication_error|authentication_failed|invalid_grant|OAuth error", "the API rejected the login"),
    (r"Invalid (?:API key|bearer token)", "the API rejected the login (invalid credential)"),
)
_SECRETISH = r"[A-Za-z0-9_\-.~+/=]{24,}"
"""Long unbroken runs (tokens, keys) are cut from excerpts of claude's output."""


@lru_cache(maxsize=None)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def excerpt(text: str, length: int = EXCERPT_LENGTH) -> str:
    """The first non-empty line of `text`, shortened, with anything token-like removed."""
    for line in text.splitlines():
        line = " ".join(line.split())
        if line:
            line = re.sub(_SECRETISH, "<…>", line)
            return line if len(line) <= length else line[: length - 1] + "…"
    return ""


def _first_match(rules: tuple[tuple[str, str], ...], text: str) -> str | None:
    for pattern, reason in rules:
        match = _compiled(pattern).search(text)
        if match:
            return reason.format(*match.groups())
    return None


def classify(returncode: int, stdout: str, stderr: str) -> LiveResult:
    """What one finished claude run says about the login.

    Success only when it exits 0 and prints exactly AUTH_OK. A run that
    exited 0 has made an inference, so whatever it printed is never AUTH.
    Outage signs win over auth signs: a wrong restore can break a login,
    a missed one costs only one more run.
    """
    if returncode == 0 and stdout.strip() == EXPECTED:
        return LiveResult(Verdict.OK, "claude answered AUTH_OK")
    output = f"{stdout}\n{stderr}"
    shown = excerpt(stdout) or excerpt(stderr)
    said = f" (claude said: {shown})" if shown else ""
    if returncode == 0:
        return LiveResult(Verdict.UNEXPECTED, f"claude answered something other than {EXPECTED}{said}")
    if returncode < 0:
        return LiveResult(Verdict.UNEXPECTED, f"claude was killed by signal {-returncode}{said}")
    refreshing = _first_match(REFRESHING_RULES, output)
    if refreshing:
        return LiveResult(Verdict.REFRESHING, f"{refreshing}{said}")
    outage = _first_match(OUTAGE_RULES, output)
    if outage:
        return LiveResult(Verdict.OUTAGE, f"outage: {outage}{said}")
    policy = _first_match(POLICY_RULES, output)
    if policy:
        return LiveResult(Verdict.UNEXPECTED, f"{policy}{said}")
    auth = _first_match(AUTH_RULES, output)
    if auth:
        return LiveResult(Verdict.AUTH, f"{auth}{said}")
    return LiveResult(Verdict.UNEXPECTED, f"claude exited {returncode} with unexpected output{said or ' (none)'}")


def run(model: str, env: Mapping[str, str], timeout: float, cwd: str | None = None) -> LiveResult:
    """Run the live check once and classify it."""
    try:
        process = subprocess.Popen(command(model), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True, close_fds=True)
    except FileNotFoundError:
        return LiveResult(Verdict.UNEXPECTED, "claude was not found on PATH")
    except OSError as exc:
        return LiveResult(Verdict.UNEXPECTED, f"claude could not be started: {exc.strerror or type(exc).__name__}")
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        _reap(process)
        return LiveResult(Verdict.TIMEOUT, f"timeout: claude gave no answer within {timeout:g} s (killed)")
    except BaseException:
        _kill_group(process)
        _reap(process)
        raise
    return classify(process.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


def _reap(process: subprocess.Popen[bytes]) -> None:
    try:
        process.communicate(timeout=10)
    except subprocess.TimeoutExpired:  # a descendant left the group and holds the pipes
        process.kill()
        process.wait()
