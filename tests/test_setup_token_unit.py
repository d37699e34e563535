"""Pure pieces of setup-token mode, table-driven with literal values."""

from __future__ import annotations

import pytest

from reconcile.common.loginmode import Login
from reconcile.sync import credentials
from reconcile.sync import setup_token as st
from reconcile.sync.livecheck import LiveResult, Verdict
from reconcile.sync.setup_token_sync import mode

GOOD = "sk-ant-oat01-" + "A1b2_-" * 8
REFRESHABLE = {"accessToken": "sk-ant-oat01-x", "refreshToken": "sk-ant-ort01-y", "expiresAt": 1, "scopes": []}
INSTALLED = {"accessToken": GOOD, "expiresAt": 1_900_000_000_000, "scopes": ["user:inference"]}


@pytest.mark.parametrize(("token", "problem"), [
    (GOOD, None),
    ("", "no token given"),
    ("sk-ant-api03-" + "a" * 40, "must start with sk-ant-oat01-"),
    ("sk-ant-oat01-" + "a" * 19, "at least 20"),
    ("sk-ant-oat01-" + "a" * 30 + " b", "at least 20"),
    ("sk-ant-oat01-" + "a" * 5000, "at least 20"),
])
def test_format_problem(token: str, problem: str | None) -> None:
    found = st.format_problem(token)
    assert (found is None) if problem is None else (found is not None and problem in found)
    if found:
        assert token[13:] not in found or not token[13:]  # never quotes the token


@pytest.mark.parametrize(("text", "date"), [
    ("2027-06-30", "2027-06-30"), ("2027-06-30T12:00:00Z", "2027-06-30"), ("2027-06-30T23:30:00-02:00", "2027-07-01"),
])
def test_parse_expiry(text: str, date: str) -> None:
    assert st.expiry_date(st.parse_expiry(text)) == date


@pytest.mark.parametrize("text", ["next year", "30/06/2027", "2027-13-01", ""])
def test_parse_expiry_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not an ISO date"):
        st.parse_expiry(text)


@pytest.mark.parametrize(("oauth", "expected"), [
    (INSTALLED, True),
    ({**INSTALLED, "subscriptionType": "enterprise"}, True),  # claude may add keys
    ({**INSTALLED, "expiresAt": 1}, False),
    ({**INSTALLED, "accessToken": GOOD + "x"}, False),
    ({**INSTALLED, "refreshToken": "r"}, False),
    ({**INSTALLED, "scopes": ["user:inference", "user:profile"]}, False),
    (None, False),
])
def test_is_installed(oauth: object, expected: bool) -> None:
    assert st.is_installed(oauth, GOOD, 1_900_000_000_000) is expected


@pytest.mark.parametrize(("configured", "local", "expected"), [
    (Login.OAUTH, INSTALLED, Login.OAUTH),           # the roster wins: a switch back
    (Login.SETUP_TOKEN, REFRESHABLE, Login.SETUP_TOKEN),
    (None, INSTALLED, Login.SETUP_TOKEN),            # a run by hand keeps what is installed
    (None, REFRESHABLE, Login.OAUTH),
    (None, None, Login.OAUTH),
])
def test_mode(configured: Login | None, local: object, expected: Login) -> None:
    assert mode(configured, local) is expected


@pytest.mark.parametrize(("obj", "local_ok", "backup_ok"), [
    (REFRESHABLE, False, False),                       # no user:inference scope: broken anywhere
    ({**REFRESHABLE, "scopes": ["user:inference"]}, True, True),
    (INSTALLED, True, False),                          # a setup token: fine locally, never a backup
    ({**INSTALLED, "expiresAt": 1}, False, False),     # expired, and nothing can refresh it
    ({"accessToken": "", "expiresAt": 1}, False, False),
    ({"accessToken": GOOD}, False, False),
    ({"accessToken": GOOD, "expiresAt": "soon"}, False, False),
])
def test_local_file_accepts_a_setup_token_and_a_backup_does_not(obj: dict, local_ok: bool, backup_ok: bool) -> None:
    assert (credentials.local_oauth_problem(obj) is None) is local_ok
    assert (credentials.oauth_problem(obj) is None) is backup_ok


@pytest.mark.parametrize(("data", "problem"), [
    ({}, "no setup token stored at p"),
    ({st.FIELD_TOKEN: "nope", st.FIELD_EXPIRES_AT_MS: 1}, "is not a setup token"),
    ({st.FIELD_TOKEN: GOOD}, "missing or not a number"),
    ({st.FIELD_TOKEN: GOOD, st.FIELD_EXPIRES_AT_MS: True}, "missing or not a number"),
])
def test_stored_token_problems(data: dict, problem: str) -> None:
    found = st.stored_token(data, 3, "p")
    assert isinstance(found, str) and problem in found and GOOD not in found


def test_stored_token() -> None:
    found = st.stored_token(st.store_fields(GOOD, "2026-01-01T00:00:00Z", 5), 3, "p")
    assert not isinstance(found, str)
    assert (found.token.reveal(), found.expires_at_ms, found.version) == (GOOD, 5, 3)
    assert GOOD not in repr(found)


@pytest.mark.parametrize(("reason", "line"), [
    ("the API rejected the login (HTTP 401) (claude said: x)", "setup token rejected (HTTP 401); "
     "run claude setup-token, then claude-auth setup-token"),
    ("claude is not logged in", "setup token rejected (authentication failed); "
     "run claude setup-token, then claude-auth setup-token"),
])
def test_rejected_reason(reason: str, line: str) -> None:
    assert st.rejected_reason(LiveResult(Verdict.AUTH, reason)) == line


# --- what standard input holds: the bare token, or all that claude setup-token printed ---------------

TOKEN = "sk-ant-oat01-" + "Ab3_-" * 18 + "AA"


def cli_output(lifetime: str, *, colour: bool = False, wrap: int | None = None) -> str:
    """What `claude setup-token` prints (both CLIs' wording), optionally coloured or wrapped."""
    token = TOKEN if wrap is None else "\n".join(TOKEN[i:i + wrap] for i in range(0, len(TOKEN), wrap))
    if colour:
        token = f"\x1b[33m{token}\x1b[39m"
    return ("\x1b[32m✓\x1b[39m Long-lived authentication token created\n\n"
            f"Your OAuth token (valid for {lifetime}):\n\n{token}\n\n"
            "Store this token securely. You won't be able to see it again.\n\n"
            "Use this token by setting: export CLAUDE_CODE_OAUTH_TOKEN=<token>\n")


@pytest.mark.parametrize(("text", "lifetime"), [
    (TOKEN, None),
    (f"  {TOKEN}\n", None),
    (cli_output("1 year"), 365 * 86_400),                       # 2.1.197 always; 2.1.332 at 365 days
    (cli_output("30 days", colour=True), 30 * 86_400),          # 2.1.332, from the server's expiresAt
    (cli_output("1 day"), 86_400),
    (cli_output("less than a day"), 43_200),
    (cli_output("90 days", wrap=40), 90 * 86_400),              # a token the terminal wrapped
    (cli_output("1 year") + TOKEN + "\n", 365 * 86_400),          # the same token twice is one token
])
def test_the_token_and_the_lifetime_claude_printed_are_read(text: str, lifetime: int | None) -> None:
    assert st.read_given(text) == st.Given(TOKEN, lifetime)


@pytest.mark.parametrize(("text", "problem"), [
    ("", "no token given on standard input"),
    ("Long-lived authentication token created\n", "not a setup token: it must start with"),
    (cli_output("1 year") + "sk-ant-oat01-" + "z" * 30 + "\n", "more than one setup token"),
    (cli_output("1 year").replace("1 year", "2 days") + cli_output("3 days"), "more than one lifetime"),
    ("sk-ant-oat01-short\n", "at least 20"),
])
def test_input_without_one_usable_token_is_refused_without_quoting_it(text: str, problem: str) -> None:
    found = st.read_given(text)
    assert isinstance(found, str) and problem in found
    assert "zzzz" not in found and "Ab3_" not in found


@pytest.mark.parametrize(("text", "complete"), [
    (TOKEN + "\n", True),                       # a bare token, then Enter
    ("Long-lived authentication token created\n", False),
    ("✓ Long-lived authentication token created\n\nYour OAuth token (valid for 1 year):\n\n", False),
    (cli_output("1 year").split("Store")[0].rstrip("\n") + "\n", False),  # the token line: more may follow
    (cli_output("1 year").split("Store")[0], True),                      # the empty line after it
    (cli_output("9 days", wrap=40).split("Store")[0], True),
    (TOKEN, False),                              # no Enter yet
])
def test_a_paste_at_the_terminal_is_over_once_the_token_is_followed_by_another_line(text: str,
                                                                                     complete: bool) -> None:
    assert st.given_complete(text) is complete


def test_the_expiry_comes_from_the_flag_then_from_claude_then_the_default() -> None:
    now = 1_800_000_000.0
    assert st.expiry(now, 5_000, 86_400) == (5_000, st.EXPIRY_GIVEN)
    assert st.expiry(now, None, 86_400) == (int(now * 1000) + 86_400_000, st.EXPIRY_FROM_CLAUDE)
    assert st.expiry(now, None, None) == (int(now * 1000) + 365 * st.DAY_MS, st.EXPIRY_DEFAULT)
