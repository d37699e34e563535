"""Pure pieces of setup-token mode, table-driven with literal values."""

from __future__ import annotations

import pytest

from reconcile.loginmode import Login
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
    (REFRESHABLE, True, True),
    (INSTALLED, True, False),                          # a setup token: fine locally, never a backup
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
