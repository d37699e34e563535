"""Unit tests of `claude-auth sync`'s pure parts: no Vault, no real claude.

Classification of recorded real claude 2.1.197 outputs, environment cleaning,
the credentials merge and its atomic write, the backup's compare/merge/CAS
loop against a fake store, the status log's rotation and lock, settings. A
stub `claude` shell script stands in where a process is needed.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pytest

from reconcile.sync import backup, credentials, livecheck, settings, statuslog
from reconcile.sync.livecheck import Verdict
from reconcile.vault.values import CasConflict, KvRawSecret
from tests.conftest import assert_no_secrets

REPO = Path(__file__).resolve().parent.parent
FUTURE_MS = 1_900_000_000_000


def oauth(access: str = "sk-ant-oat01-access-aaaaaaaaaaaaaaaa", refresh: str = "sk-ant-ort01-refresh-bbbbbbbbbbbb",
          expires: Any = FUTURE_MS) -> dict[str, Any]:
    return {"accessToken": access, "refreshToken": refresh, "expiresAt": expires,
            "scopes": ["user:inference", "user:profile"], "subscriptionType": "enterprise"}


# --- live check: classification of real outputs ------------------------------------------------

# (exit status, stdout, stderr, verdict, a phrase the reason must contain)
CLASSIFICATION_TABLE = [
    # Seen from the real claude 2.1.197 against the loopback Messages API stand-in:
    (0, "AUTH_OK\n", "", Verdict.OK, "AUTH_OK"),
    (1, "Failed to authenticate. API Error: 401 Invalid bearer token\n", "", Verdict.AUTH, "HTTP 401"),
    (1, "API Error: 500 Internal server error. This is a server-side issue, usually temporary \u2014 try again in a "
        "moment. If it persists, check your inference gateway (127.0.0.1:34145).\n", "", Verdict.OUTAGE, "HTTP 500"),
    (1, "API Error: Unable to connect to API (ConnectionRefused)\n", "", Verdict.OUTAGE, "connect"),
    (1, "Not logged in \u00b7 Please run /login\n", "", Verdict.AUTH, "not logged in"),
    # Messages of the same build (strings of its error mapping), not all reproducible on loopback:
    (1, "Failed to authenticate. API Error: 403 {\"type\":\"error\",\"error\":{\"type\":\"permission_error\"}}\n", "",
     Verdict.AUTH, "HTTP 403"),
    (1, "Please run /login \u00b7 API Error: 401 {\"type\":\"error\",\"error\":{\"type\":\"authentication_error\"}}",
     "", Verdict.AUTH, "HTTP 401"),
    (1, "OAuth token revoked \u00b7 Please run /login\n", "", Verdict.AUTH, "revoked"),
    (1, "Your account does not have access to Claude. Please login again or contact your administrator.\n", "",
     Verdict.AUTH, "login"),
    (1, "API Error: 529 {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n",
     "", Verdict.OUTAGE, "HTTP 529"),
    (1, "Repeated 529 Overloaded errors\n", "", Verdict.OUTAGE, "overloaded"),
    (1, "API Error: 429 {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\"}}\n", "", Verdict.OUTAGE, "429"),
    (1, "API Error: Request timed out. Check your internet connection and proxy settings\n", "",
     Verdict.OUTAGE, "timed out"),
    (1, "API Error: Unable to connect to API: SSL certificate has expired\n", "", Verdict.OUTAGE, "connect"),
    (1, "API Error: Connection error.\n", "", Verdict.OUTAGE, "network"),
    (1, "Authentication error \u00b7 This may be a temporary network issue, please try again\n", "",
     Verdict.OUTAGE, "outage"),
    (1, "API Error: 503 upstream connect error\n", "", Verdict.OUTAGE, "HTTP 503"),
    (1, "Your organization has disabled Claude subscription access for Claude Code \u00b7 Use an Anthropic API key "
        "instead, or ask your admin to enable access\n", "", Verdict.UNEXPECTED, "organization"),
    (1, "Credit balance is too low\n", "", Verdict.UNEXPECTED, "usage"),
    # Seen from the real claude 2.1.332 (issue 22): new wording, and a refresh lock held by another process.
    (1, "API Error: Connection refused \u2014 a firewall or proxy may be blocking it (ECONNREFUSED)\n", "",
     Verdict.OUTAGE, "ECONNREFUSED"),
    (1, "Failed to refresh OAuth token: another Claude Code process is refreshing it or exited mid-refresh\n", "",
     Verdict.REFRESHING, "refresh lock held"),
    (1, "API Error: OAuth access token could not be refreshed: another Claude Code process is holding the "
        "refresh lock\n", "", Verdict.REFRESHING, "refresh lock held"),
    # Every network error code of either version, in a sentence the classifier has never seen:
    *[(1, f"API Error: something new went wrong ({code})\n", "", Verdict.OUTAGE, code)
      for code in livecheck.OUTAGE_CODES],
    # Unexpected shapes:
    (0, "Sure! AUTH_OK\n", "", Verdict.UNEXPECTED, "something other"),
    (0, "auth_ok\n", "", Verdict.UNEXPECTED, "something other"),
    (0, "", "", Verdict.UNEXPECTED, "something other"),
    (1, "", "", Verdict.UNEXPECTED, "exited 1"),
    (1, "API Error: something new went wrong (EWHATEVER)\n", "", Verdict.UNEXPECTED, "unexpected output"),
    (2, "error: unknown option '--disable-slash-commands'\n", "", Verdict.UNEXPECTED, "unknown option"),
    (-9, "", "", Verdict.UNEXPECTED, "signal 9"),
    (0, "  AUTH_OK  \n\n", "", Verdict.OK, "AUTH_OK"),
    (1, "", "Failed to authenticate. API Error: 401 Invalid bearer token\n", Verdict.AUTH, "HTTP 401"),
    # A run that exited 0 made an inference: never AUTH, whatever it printed.
    (0, "Failed to authenticate\n", "", Verdict.UNEXPECTED, "something other"),
]


@pytest.mark.parametrize("code,stdout,stderr,verdict,phrase", CLASSIFICATION_TABLE)
def test_classification_of_claude_output(code: int, stdout: str, stderr: str, verdict: Verdict,
                                         phrase: str) -> None:
    result = livecheck.classify(code, stdout, stderr)
    assert result.verdict is verdict, result.reason
    assert phrase.lower() in result.reason.lower()
    assert "\n" not in result.reason


def test_excerpt_cuts_token_like_text() -> None:
    token = "sk-ant-oat01-" + "Q" * 40
    result = livecheck.classify(1, f"Failed to authenticate. API Error: 401 bad token {token}\n", "")
    assert result.verdict is Verdict.AUTH
    assert_no_secrets([result.reason], [token, "Q" * 24])


def test_excerpt_is_short_and_one_line() -> None:
    text = "API Error: 500 " + "word " * 200 + "\nsecond line"
    result = livecheck.classify(1, text, "")
    assert len(result.reason) < 300
    assert "second line" not in result.reason


def test_command_is_exact() -> None:
    assert livecheck.command("haiku") == [
        "claude", "-p", "Reply with exactly AUTH_OK and nothing else.", "--model", "haiku", "--max-turns", "1",
        "--no-session-persistence", "--tools", "", "--disable-slash-commands", "--setting-sources", ""]


def test_child_environment_drops_overriding_credentials_only() -> None:
    environ = {"CLAUDE_CODE_OAUTH_TOKEN": "env-oauth-secret", "ANTHROPIC_API_KEY": "sk-ant-api-secret",
               "ANTHROPIC_AUTH_TOKEN": "auth-token-secret", "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
               "ANTHROPIC_MODEL": "haiku", "HTTPS_PROXY": "http://proxy:3128", "PATH": "/usr/bin", "HOME": "/home/a",
               "VAULT_TOKEN": "hvs.admin-secret", "VAULT_ADDR": "http://127.0.0.1:8200", "BAO_TOKEN": "s.admin"}
    env, removed = livecheck.child_environment(environ)  # the Vault ones silently: they are ours, not claude's
    assert removed == ["CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"]
    assert env == {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9", "ANTHROPIC_MODEL": "haiku",
                   "HTTPS_PROXY": "http://proxy:3128", "PATH": "/usr/bin", "HOME": "/home/a",
                   "CLAUDE_CODE_MAX_RETRIES": "0", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    assert environ["CLAUDE_CODE_OAUTH_TOKEN"] == "env-oauth-secret"  # the caller's mapping is not changed


def test_child_environment_drops_variables_that_switch_the_login_or_provider() -> None:
    # claude reads its login from $CLAUDE_SECURESTORAGE_CONFIG_DIR, else $CLAUDE_CONFIG_DIR, else
    # ~/.claude; these others switch the credential or the provider. Each would make the check
    # prove another login than the ~/.claude one that the sync backs up.
    switching = {"CLAUDE_SECURESTORAGE_CONFIG_DIR": "/elsewhere/a", "CLAUDE_CONFIG_DIR": "/elsewhere/b",
                 "CLAUDE_CODE_USE_BEDROCK": "1", "CLAUDE_CODE_USE_VERTEX": "1", "CLAUDE_CODE_USE_FOUNDRY": "1",
                 # the CLI's own provider lists, 2.1.197 and 2.1.332 (issue 22):
                 "CLAUDE_CODE_USE_ANTHROPIC_AWS": "1", "CLAUDE_CODE_USE_MANTLE": "1", "CLAUDE_CODE_USE_GATEWAY": "1",
                 "CLAUDE_CODE_USE_ANTHROPIC_GOOGLE_CLOUD": "1", "CLAUDE_CODE_PROVIDER_MANAGED_BY_HOST": "1",
                 "CLAUDE_CODE_OAUTH_REFRESH_TOKEN": "sk-ant-ort01-env-refresh-secret",
                 "CLAUDE_CODE_SESSION_ACCESS_TOKEN": "sk-ant-oat01-env-session-secret"}
    env, removed = livecheck.child_environment({**switching, "CLAUDE_CODE_ENTRYPOINT": "cli", "PATH": "/usr/bin"})
    assert sorted(removed) == sorted(switching)
    assert env == {"CLAUDE_CODE_ENTRYPOINT": "cli", "PATH": "/usr/bin", "CLAUDE_CODE_MAX_RETRIES": "0",
                   "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    assert set(switching) <= set(livecheck.OVERRIDING_VARIABLES)
    for name in ("CLAUDE_CONFIG_DIR", "CLAUDE_SECURESTORAGE_CONFIG_DIR"):
        assert "not the ~/.claude login this sync backs up" in livecheck.why_removed(name)
    assert "another provider" in livecheck.why_removed("CLAUDE_CODE_USE_VERTEX")
    assert livecheck.why_removed("CLAUDE_CODE_SESSION_ACCESS_TOKEN") == "it would override this user's own login"


def test_removed_variables_are_warned_and_only_credentials_are_redacted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from reconcile.sync import flow

    environ = {"CLAUDE_CONFIG_DIR": "/elsewhere/claude-config", "CLAUDE_CODE_USE_BEDROCK": "1",
               "CLAUDE_CODE_OAUTH_REFRESH_TOKEN": "sk-ant-ort01-env-refresh-secret"}
    redact = statuslog.Redactor()
    reporter = statuslog.Reporter("alice", None, redact, None)
    sync_settings = settings.SyncSettings(user="alice", home=tmp_path, vault_addr="http://127.0.0.1:9")
    env = flow._Steps(sync_settings, environ, reporter, redact).child_environment()
    out = capsys.readouterr().out
    assert env == {"CLAUDE_CODE_MAX_RETRIES": "0", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    assert out.splitlines() == [
        "WARN alice: CLAUDE_CODE_OAUTH_REFRESH_TOKEN is set; not passed to claude "
        "(it would override this user's own login)",
        "WARN alice: CLAUDE_CONFIG_DIR is set; not passed to claude "
        "(claude would read its login from that folder, not the ~/.claude login this sync backs up)",
        "WARN alice: CLAUDE_CODE_USE_BEDROCK is set; not passed to claude "
        "(claude would use another provider, not this user's own login)"]
    assert redact("x sk-ant-ort01-env-refresh-secret /elsewhere/claude-config") == \
        "x <redacted> /elsewhere/claude-config"


def test_child_environment_keeps_an_explicit_retry_setting() -> None:
    env, removed = livecheck.child_environment({"CLAUDE_CODE_MAX_RETRIES": "3",
                                                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "0"})
    # The retry setting is the person's to choose; nonessential traffic is always off for a probe.
    assert env == {"CLAUDE_CODE_MAX_RETRIES": "3", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    assert removed == []


# --- live check: running a stub claude ----------------------------------------------------------


def stub(folder: Path, body: str) -> dict[str, str]:
    """A `claude` shell script in `folder`; returns an environment whose PATH finds it first."""
    folder.mkdir(exist_ok=True)
    script = folder / "claude"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return {"PATH": f"{folder}:/usr/bin:/bin", "HOME": str(folder)}


def test_run_ok_with_stub(tmp_path: Path) -> None:
    env = stub(tmp_path / "bin", "echo AUTH_OK\n")
    assert livecheck.run("haiku", env, timeout=10).verdict is Verdict.OK


def test_run_passes_argv_env_and_stdin_as_specified(tmp_path: Path) -> None:
    record = tmp_path / "record"
    env = stub(tmp_path / "bin", f'''
for a in "$@"; do printf '[%s]\\n' "$a"; done > {record}.argv
env > {record}.env
cat > {record}.stdin
pwd > {record}.cwd
echo AUTH_OK
''')
    environ = dict(env, CLAUDE_CODE_OAUTH_TOKEN="env-oauth-secret-123", ANTHROPIC_BASE_URL="http://127.0.0.1:1")
    child_env, _ = livecheck.child_environment(environ)
    result = livecheck.run("sonnet", child_env, timeout=10, cwd=str(tmp_path))
    assert result.verdict is Verdict.OK
    argv = Path(f"{record}.argv").read_text().splitlines()
    assert argv == ["[-p]", "[Reply with exactly AUTH_OK and nothing else.]", "[--model]", "[sonnet]",
                    "[--max-turns]", "[1]", "[--no-session-persistence]", "[--tools]", "[]",
                    "[--disable-slash-commands]", "[--setting-sources]", "[]"]
    child = dict(line.split("=", 1) for line in Path(f"{record}.env").read_text().splitlines() if "=" in line)
    assert "CLAUDE_CODE_OAUTH_TOKEN" not in child
    assert child["CLAUDE_CODE_MAX_RETRIES"] == "0"
    assert child["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:1"
    assert Path(f"{record}.stdin").read_bytes() == b""  # stdin is /dev/null
    assert Path(f"{record}.cwd").read_text().strip() == str(tmp_path)


def test_run_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    env = stub(tmp_path / "bin", f"sleep 60 &\necho $! > {pidfile}\nwait\n")
    started = time.monotonic()
    result = livecheck.run("haiku", env, timeout=1)
    assert result.verdict is Verdict.TIMEOUT
    assert "timeout" in result.reason
    assert time.monotonic() - started < 15
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        # a zombie reparented to init counts as gone
        try:
            if Path(f"/proc/{grandchild}/stat").read_text().split()[2] == "Z":
                break
        except OSError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the grandchild of the timed-out claude survived")


def test_run_without_claude_on_path(tmp_path: Path) -> None:
    result = livecheck.run("haiku", {"PATH": str(tmp_path)}, timeout=5)
    assert result.verdict is Verdict.UNEXPECTED
    assert "not found on PATH" in result.reason


# --- credentials ------------------------------------------------------------------------------------


@pytest.mark.parametrize("obj,problem", [
    (oauth(), None),
    (oauth(expires=1.9e12), None),
    ({**oauth(), "extra": {"nested": True}}, None),
    ([], "not a JSON object"),
    ({"refreshToken": "r", "expiresAt": 1}, "accessToken"),
    (oauth(access=""), "accessToken"),
    (oauth(access=123), "accessToken"),  # type: ignore[arg-type]
    (oauth(refresh=""), "refreshToken"),
    ({"accessToken": "a", "expiresAt": 1}, "refreshToken"),
    (oauth(expires="1900000000000"), "expiresAt"),
    (oauth(expires=True), "expiresAt"),
    (oauth(expires=None), "expiresAt"),
    (oauth(expires=float("nan")), "expiresAt"),
    ({"accessToken": "a", "refreshToken": "r"}, "expiresAt"),
])
def test_oauth_shape(obj: Any, problem: str | None) -> None:
    found = credentials.oauth_problem(obj)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


@pytest.mark.parametrize("raw,phrase", [
    (b'{"claudeAiOauth": {"accessToken": "sk-ant-oat01-SECRETSECRET", ', "not valid JSON"),
    (b"not json at all sk-ant-oat01-SECRETSECRET", "not valid JSON"),
    (b'["sk-ant-oat01-SECRETSECRET"]', "not a JSON object"),
    # (A claudeAiOauth object of a broken shape is a broken login, restored over: below.)
    (b'{"claudeAiOauth": "sk-ant-oat01-SECRETSECRET"}', "not a JSON object"),
    (b"\xff\xfe sk-ant-oat01-SECRETSECRET", "UTF-8"),
])
def test_corrupt_credentials_are_refused_without_quoting_them(tmp_path: Path, raw: bytes, phrase: str) -> None:
    path = tmp_path / ".credentials.json"
    path.write_bytes(raw)
    with pytest.raises(credentials.CredentialsError) as caught:
        credentials.read(path)
    assert phrase in str(caught.value)
    assert_no_secrets([str(caught.value), repr(caught.value)], ["sk-ant-oat01-SECRETSECRET"])
    with pytest.raises(credentials.CredentialsError):
        credentials.replace_oauth(path, oauth())
    assert path.read_bytes() == raw  # never overwritten


NOW_MS = 1_800_000_000_000
HEALTHY = {"accessToken": "sk-ant-oat01-a", "refreshToken": "sk-ant-ort01-r", "expiresAt": NOW_MS + 3_600_000,
           "scopes": ["user:inference", "user:profile"], "subscriptionType": "max"}


@pytest.mark.parametrize(("oauth_object", "phrase"), [
    # anthropics/claude-code #76561: the losing refresh racer's logged-out stub
    ({"accessToken": "", "refreshToken": "", "expiresAt": 0, "scopes": [], "subscriptionType": None},
     "accessToken is missing or empty"),
    # #85262: a refresh rewrote the file without expiresAt and scopes
    ({k: v for k, v in HEALTHY.items() if k not in ("expiresAt", "scopes")}, "expiresAt"),
    ({k: v for k, v in HEALTHY.items() if k != "scopes"}, "scopes is missing"),
    ({**HEALTHY, "scopes": ["user:profile"]}, "lacks user:inference"),
    ({**HEALTHY, "expiresAt": 0}, "expiresAt is 0"),
    ({**HEALTHY, "expiresAt": "tomorrow"}, "expiresAt"),
    # #83464: tokens blanked while the refresh token's own expiry still lay ahead
    ({**HEALTHY, "accessToken": "", "refreshTokenExpiresAt": NOW_MS + 86_400_000}, "accessToken"),
    ({**HEALTHY, "refreshToken": ""}, "refreshToken is missing or empty"),
    ({**HEALTHY, "refreshToken": 7}, "refreshToken is missing or empty"),
    # no refresh token (a setup token's shape) and an expiry in the past: nothing can renew it
    ({k: v for k, v in HEALTHY.items() if k != "refreshToken"} | {"expiresAt": NOW_MS - 1}, "in the past"),
    ({**HEALTHY, "refreshToken": None, "expiresAt": NOW_MS - 1}, "in the past"),
])
def test_each_broken_shape_is_a_broken_login_never_a_backup(tmp_path: Path, oauth_object: dict[str, Any],
                                                            phrase: str) -> None:
    path = tmp_path / ".credentials.json"
    path.write_text(json.dumps({"claudeAiOauth": oauth_object, "mcpOAuth": {"kept": True}}))
    local = credentials.read(path)  # a broken login is read, not refused as a corrupt file
    assert local.oauth == oauth_object
    problem = local.broken(NOW_MS)
    assert problem is not None and phrase in problem
    assert credentials.oauth_problem(oauth_object) is not None  # never a backup either
    assert_no_secrets([problem], ["sk-ant-oat01-a", "sk-ant-ort01-r"])


@pytest.mark.parametrize("oauth_object", [
    HEALTHY,
    {**HEALTHY, "expiresAt": NOW_MS - 1},  # expired, but Claude refreshes it
    {"accessToken": "sk-ant-oat01-s", "expiresAt": NOW_MS + 1, "scopes": ["user:inference"]},  # a setup token
])
def test_healthy_shapes_are_not_broken(oauth_object: dict[str, Any]) -> None:
    assert credentials.local_oauth_problem(oauth_object, NOW_MS) is None


def test_missing_file_is_no_login(tmp_path: Path) -> None:
    local = credentials.read(tmp_path / "none.json")
    assert not local.exists and local.oauth is None and dict(local.document) == {}


def test_document_without_oauth_is_no_login(tmp_path: Path) -> None:
    path = tmp_path / ".credentials.json"
    path.write_text('{"mcpOAuth": {"srv": {"accessToken": "x"}}}')
    assert credentials.read(path).oauth is None


def test_merge_keeps_every_other_key_and_their_order() -> None:
    document: dict[str, Any] = {"first": 1, "claudeAiOauth": oauth(access="old-access-token"), "mcpOAuth": {"srv": {"t": "m"}},
                "unknownFutureKey": [1, 2.5, None, {"deep": "x"}]}
    result = credentials.merged(document, oauth(access="new-access-token"))
    assert list(result) == ["first", "claudeAiOauth", "mcpOAuth", "unknownFutureKey"]
    assert result["claudeAiOauth"]["accessToken"] == "new-access-token"
    assert {k: v for k, v in result.items() if k != "claudeAiOauth"} == \
        {k: v for k, v in document.items() if k != "claudeAiOauth"}
    assert document["claudeAiOauth"]["accessToken"] == "old-access-token"


def test_replace_is_atomic_private_and_keeps_the_previous(tmp_path: Path) -> None:
    path = tmp_path / ".credentials.json"
    before = {"claudeAiOauth": oauth(access="old-access-token"), "mcpOAuth": {"srv": {"accessToken": "mcp"}},
              "z": 1.5e300}
    path.write_text(json.dumps(before, indent=2))
    path.chmod(0o644)
    kept: list[Mapping[str, Any]] = []
    replaced = credentials.replace_oauth(path, oauth(access="new-access-token"), keep=kept.append)
    after = json.loads(path.read_text())
    assert after["claudeAiOauth"] == oauth(access="new-access-token")
    assert after["mcpOAuth"] == before["mcpOAuth"] and after["z"] == before["z"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert kept == [before["claudeAiOauth"]]
    assert replaced.oauth == before["claudeAiOauth"]
    assert [p.name for p in tmp_path.iterdir()] == [".credentials.json"]  # no temp file left


def test_replace_merges_again_when_the_file_changes_underneath(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / ".credentials.json"
    path.write_text(json.dumps({"claudeAiOauth": oauth(access="old-access-token")}))
    real_write_temp = credentials._write_temp
    calls: list[Path] = []

    def racing_write_temp(target: Path, data: bytes) -> Path:
        tmp = real_write_temp(target, data)
        if not calls:  # another program (claude adding an MCP login) writes meanwhile
            path.write_text(json.dumps({"claudeAiOauth": oauth(access="old-access-token"),
                                        "mcpOAuth": {"added": {"accessToken": "meanwhile"}}}))
        calls.append(tmp)
        return tmp

    monkeypatch.setattr(credentials, "_write_temp", racing_write_temp)
    credentials.replace_oauth(path, oauth(access="new-access-token"))
    after = json.loads(path.read_text())
    assert len(calls) == 2
    assert after["mcpOAuth"] == {"added": {"accessToken": "meanwhile"}}
    assert after["claudeAiOauth"]["accessToken"] == "new-access-token"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".credentials.json"]


def test_replace_gives_up_when_the_file_never_settles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / ".credentials.json"
    path.write_text(json.dumps({"claudeAiOauth": oauth()}))
    real_write_temp = credentials._write_temp
    counter = iter(range(100))

    def always_racing(target: Path, data: bytes) -> Path:
        tmp = real_write_temp(target, data)
        path.write_text(json.dumps({"claudeAiOauth": oauth(), "n": next(counter)}))
        return tmp

    monkeypatch.setattr(credentials, "_write_temp", always_racing)
    with pytest.raises(credentials.CredentialsError, match="kept changing"):
        credentials.replace_oauth(path, oauth(access="new-access-token"), attempts=3)
    assert json.loads(path.read_text())["claudeAiOauth"] == oauth()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".credentials.json"]


def test_replace_creates_a_wiped_file(tmp_path: Path) -> None:
    path = tmp_path / ".claude" / ".credentials.json"
    credentials.replace_oauth(path, oauth())
    assert json.loads(path.read_text()) == {"claudeAiOauth": oauth()}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_keep_previous_is_private_and_keeps_the_last_three(tmp_path: Path) -> None:
    state = tmp_path / "state"
    made = []
    for n in range(5):
        made.append(credentials.keep_previous(state, oauth(access=f"access-number-{n}"), f"2025010{n}T000000Z"))
        time.sleep(0.01)
    left = sorted(p.name for p in state.iterdir())
    assert left == [p.name for p in made[2:]]
    for p in made[2:]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert json.loads(made[-1].read_text()) == {"claudeAiOauth": oauth(access="access-number-4")}


def test_keep_previous_never_overwrites_a_copy_of_the_same_second(tmp_path: Path) -> None:
    first = credentials.keep_previous(tmp_path, oauth(access="first-access-tok"), "20250101T000000Z")
    second = credentials.keep_previous(tmp_path, oauth(access="second-access-tok"), "20250101T000000Z")
    assert first != second
    assert json.loads(first.read_text())["claudeAiOauth"]["accessToken"] == "first-access-tok"


# --- backup ------------------------------------------------------------------------------------------


@dataclass
class FakeKv:
    """An in-memory KV v2 path with check-and-set, and a scripted number of conflicts.

    It keeps each value as JSON text, as Vault.kv_read_raw hands it over; `data`
    is set and read as decoded values for readable tests.
    """

    data: dict[str, Any] | None = None
    version: int = 0
    conflicts: int = 0
    sibling_writes: int = 0
    reads: int = 0
    writes: int = 0
    raw: dict[str, bytes] | None = None

    def __post_init__(self) -> None:
        if self.data is not None and self.raw is None:
            self.raw = {key: json.dumps(value).encode() for key, value in self.data.items()}

    def decoded(self) -> dict[str, Any]:
        return {key: json.loads(value) for key, value in (self.raw or {}).items()}

    def kv_read_raw(self, mount: str, path: str, *, consistent: bool = False) -> KvRawSecret | None:
        self.reads += 1
        if self.raw is None:
            return None
        return KvRawSecret(version=self.version, fields=dict(self.raw))

    def kv_write_cas_raw(self, mount: str, path: str, fields: Mapping[str, bytes], cas: int) -> int:
        if self.conflicts:
            # Another tool writes its own key between our read and our write.
            self.conflicts -= 1
            self.sibling_writes += 1
            self.raw = {**(self.raw or {}), "vaultwarden_master_password": f'"pw-{self.sibling_writes}"'.encode()}
            self.version += 1
        if cas != self.version:
            raise CasConflict("check-and-set conflict (write)")
        self.writes += 1
        self.raw = dict(fields)
        self.data = self.decoded()
        self.version += 1
        return self.version


def test_backup_first_write_creates_the_path_with_cas_zero() -> None:
    kv = FakeKv()
    result = backup.back_up(kv, "secret", "p/alice", oauth(), "2025-01-01T00:00:00Z")
    assert result == backup.BackupResult(written=True, version=1, attempts=1)
    assert kv.data == {"claude_ai_oauth_json": backup.encode_oauth(oauth()),
                       "credential_expires_at_ms": FUTURE_MS, "backed_up_at": "2025-01-01T00:00:00Z"}
    assert json.loads(kv.data["claude_ai_oauth_json"]) == oauth()
    assert kv.data["claude_ai_oauth_json"] == json.dumps(oauth(), sort_keys=True, separators=(",", ":"))


def test_backup_keeps_every_other_key() -> None:
    kv = FakeKv(data={"vaultwarden_master_password": "hunter2-long-password", "other": {"n": 1}}, version=7)
    result = backup.back_up(kv, "secret", "p/alice", oauth(), "2025-01-01T00:00:00Z")
    assert result.written and result.version == 8
    assert kv.data is not None
    assert kv.data["vaultwarden_master_password"] == "hunter2-long-password"
    assert kv.data["other"] == {"n": 1}


def test_backup_writes_nothing_when_equal_even_in_old_tool_format() -> None:
    old_tool_text = json.dumps(oauth(), indent=2)  # jq-style formatting, other key order
    kv = FakeKv(data={"claude_ai_oauth_json": old_tool_text, "credential_expires_at_ms": str(FUTURE_MS),
                      "backed_up_at": "2024-01-01T00:00:00Z", "sibling": "x"}, version=3)
    result = backup.back_up(kv, "secret", "p/alice", oauth(), "2025-01-01T00:00:00Z")
    assert result == backup.BackupResult(written=False, version=3, attempts=1)
    assert kv.writes == 0 and kv.reads == 1


def test_backup_retries_cas_conflicts_and_keeps_the_concurrent_write() -> None:
    kv = FakeKv(data={"vaultwarden_master_password": "pw-0"}, version=1, conflicts=3)
    pauses: list[float] = []
    result = backup.back_up(kv, "secret", "p/alice", oauth(), "2025-01-01T00:00:00Z", sleep=pauses.append)
    assert result.written and result.attempts == 4
    assert kv.data is not None and kv.data["vaultwarden_master_password"] == "pw-3"
    assert kv.raw is not None and backup.decode_stored_oauth(kv.raw) == (oauth(), None)
    assert len(pauses) == 3 and all(0 < p <= 0.5 for p in pauses)


def test_backup_gives_up_after_bounded_conflicts() -> None:
    kv = FakeKv(data={}, version=1, conflicts=100)
    with pytest.raises(backup.BackupError, match="check-and-set"):
        backup.back_up(kv, "secret", "p/alice", oauth(), "t", attempts=4, sleep=lambda s: None)
    assert kv.writes == 0


def test_backup_on_a_deleted_latest_version_uses_that_version() -> None:
    kv = FakeKv(data={}, version=5)  # what kv_read_raw returns for a soft-deleted latest version
    result = backup.back_up(kv, "secret", "p/alice", oauth(), "t")
    assert result.written and result.version == 6


@pytest.mark.parametrize("data,usable,phrase", [
    ({"claude_ai_oauth_json": json.dumps(oauth())}, True, ""),
    ({"claude_ai_oauth_json": json.dumps(oauth(), indent=4), "credential_expires_at_ms": "1"}, True, ""),
    ({"claude_ai_oauth_json": oauth()}, True, ""),
    ({"vaultwarden_master_password": "x"}, False, "holds no claude_ai_oauth_json"),
    ({"claude_ai_oauth_json": "{not json"}, False, "is not usable JSON"),
    ({"claude_ai_oauth_json": json.dumps({"accessToken": "a"})}, False, "refreshToken"),
])
def test_latest_backup_is_validated(data: dict[str, Any], usable: bool, phrase: str) -> None:
    latest = backup.latest_backup(FakeKv(data=data, version=2), "secret", "p/alice")
    assert (latest.oauth is not None) is usable
    assert latest.version == 2
    if not usable:
        assert latest.problem and phrase in latest.problem


def test_latest_backup_of_a_new_path() -> None:
    latest = backup.latest_backup(FakeKv(), "secret", "p/alice")
    assert latest.oauth is None and latest.problem and "no backup" in latest.problem


# --- status lines, log, lock -------------------------------------------------------------------------


def test_status_line_format() -> None:
    assert statuslog.status_line(statuslog.Status.OK, "alice", "login works") == "OK alice: login works"
    assert statuslog.status_line(statuslog.Status.FAIL, "bob", "a\nb   c") == "FAIL bob: a b c"


def test_log_lines_carry_an_iso_utc_timestamp(tmp_path: Path) -> None:
    log = tmp_path / "sync.log"
    statuslog.append_log(log, ["OK alice: fine"], now=0)
    assert log.read_text() == "1970-01-01T00:00:00Z OK alice: fine\n"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_log_rotates_at_one_mib_keeping_one_old_file(tmp_path: Path) -> None:
    log = tmp_path / "sync.log"
    line = "OK alice: " + "x" * 1000
    for _ in range(1100):  # a little over 1 MiB
        statuslog.append_log(log, [line])
    assert log.stat().st_size <= statuslog.LOG_LIMIT_BYTES
    old = tmp_path / "sync.log.1"
    assert old.exists() and old.stat().st_size <= statuslog.LOG_LIMIT_BYTES
    first_generation = old.read_text()
    for _ in range(1100):
        statuslog.append_log(log, [line])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sync.log", "sync.log.1"]
    assert old.read_text() != first_generation or log.stat().st_size <= statuslog.LOG_LIMIT_BYTES
    total = log.stat().st_size + old.stat().st_size
    assert total <= 2 * statuslog.LOG_LIMIT_BYTES


def test_redactor_removes_known_secrets() -> None:
    redact = statuslog.Redactor()
    redact.add("sk-ant-oat01-abcdef", "hvs.vault-token-value", "abc", None)
    text = redact("x sk-ant-oat01-abcdef y hvs.vault-token-value z abc")
    assert text == "x <redacted> y <redacted> z abc"


def test_reporter_prints_warn_and_one_status_line(tmp_path: Path) -> None:
    import io

    out = io.StringIO()
    redact = statuslog.Redactor()
    redact.add("secret-value-123")
    reporter = statuslog.Reporter("alice", tmp_path / "sync.log", redact, out)
    reporter.warn("CLAUDE_CODE_OAUTH_TOKEN is set")
    reporter.finish(statuslog.Status.FAIL, "oops secret-value-123")
    assert out.getvalue() == "WARN alice: CLAUDE_CODE_OAUTH_TOKEN is set\nFAIL alice: oops <redacted>\n"
    logged = (tmp_path / "sync.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in logged] == out.getvalue().splitlines()


def test_lock_is_exclusive_and_not_waiting(tmp_path: Path) -> None:
    first = statuslog.Lock(tmp_path / "lock")
    second = statuslog.Lock(tmp_path / "lock")
    assert first.acquire()
    started = time.monotonic()
    assert not second.acquire()
    assert time.monotonic() - started < 1
    first.release()
    assert second.acquire()
    second.release()


# --- settings ------------------------------------------------------------------------------------------


def test_settings_defaults_match_the_roster_defaults() -> None:
    from reconcile.roster.values import SyncSettings as RosterSync, VaultSettings

    s = settings.load("alice", {"VAULT_ADDR": "http://127.0.0.1:8200", "HOME": "/home/alice"})
    vault_defaults, sync_defaults = VaultSettings(), RosterSync()
    assert (s.kv_mount, s.path_prefix, s.policy_prefix, s.model) == (
        vault_defaults.kv_mount, vault_defaults.path_prefix, vault_defaults.policy_prefix, sync_defaults.model)
    assert s.claude_timeout == 120
    assert s.kv_path == "workstation/claude-users/alice"
    assert s.policy_name == "workstation-claude-alice"
    assert s.expected_display_name == "token-devvm-claude-auth-alice"
    assert s.token_file == Path("/home/alice/.config/claude-auth-sync/vault-token")
    assert s.state_dir == Path("/home/alice/.local/state/claude-auth-sync")
    assert s.credentials_file == Path("/home/alice/.claude/.credentials.json")


def test_settings_from_environment() -> None:
    s = settings.load("bob", {"VAULT_ADDR": "https://v", "HOME": "/h", "CLAUDE_AUTH_KV_MOUNT": "kv/",
                              "CLAUDE_AUTH_PATH_PREFIX": "/team/claude/", "CLAUDE_AUTH_POLICY_PREFIX": "p-",
                              "CLAUDE_AUTH_MODEL": "sonnet", "CLAUDE_AUTH_CLAUDE_TIMEOUT": "30"})
    assert (s.kv_mount, s.kv_path, s.policy_name, s.model, s.claude_timeout) == (
        "kv", "team/claude/bob", "p-bob", "sonnet", 30.0)
    assert s.kv_display == "kv/data/team/claude/bob"


@pytest.mark.parametrize("environ,phrase", [
    ({}, "VAULT_ADDR is not set"),
    ({"VAULT_ADDR": "http://v", "CLAUDE_AUTH_CLAUDE_TIMEOUT": "soon"}, "CLAUDE_AUTH_CLAUDE_TIMEOUT"),
    ({"VAULT_ADDR": "http://v", "CLAUDE_AUTH_CLAUDE_TIMEOUT": "-1"}, "CLAUDE_AUTH_CLAUDE_TIMEOUT"),
])
def test_settings_errors(environ: dict[str, str], phrase: str) -> None:
    with pytest.raises(settings.SettingsError, match=phrase):
        settings.load("alice", {"HOME": "/h", **environ})


@pytest.mark.parametrize("user,ok", [("alice", True), ("a_b-1", True), ("_x", True), ("Alice", False),
                                     ("../etc", False), ("a/b", False), ("", False), ("a" * 33, False)])
def test_user_names(user: str, ok: bool) -> None:
    if ok:
        assert settings.check_user(user) == user
    else:
        with pytest.raises(settings.SettingsError):
            settings.check_user(user)


@pytest.mark.parametrize("name,shown", [
    ("token-devvm-claude-auth-alice", "token-devvm-claude-auth-alice"),
    ("token-devvm-claude-auth-a_b", "token-devvm-claude-auth-a-b"),  # seen on OpenBao 2.7.2
    ("token-devvm-claude-auth-bob-", "token-devvm-claude-auth-bob"),  # seen on OpenBao 2.7.2
    ("token-alice@x.com", "token-alice-x-com"),  # FACTS.md
])
def test_display_name_as_vault_stores_it(name: str, shown: str) -> None:
    from reconcile.common.identity import vault_display_name
    assert vault_display_name(name.removeprefix("token-")) == shown


# --- the sync command without Vault --------------------------------------------------------------


def run_sync(tmp_path: Path, extra_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "CLAUDE_AUTH_"))}
    env.update(HOME=str(tmp_path), **extra_env)
    return subprocess.run([sys.executable, "-m", "reconcile", "sync", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_missing_vault_addr_is_one_fail_line(tmp_path: Path) -> None:
    done = run_sync(tmp_path, {}, "--user", "alice")
    assert done.returncode == 1
    assert done.stdout == "FAIL alice: VAULT_ADDR is not set (the sync service must set it)\n"
    assert done.stderr == ""
    log = (tmp_path / ".local/state/claude-auth-sync/sync.log").read_text()
    assert log.endswith(" FAIL alice: VAULT_ADDR is not set (the sync service must set it)\n")


def test_bad_user_name_is_one_fail_line(tmp_path: Path) -> None:
    done = run_sync(tmp_path, {"VAULT_ADDR": "http://127.0.0.1:9"}, "--user", "../root")
    assert done.returncode == 1 and done.stdout.startswith("FAIL ../root: invalid user name")
    assert done.stderr == ""


def test_unreachable_vault_is_one_fail_line_and_the_token_never_shows(tmp_path: Path) -> None:
    token = "hvs.CAESIHunreachableTESTtoken0123456789"
    token_file = tmp_path / ".config/claude-auth-sync/vault-token"
    token_file.parent.mkdir(parents=True)
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    done = run_sync(tmp_path, {"VAULT_ADDR": "http://127.0.0.1:9"}, "--user", "alice")
    assert done.returncode == 1
    assert done.stdout.startswith("FAIL alice: Vault at VAULT_ADDR=http://127.0.0.1:9 is unreachable")
    assert done.stdout.count("\n") == 1 and done.stderr == ""
    assert_no_secrets([done.stdout, done.stderr, (tmp_path / ".local/state/claude-auth-sync/sync.log").read_text()],
                      [token])


def test_internal_error_shows_only_the_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from reconcile.sync import flow

    def explode(self: object) -> None:
        raise RuntimeError("boom with sk-ant-oat01-LEAKED-in-a-message")

    monkeypatch.setattr(flow._Steps, "execute", explode)
    environ = {"HOME": str(tmp_path), "VAULT_ADDR": "http://127.0.0.1:9"}
    outcome = flow.run("alice", environ)
    out = capsys.readouterr().out
    assert outcome.exit_code == 1
    assert out == "FAIL alice: internal error: RuntimeError\n"
    assert_no_secrets([out, (tmp_path / ".local/state/claude-auth-sync/sync.log").read_text()],
                      ["sk-ant-oat01-LEAKED-in-a-message"])


def test_ctrl_c_is_one_fail_line_and_releases_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from reconcile.sync import flow

    def interrupt(self: object, env: object) -> None:
        raise KeyboardInterrupt

    def execute(self: Any) -> Any:
        self.live_check({})

    monkeypatch.setattr(flow._Steps, "live_check", interrupt)
    monkeypatch.setattr(flow._Steps, "execute", execute)
    environ = {"HOME": str(tmp_path), "VAULT_ADDR": "http://127.0.0.1:9"}
    try:
        outcome = flow.run("alice", environ)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped flow.run")
    out = capsys.readouterr().out
    assert outcome.exit_code == 1 and outcome.status is statuslog.Status.FAIL
    assert out == "FAIL alice: interrupted\n"
    assert (tmp_path / ".local/state/claude-auth-sync/sync.log").read_text().endswith(" FAIL alice: interrupted\n")
    lock = statuslog.Lock(tmp_path / ".local/state/claude-auth-sync/lock")
    assert lock.acquire()  # released
    lock.release()


def test_sync_path_imports_neither_jsonschema_nor_jinja2_nor_yaml(tmp_path: Path) -> None:
    code = ("import sys, reconcile.cli\n"
            "status = reconcile.cli.main(['sync', '--user', 'alice'])\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('jsonschema', 'jinja2', 'yaml'))\n"
            "print('HEAVY', heavy, status, file=sys.stderr)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "CLAUDE_AUTH_"))}
    env.update(HOME=str(tmp_path), VAULT_ADDR="http://127.0.0.1:9")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert "HEAVY [] 1" in done.stderr, done.stderr


# --- bounded reading: files and JSON ------------------------------------------------------------------


def test_deeply_nested_credentials_are_corrupt_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / ".credentials.json"
    path.write_text('{"claudeAiOauth": ' + json.dumps(oauth()) + ', "other": ' + "[" * 3000 + "]" * 3000 + "}")
    with pytest.raises(credentials.CredentialsError, match="nested deeper than 100 levels"):
        credentials.read(path)


@pytest.mark.parametrize("text,problem", [
    ('{"a": [1, {"b": "x]}"}]}', None),
    ("[" * 100 + "]" * 100, None),
    ("[" * 101 + "]" * 101, "nested deeper than 100 levels"),
    ('{"a": "never ends}', "a string that never ends"),
    ('{"a": [1}', "mismatched bracket"),
    ('{"a": 1} x', "text after the JSON value"),
    ("[" * 3000, "nested deeper than 100 levels"),
])
def test_depth_scan(text: str, problem: str | None) -> None:
    from reconcile.common import boundedjson

    found = boundedjson.depth_problem(text.encode(), 100)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_object_members_are_byte_spans_of_undecoded_values() -> None:
    from reconcile.common import boundedjson

    nested = "[" * 5000 + "]" * 5000
    body = ('{"data": {"data": {"deep": ' + nested + ', "s": "a\\"}b", "n": -1.5e3, "t": true}, '
            '"metadata": {"version": 7}}}').encode()
    data = boundedjson.object_members(body, boundedjson.object_members(body)["data"][0])
    members = boundedjson.object_members(body, data["data"][0])
    assert {k: body[a:b] for k, (a, b) in members.items()} == {
        "deep": nested.encode(), "s": b'"a\\"}b"', "n": b"-1.5e3", "t": b"true"}
    assert boundedjson.loads(body[slice(*data["metadata"])]) == {"version": 7}
    with pytest.raises(boundedjson.JsonProblem, match="nested deeper"):
        boundedjson.loads(nested)


def test_safe_read_refuses_special_files_links_and_big_files_without_reading(tmp_path: Path) -> None:
    from reconcile.sync import safefile

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to("/dev/zero")
    big = tmp_path / "big"
    with open(big, "wb") as handle:
        handle.truncate(2 * 1024 * 1024)
    regular = tmp_path / "regular"
    regular.write_bytes(b"x" * 1024)
    with pytest.raises(safefile.UnsafeFile, match="^F: is a FIFO, not a regular file"):
        safefile.read_capped(fifo, 1024, "F")
    with pytest.raises(safefile.UnsafeFile, match="^L: is a symbolic link"):
        safefile.read_capped(link, 1024, "L")
    with pytest.raises(safefile.UnsafeFile, match="^L: is a character device"):
        safefile.read_capped(link, 1024, "L", follow_symlinks=True)
    with pytest.raises(safefile.UnsafeFile, match="^B: is 2.0 MiB, larger than the 1 MiB cap"):
        safefile.read_capped(big, 1024 * 1024, "B")
    found = safefile.read_capped(regular, 1024, "R")
    assert found is not None and found.data == b"x" * 1024
    with pytest.raises(safefile.UnsafeFile, match="is 1024 bytes, larger than the 1023 bytes cap"):
        safefile.read_capped(regular, 1023, "R")
    assert safefile.read_capped(tmp_path / "missing", 1024, "M") is None


class LaggingKv(FakeKv):
    """A store whose plain reads come from a standby one write behind; consistent reads from the
    active node. `consistent_reads` counts the latter (each costs sys/leader requests)."""

    def __init__(self, stale: dict[str, Any], current: dict[str, Any]) -> None:
        super().__init__(data=current, version=2)
        self.stale = {key: json.dumps(value).encode() for key, value in stale.items()}
        self.consistent_reads = 0

    def kv_read_raw(self, mount: str, path: str, *, consistent: bool = False) -> KvRawSecret | None:
        if consistent:
            self.consistent_reads += 1
            return super().kv_read_raw(mount, path)
        self.reads += 1
        return KvRawSecret(version=1, fields=dict(self.stale))


def test_a_backup_write_names_the_active_nodes_version_not_a_lagging_standbys() -> None:
    old = oauth(access="old")
    kv = LaggingKv(stale={"claude_ai_oauth_json": backup.encode_oauth(old)},
                   current={"claude_ai_oauth_json": backup.encode_oauth(old), "other_tool": "kept"})
    result = backup.back_up(kv, "secret", "p/alice", oauth(), "2025-01-01T00:00:00Z", sleep=lambda _: None)
    assert result == backup.BackupResult(written=True, version=3, attempts=1)  # no CAS round lost
    assert kv.consistent_reads == 1
    assert kv.data is not None and kv.data["other_tool"] == "kept"


def test_an_unchanged_backup_reads_once_from_any_node() -> None:
    kv = LaggingKv(stale={"claude_ai_oauth_json": backup.encode_oauth(oauth())},
                   current={"claude_ai_oauth_json": backup.encode_oauth(oauth())})
    result = backup.back_up(kv, "secret", "p/alice", oauth(), "2025-01-01T00:00:00Z")
    assert result.written is False and kv.writes == 0
    assert (kv.reads, kv.consistent_reads) == (1, 0)
