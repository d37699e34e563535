"""Setup-token mode end to end: `claude-auth setup-token` and `claude-auth sync` with
CLAUDE_AUTH_LOGIN=setup-token, against a real OpenBao and the real pinned claude CLI
(talking to the loopback Messages API stand-in, which accepts a token only once the
test says so). Every test searches all outputs, the sync log and every process
argument list for every token it used."""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import hvac
import pytest

from reconcile.cli import main as cli_main
from reconcile.commands import setup_token_cmd
from reconcile.sync import livecheck
from reconcile.sync import setup_token as st
from reconcile.common.templating import render
from tests.support.leaks import assert_no_secrets
from tests.support.messages_api import MessagesApiStandIn
from tests.support.openbao import OpenBaoServer
from tests.test_sync_real import (KV_MOUNT, POLICY_PREFIX, SIBLING, SyncUser, claude_on_path,  # noqa: F401
                                  make_user, mint_token, new_oauth, read_kv)

REPO = Path(__file__).resolve().parent.parent
DAY_MS = 86_400_000


def new_setup_token(tag: str = "") -> str:
    return f"sk-ant-oat01-{tag}{secrets.token_urlsafe(48)}"


class Spawned:
    """Every process the sync or the command starts: its argv, and whether a token went in its env."""

    def __init__(self) -> None:
        self.argv: list[list[str]] = []
        self.oauth_envs: list[dict[str, str]] = []


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> Spawned:
    record = Spawned()
    original = subprocess.Popen

    def popen(args: Any, *rest: Any, **kwargs: Any) -> Any:
        record.argv.append([str(a) for a in args])
        env = kwargs.get("env") or {}
        if "CLAUDE_CODE_OAUTH_TOKEN" in env:
            record.oauth_envs.append(dict(env))
        return original(args, *rest, **kwargs)

    monkeypatch.setattr(livecheck.subprocess, "Popen", popen)
    return record


@pytest.fixture
def person(tmp_path: Path, openbao: OpenBaoServer, root_client: hvac.Client, messages_api: MessagesApiStandIn,
           claude_on_path: Path, spawned: Spawned) -> Iterator[SyncUser]:  # noqa: F811
    someone = make_user(tmp_path, openbao.address, root_client, messages_api, claude_on_path)
    someone.extra_env["CLAUDE_AUTH_LOGIN"] = "setup-token"
    yield someone
    someone.assert_no_leaks()
    assert_no_secrets([" ".join(argv) for argv in spawned.argv], someone.secrets_used)
    for env in spawned.oauth_envs:  # only the probe gets a token, and only in a throw-away HOME
        assert Path(env["HOME"]).name.startswith("claude-auth-probe-") and not Path(env["HOME"]).exists()


def store(person: SyncUser, token: str | None, *, expires_at: str | None = None, accepted: bool = True,
          monkeypatch: pytest.MonkeyPatch | None = None) -> tuple[int, str, str]:
    """`claude-auth setup-token --user NAME` as root (admin VAULT_TOKEN), the token on stdin."""
    if token is not None:
        person.remember(token)
        if accepted:
            person.api.accept(token)
    out, err = io.StringIO(), io.StringIO()
    env = {**person.environment(), "VAULT_TOKEN": person.root.token}
    saved = os.environ.get("VAULT_TOKEN")
    os.environ["VAULT_TOKEN"] = person.root.token
    try:
        code = setup_token_cmd.run(person.name, expires_at, environ=env, stdin=io.StringIO(token or ""),
                                   out=out, err=err, is_root=True)
    finally:
        if saved is None:
            os.environ.pop("VAULT_TOKEN", None)
        else:
            os.environ["VAULT_TOKEN"] = saved
    person.outputs += [out.getvalue(), err.getvalue()]
    return code, out.getvalue(), err.getvalue()


def stored(result: tuple[int, str, str]) -> None:
    code, out, err = result
    assert code == 0, out + err


def installed(person: SyncUser) -> dict[str, Any]:
    return dict(json.loads(person.credentials.read_text())["claudeAiOauth"])


# --- storing -----------------------------------------------------------------------------------


def test_root_stores_a_probed_token_by_merging_beside_other_keys(person: SyncUser) -> None:
    password = "vw-" + secrets.token_urlsafe(24)
    person.remember(password)
    person.root.secrets.kv.v2.create_or_update_secret(path=person.kv_path, secret={SIBLING: password},
                                                      mount_point=KV_MOUNT)
    token = new_setup_token()
    before = time.time()

    code, out, err = store(person, token)

    assert (code, err) == (0, ""), err
    [line] = out.splitlines()
    assert line.startswith(f"OK {person.name}: setup token works and is stored at secret/data/{person.kv_path} "
                           f"(version 2), expires ")
    version, data = read_kv(person.root, person.kv_path) or (0, {})
    assert version == 2 and data[SIBLING] == password
    assert data[st.FIELD_TOKEN] == token
    expected = int(before * 1000) + 365 * DAY_MS
    assert expected <= data[st.FIELD_EXPIRES_AT_MS] <= expected + 60_000
    assert data[st.FIELD_EXPIRY_SOURCE] == "default" and "(assumed: 365 days" in line  # the bare token
    assert time.strptime(data[st.FIELD_STORED_AT], "%Y-%m-%dT%H:%M:%SZ")
    assert person.api.saw(token)  # the probe really used it


def test_the_admin_token_never_reaches_the_claude_probe(person: SyncUser, tmp_path: Path) -> None:
    """Issue 21: root's `setup-token --user NAME` holds an admin VAULT_TOKEN; its claude child gets
    no Vault or OpenBao variable at all (its environment is readable as long as it runs)."""
    record = tmp_path / "claude.env"
    wrapper_dir = tmp_path / "recording-bin"
    wrapper_dir.mkdir()
    real = shutil.which("claude", path=str(person.bin_dir))
    (wrapper_dir / "claude").write_text(f'#!/bin/sh\nenv > {record}\nexec {real} "$@"\n')
    (wrapper_dir / "claude").chmod(0o755)
    person.bin_dir = wrapper_dir
    os.environ["BAO_TOKEN"] = person.root.token

    try:
        stored(store(person, new_setup_token()))
    finally:
        os.environ.pop("BAO_TOKEN", None)

    child = dict(line.split("=", 1) for line in record.read_text().splitlines() if "=" in line)
    assert not [name for name in child if name.startswith(("VAULT_", "BAO_"))], sorted(child)
    assert person.root.token not in record.read_text()


def claude_printed(token: str, lifetime: str) -> str:
    """All that `claude setup-token` prints (2.1.332's wording; 2.1.197 always says 1 year)."""
    return ("\x1b[32m✓\x1b[39m Long-lived authentication token created\n\n"
            f"Your OAuth token (valid for {lifetime}):\n\n\x1b[33m{token}\x1b[39m\n\n"
            "Store this token securely. You won't be able to see it again.\n\n"
            "Use this token by setting: export CLAUDE_CODE_OAUTH_TOKEN=<token>\n\n"
            "You can revoke it later at https://claude.ai/settings/claude-code\n")


@pytest.mark.parametrize(("lifetime", "days"), [("30 days", 30), ("1 year", 365)])
def test_the_lifetime_claude_printed_sets_the_stored_expiry(person: SyncUser, lifetime: str, days: int) -> None:
    token = new_setup_token()
    person.remember(token)
    person.api.accept(token)
    before = time.time()

    code, out, err = store(person, claude_printed(token, lifetime))

    assert (code, err) == (0, ""), err
    assert "(as claude setup-token reported)" in out
    _, data = read_kv(person.root, person.kv_path) or (0, {})
    assert data[st.FIELD_TOKEN] == token and data[st.FIELD_EXPIRY_SOURCE] == "claude"
    expected = int(before * 1000) + days * DAY_MS
    assert expected <= data[st.FIELD_EXPIRES_AT_MS] <= expected + 60_000


def test_expires_at_sets_the_stored_expiry(person: SyncUser) -> None:
    code, out, _ = store(person, new_setup_token(), expires_at="2030-06-30")
    assert code == 0, out
    _, data = read_kv(person.root, person.kv_path) or (0, {})
    assert st.expiry_date(data[st.FIELD_EXPIRES_AT_MS]) == "2030-06-30"
    assert "expires 2030-06-30 (as given with --expires-at)" in out
    assert data[st.FIELD_EXPIRY_SOURCE] == "given"


@pytest.mark.parametrize(("given", "accepted", "message"), [
    ("", True, "no token given on standard input; nothing stored"),
    ("   \n", True, "no token given on standard input; nothing stored"),
    ("sk-ant-api03-" + "k" * 40, True, "not a setup token: it must start with sk-ant-oat01-"),
    ("sk-ant-oat01-short", True, "not a setup token: after sk-ant-oat01- it must be at least 20"),
    (None, False, "the API rejected the setup token: the API rejected the login (HTTP 401)"),
])
def test_bad_input_stores_nothing(person: SyncUser, given: str | None, accepted: bool, message: str) -> None:
    token = new_setup_token() if given is None else given
    person.remember(token)

    code, out, err = store(person, token, accepted=accepted)

    assert (code, out) == (1, "")
    [line] = err.splitlines()
    assert line.startswith(f"FAIL {person.name}: {message}"), line
    assert line.endswith("nothing stored")
    assert read_kv(person.root, person.kv_path) is None


@pytest.mark.parametrize(("argv", "message"), [
    (["--user", "alice", "--expires-at", "next year"], "is not an ISO date"),
    (["--user", "alice", "--expires-at", "2001-01-01"], "lies in the past"),
    (["--user", "Bad!"], "invalid user name"),
    ([], "as root, name the person"),
    (["--user", "alice", "--token", "x"], "unrecognized arguments: --token"),
])
def test_usage_errors_exit_64_and_store_nothing(argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert os.geteuid() == 0  # "as root" is this test's own situation
    monkeypatch.setattr(sys, "stdin", io.StringIO(new_setup_token()))
    assert cli_main(["setup-token", *argv]) == 64
    out, err = capsys.readouterr()
    assert out == "" and message in err


def test_the_person_stores_with_their_own_token_file_as_their_own_uid(
        openbao: OpenBaoServer, root_client: hvac.Client, messages_api: MessagesApiStandIn, claude_bin: Path) -> None:
    """A real other uid, its own home and scoped token; the token on stdin of `python -m reconcile`."""
    uid, name = 5401, f"p{secrets.token_hex(4)}"
    folder = Path(tempfile.mkdtemp(prefix="claude-auth-person-", dir="/var/tmp"))
    try:
        folder.chmod(0o755)
        home = folder / name
        (home / ".config" / "claude-auth-sync").mkdir(parents=True)
        prefix = f"test-{secrets.token_hex(4)}/claude-users"
        root_client.sys.create_or_update_acl_policy(
            name=f"{POLICY_PREFIX}{name}",
            policy=render("policy.hcl.j2", user=name, kv_mount=KV_MOUNT, kv_path=f"{prefix}/{name}"))
        vault_token = mint_token(root_client, name)
        (home / ".config" / "claude-auth-sync" / "vault-token").write_text(vault_token + "\n")
        for path in (home, home / ".config", home / ".config" / "claude-auth-sync",
                     home / ".config" / "claude-auth-sync" / "vault-token"):
            os.chown(path, uid, uid)
        bin_dir = folder / "bin"
        bin_dir.mkdir()
        (bin_dir / "claude").symlink_to(claude_bin)
        token = new_setup_token()
        messages_api.accept(token)
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "PYTHONPATH": str(REPO),
               "VAULT_ADDR": openbao.address, "CLAUDE_AUTH_PATH_PREFIX": prefix,
               "ANTHROPIC_BASE_URL": messages_api.base_url}
        argv = [sys.executable, "-m", "reconcile", "setup-token", "--user", name]
        done = subprocess.run(argv, input=token + "\n", env=env, user=uid, group=uid, cwd="/",
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith(f"OK {name}: setup token works and is stored at secret/data/{prefix}/{name}")
        _, data = read_kv(root_client, f"{prefix}/{name}") or (0, {})
        assert data[st.FIELD_TOKEN] == token
        # Someone else's path is refused by Vault (their own policy only), and nothing is stored there.
        other = f"o{secrets.token_hex(4)}"
        messages_api.accept(another := new_setup_token())
        refused = subprocess.run([*argv[:-1], other], input=another, env=env, user=uid, group=uid,
                                 cwd="/", capture_output=True, text=True, timeout=180)
        assert refused.returncode == 1 and "permission denied" in refused.stderr
        assert read_kv(root_client, f"{prefix}/{other}") is None
        assert_no_secrets([done.stdout, done.stderr, refused.stdout, refused.stderr, " ".join(argv)],
                          [token, another, vault_token, root_client.token])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- sync in setup-token mode -------------------------------------------------------------------


def test_sync_installs_the_token_keeping_every_other_key_and_never_touches_the_oauth_backup(
        person: SyncUser) -> None:
    oauth = new_oauth()
    person.login(oauth)
    person.extra_env["CLAUDE_AUTH_LOGIN"] = "oauth"
    assert person.sync().status.value == "OK"  # the OAuth backup, as an oauth-mode person has one
    backup_before = read_kv(person.root, person.kv_path)
    mcp_before = json.loads(person.credentials.read_text())["mcpOAuth"]
    token = new_setup_token()
    assert store(person, token, expires_at="2031-01-31")[0] == 0
    person.extra_env["CLAUDE_AUTH_LOGIN"] = "setup-token"

    outcome = person.sync()

    assert outcome.line == f"OK {person.name}: setup token works (expires 2031-01-31)"
    document = json.loads(person.credentials.read_text())
    assert document["claudeAiOauth"] == {"accessToken": token, "expiresAt": st.parse_expiry("2031-01-31"),
                                         "scopes": ["user:inference"]}
    assert document["mcpOAuth"] == mcp_before
    assert oct(person.credentials.stat().st_mode & 0o777) == "0o600"
    _, data = read_kv(person.root, person.kv_path) or (0, {})
    assert data["claude_ai_oauth_json"] == backup_before[1]["claude_ai_oauth_json"]  # type: ignore[index]
    [kept] = person.kept_copies()  # the replaced refreshable login, as a restore keeps it
    assert json.loads(kept.read_text())["claudeAiOauth"] == oauth

    # Nothing changed: the next run installs nothing and probes only through the file.
    raw = person.credentials.read_bytes()
    assert person.sync().line == outcome.line
    assert person.credentials.read_bytes() == raw


def test_a_new_token_in_vault_is_installed_by_the_next_sync(person: SyncUser) -> None:
    first, second = new_setup_token("a"), new_setup_token("b")
    stored(store(person, first))
    assert person.sync().status.value == "OK"
    assert installed(person)["accessToken"] == first
    stored(store(person, second))
    person.api.revoke(first)

    outcome = person.sync()

    assert outcome.status.value == "OK", person.outputs
    assert installed(person)["accessToken"] == second
    assert "refreshToken" not in installed(person)


@pytest.mark.parametrize("already_installed", [True, False])
def test_a_rejected_token_is_the_documented_fail_line_and_the_file_is_left_as_it_was(
        person: SyncUser, already_installed: bool) -> None:
    token = new_setup_token()
    stored(store(person, token))
    if already_installed:
        assert person.sync().status.value == "OK"
    else:
        person.login(new_oauth())
    raw = person.credentials.read_bytes()
    person.api.revoke(token)

    outcome = person.sync()

    assert outcome.line == (f"FAIL {person.name}: setup token rejected (HTTP 401); run claude setup-token, "
                            f"then claude-auth setup-token")
    assert outcome.exit_code == 1
    assert person.credentials.read_bytes() == raw


def test_no_token_stored_is_one_fail_line_and_changes_nothing(person: SyncUser) -> None:
    raw = person.login(new_oauth())

    outcome = person.sync()

    assert outcome.line.startswith(f"FAIL {person.name}: no setup token stored at secret/data/{person.kv_path}; "
                                   f"run claude setup-token, then claude-auth setup-token")
    assert person.credentials.read_bytes() == raw
    assert read_kv(person.root, person.kv_path) is None


def test_vault_down_is_one_fail_line_and_the_installed_token_stays(
        tmp_path: Path, fresh_openbao: OpenBaoServer, messages_api: MessagesApiStandIn,
        claude_on_path: Path, spawned: Spawned) -> None:  # noqa: F811
    root = hvac.Client(url=fresh_openbao.address, token=fresh_openbao.root_token)
    someone = make_user(tmp_path, fresh_openbao.address, root, messages_api, claude_on_path)
    someone.extra_env["CLAUDE_AUTH_LOGIN"] = "setup-token"
    stored(store(someone, new_setup_token()))
    assert someone.sync().status.value == "OK"
    raw = someone.credentials.read_bytes()
    fresh_openbao.stop()

    outcome = someone.sync()

    assert outcome.line.startswith(f"FAIL {someone.name}: Vault at VAULT_ADDR={fresh_openbao.address} is unreachable")
    assert [line for line in outcome.line.splitlines()] == [outcome.line]
    assert someone.credentials.read_bytes() == raw
    someone.assert_no_leaks()


def test_under_30_days_left_is_a_warning(person: SyncUser) -> None:
    soon = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 10 * 86400))
    stored(store(person, new_setup_token(), expires_at=soon))

    outcome = person.sync()

    assert outcome.status.value == "OK"
    warn = [line for line in person.outputs[-1].splitlines() if line.startswith("WARN")]
    assert warn == [f"WARN {person.name}: the setup token expires on {soon} (10 days left); "
                    f"run claude setup-token, then claude-auth setup-token"]
    assert warn[0] in person.log.read_text()


def test_switching_to_setup_token_and_back_finds_the_oauth_backup_intact(person: SyncUser) -> None:
    oauth = new_oauth()
    person.login(oauth)
    person.extra_env["CLAUDE_AUTH_LOGIN"] = "oauth"
    assert person.sync().status.value == "OK"
    version, data = read_kv(person.root, person.kv_path) or (0, {})
    stored(store(person, new_setup_token()))
    person.extra_env["CLAUDE_AUTH_LOGIN"] = "setup-token"
    assert person.sync().status.value == "OK"
    # A run by hand without the drop-in's variable keeps the installed setup token.
    del person.extra_env["CLAUDE_AUTH_LOGIN"]
    assert person.sync().line.startswith(f"OK {person.name}: setup token works")

    person.extra_env["CLAUDE_AUTH_LOGIN"] = "oauth"  # the roster switched back
    outcome = person.sync()

    assert outcome.status.value == "RECOVERED", outcome.line
    assert outcome.line.startswith(f"RECOVERED {person.name}: claude_login is oauth, but "
                                   f"~/.claude/.credentials.json holds a setup token (switched back); "
                                   f"restored the backup (secret/data/{person.kv_path} version {version + 1})")
    assert installed(person) == oauth
    _, after = read_kv(person.root, person.kv_path) or (0, {})
    assert after["claude_ai_oauth_json"] == data["claude_ai_oauth_json"]
    assert person.sync().line.startswith(f"OK {person.name}: login works; backup unchanged")


def test_oauth_mode_never_backs_a_setup_token_up(person: SyncUser) -> None:
    """Switched back with no OAuth backup: FAIL asking for a login, and the setup token is not backed up."""
    stored(store(person, new_setup_token()))
    assert person.sync().status.value == "OK"
    person.extra_env["CLAUDE_AUTH_LOGIN"] = "oauth"
    raw = person.credentials.read_bytes()

    outcome = person.sync()

    assert outcome.status.value == "FAIL"
    assert "no usable backup" in outcome.line and "claude auth login --claudeai --sso" in outcome.line
    assert person.credentials.read_bytes() == raw
    _, data = read_kv(person.root, person.kv_path) or (0, {})
    assert "claude_ai_oauth_json" not in data


@pytest.mark.parametrize("works", [True, False])
def test_a_login_refreshed_since_the_last_backup_is_backed_up_before_the_switch_only_if_it_works(
        person: SyncUser, works: bool) -> None:
    first = new_oauth("first")
    person.login(first)
    person.extra_env["CLAUDE_AUTH_LOGIN"] = "oauth"
    assert person.sync().status.value == "OK"
    refreshed = new_oauth("refreshed")  # claude refreshed the login after that backup
    person.login(refreshed, accepted=works)
    stored(store(person, new_setup_token()))
    person.extra_env["CLAUDE_AUTH_LOGIN"] = "setup-token"

    outcome = person.sync()

    assert outcome.line.startswith(f"OK {person.name}: setup token works"), outcome.line
    expected = refreshed if works else first
    _, data = read_kv(person.root, person.kv_path) or (0, {})
    assert json.loads(data["claude_ai_oauth_json"]) == expected
    warnings = [line for line in person.outputs[-1].splitlines() if line.startswith("WARN")]
    assert bool(warnings) is not works
    person.extra_env["CLAUDE_AUTH_LOGIN"] = "oauth"
    back = person.sync()
    assert back.status.value == "RECOVERED" and installed(person) == expected


@pytest.mark.parametrize("pasted", ["the token", "all claude printed"])
def test_from_a_terminal_it_prompts_without_echo(person: SyncUser, pasted: str) -> None:
    """A real pseudo-terminal: the prompt shows, the typed token (or claude's pasted output) does not."""
    import pty

    token = new_setup_token()
    person.remember(token)
    person.api.accept(token)
    env = {**person.environment(), "VAULT_TOKEN": person.root.token, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "reconcile", "setup-token", "--user", person.name]
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdin, stdout and stderr are the terminal
        os.chdir(REPO)
        os.execve(argv[0], argv, env)
    seen = b""
    deadline = time.monotonic() + 120
    while setup_token_cmd.PROMPT.encode() not in seen and time.monotonic() < deadline:
        seen += os.read(fd, 1024)
    typed = token + "\n" if pasted == "the token" else claude_printed(token, "12 days")
    os.write(fd, typed.encode())
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = seen.decode(errors="replace")
    person.outputs.append(text)
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert setup_token_cmd.PROMPT in text and f"OK {person.name}: setup token works" in text
    assert "Store this token" not in text  # nothing pasted was echoed
    _, data = read_kv(person.root, person.kv_path) or (0, {})
    assert data[st.FIELD_TOKEN] == token
    assert data[st.FIELD_EXPIRY_SOURCE] == ("default" if pasted == "the token" else "claude")


def test_vault_settings_come_from_the_roster_when_given(person: SyncUser, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    roster = tmp_path / "roster.yaml"
    roster.write_text(f"vault:\n  address: {person.address}\n  path_prefix: {person.path_prefix}\n"
                      f"users:\n  {person.name}: {{claude_login: setup-token}}\n")
    token = new_setup_token()
    person.remember(token)
    person.api.accept(token)
    env = {k: v for k, v in person.environment().items() if k not in ("VAULT_ADDR", "CLAUDE_AUTH_PATH_PREFIX")}
    monkeypatch.setenv("VAULT_TOKEN", person.root.token)
    out, err = io.StringIO(), io.StringIO()

    code = setup_token_cmd.run(person.name, None, roster_path=str(roster), environ=env,
                               stdin=io.StringIO(token), out=out, err=err, is_root=True)

    person.outputs += [out.getvalue(), err.getvalue()]
    assert code == 0, err.getvalue()
    _, data = read_kv(person.root, person.kv_path) or (0, {})
    assert data[st.FIELD_TOKEN] == token
    roster.write_text("users:\n  x: {claude_login: nope}\n")
    assert setup_token_cmd.run(person.name, None, roster_path=str(roster), environ=env, stdin=io.StringIO(token),
                               out=out, err=err, is_root=True) == 1
    assert "is not valid (" in err.getvalue() and "users.x.claude_login" in err.getvalue()
    person.outputs.append(err.getvalue())
