"""`claude-auth sync` against a real OpenBao dev server and the real pinned claude CLI.

Each test sets a user up as `claude-auth apply` would (the policy rendered
from templates/policy.hcl.j2, an orphan periodic token with display name
devvm-claude-auth-<user> and no default policy, the token file), with a user
name and KV path prefix of its own (the server is session-wide), a HOME of
its own, and the real claude talking to the loopback Messages API stand-in.
Runs go through `flow.run` in-process (which reports the Vault request
count), through `reconcile.cli.main` with a patched environment, or as
`python -m reconcile sync` subprocesses (the console path). Every test ends
by searching every output and the log for every token it used.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import random
import secrets
import stat
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import hvac
import hvac.exceptions
import pytest

from reconcile.cli import main as cli_main
from reconcile.sync import backup, flow
from reconcile.common.templating import render
from reconcile.vault.client import Vault
from reconcile.vault.values import Secret
from tests.conftest import assert_no_secrets
from tests.support.messages_api import MessagesApiStandIn
from tests.support.openbao import OpenBaoServer, free_port

REPO = Path(__file__).resolve().parent.parent
KV_MOUNT = "secret"
POLICY_PREFIX = "workstation-claude-"
SIBLING = "vaultwarden_master_password"


def new_oauth(tag: str = "") -> dict[str, Any]:
    return {
        "accessToken": f"sk-ant-oat01-{tag}{secrets.token_urlsafe(32)}",
        "refreshToken": f"sk-ant-ort01-{tag}{secrets.token_urlsafe(32)}",
        "expiresAt": int(time.time() * 1000) + 8 * 3_600_000,  # future: claude never tries to refresh
        "scopes": ["user:inference", "user:profile", "user:sessions:claude_code"],
        "subscriptionType": "enterprise",
    }


def read_kv(client: hvac.Client, path: str) -> tuple[int, dict[str, Any]] | None:
    try:
        data = client.secrets.kv.v2.read_secret_version(path=path, mount_point=KV_MOUNT,
                                                        raise_on_deleted_version=False)
    except hvac.exceptions.InvalidPath:
        return None
    return int(data["data"]["metadata"]["version"]), dict(data["data"]["data"])


def decoded(fields: dict[str, bytes]) -> dict[str, Any]:
    """Fields as JSON text (what backup writes) decoded, for writing them with hvac."""
    return {key: json.loads(value) for key, value in fields.items()}


def stored_object(data: dict[str, Any]) -> Any:
    """The backed-up object in a path's data as hvac decoded it (JSON text, or the object itself)."""
    value = data.get("claude_ai_oauth_json")
    return json.loads(value) if isinstance(value, str) else value


def current_version(client: hvac.Client, path: str) -> int:
    try:
        meta = client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=KV_MOUNT)
    except hvac.exceptions.InvalidPath:
        return 0
    return int(meta["data"]["current_version"])


def cas_merge(client: hvac.Client, path: str, updates: dict[str, Any]) -> int:
    """What another well-behaved tool does (like `bao kv patch -method=rw`): read, merge, CAS write, retry."""
    while True:
        current = read_kv(client, path)
        version, data = current if current else (0, {})
        data.update(updates)
        try:
            result = client.secrets.kv.v2.create_or_update_secret(path=path, secret=data, cas=version,
                                                                  mount_point=KV_MOUNT)
            return int(result["data"]["version"])
        except hvac.exceptions.InvalidRequest as exc:
            if "check-and-set" not in str(exc):
                raise


@dataclass
class SyncUser:
    """One user as `apply` leaves them, plus a login file and a claude on PATH."""

    name: str
    address: str
    root: hvac.Client
    api: MessagesApiStandIn
    home: Path
    bin_dir: Path
    path_prefix: str
    token: str = ""
    secrets_used: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def kv_path(self) -> str:
        return f"{self.path_prefix}/{self.name}"

    @property
    def credentials(self) -> Path:
        return self.home / ".claude" / ".credentials.json"

    @property
    def state_dir(self) -> Path:
        return self.home / ".local" / "state" / "claude-auth-sync"

    @property
    def log(self) -> Path:
        return self.state_dir / "sync.log"

    @property
    def token_file(self) -> Path:
        return self.home / ".config" / "claude-auth-sync" / "vault-token"

    def provision(self, policy: str | None = None) -> "SyncUser":
        self.root.sys.create_or_update_acl_policy(
            name=f"{POLICY_PREFIX}{self.name}",
            policy=policy or render("policy.hcl.j2", user=self.name, kv_mount=KV_MOUNT, kv_path=self.kv_path))
        self.token = mint_token(self.root, self.name)
        self.secrets_used.append(self.token)
        self.token_file.parent.mkdir(parents=True, mode=0o700)
        self.token_file.write_text(self.token + "\n")
        self.token_file.chmod(0o600)
        self.state_dir.mkdir(parents=True, mode=0o700)
        return self

    def login(self, oauth: dict[str, Any], *, accepted: bool = True, mcp: dict[str, Any] | None = None) -> bytes:
        """Write ~/.claude/.credentials.json as claude would; returns its bytes."""
        self.remember(oauth)
        document = {"claudeAiOauth": oauth,
                    "mcpOAuth": mcp if mcp is not None else {
                        "github|abc123": {"serverName": "github", "accessToken": "mcp-" + secrets.token_hex(16),
                                          "expiresAt": 1900000000000}}}
        self.remember(document["mcpOAuth"])
        self.credentials.parent.mkdir(mode=0o700, exist_ok=True)
        self.credentials.write_text(json.dumps(document, indent=2))
        self.credentials.chmod(0o600)
        if accepted:
            self.api.accept(oauth["accessToken"])
        return self.credentials.read_bytes()

    def remember(self, value: Any) -> None:
        if isinstance(value, str) and len(value) >= 8:
            self.secrets_used.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                self.remember(item)

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("VAULT_", "BAO_", "CLAUDE_AUTH_", "ANTHROPIC_", "CLAUDE_CODE_",
                                    "CLAUDE_CONFIG_DIR", "CLAUDE_SECURESTORAGE_CONFIG_DIR"))}
        env.update(HOME=str(self.home), VAULT_ADDR=self.address, CLAUDE_AUTH_PATH_PREFIX=self.path_prefix,
                   ANTHROPIC_BASE_URL=self.api.base_url, PATH=f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}",
                   CLAUDE_AUTH_CLAUDE_TIMEOUT="60")
        env.update(self.extra_env)
        return env

    def sync(self) -> flow.Outcome:
        """In-process, through flow.run (reports the Vault request count)."""
        out = io.StringIO()
        outcome = flow.run(self.name, self.environment(), out)
        self.outputs.append(out.getvalue())
        assert out.getvalue().endswith(outcome.line + "\n")
        return outcome

    def sync_subprocess(self, *, compat_name: bool = False) -> subprocess.CompletedProcess[str]:
        """`python -m reconcile sync --user NAME`: the console path."""
        argv = [sys.executable, "-m", "reconcile", "sync", "--user", self.name]
        if compat_name:
            argv = [sys.executable, "-c", "from reconcile.cli import main_sync; main_sync()", "--user", self.name]
        done = subprocess.run(argv, env=self.environment(), cwd=REPO, capture_output=True, text=True, timeout=180)
        self.outputs.extend([done.stdout, done.stderr])
        return done

    def stored(self) -> tuple[int, dict[str, Any]] | None:
        return read_kv(self.root, self.kv_path)

    def stored_oauth(self) -> Any:
        current = self.stored()
        return stored_object(current[1]) if current else None

    def kept_copies(self) -> list[Path]:
        return sorted(self.state_dir.glob("credentials-backup-*.json"))

    def assert_no_leaks(self) -> None:
        texts = list(self.outputs)
        for log in (self.log, self.log.with_name("sync.log.1")):
            if log.exists():
                texts.append(log.read_text())
        assert_no_secrets(texts, self.secrets_used)


def mint_token(root: hvac.Client, user: str) -> str:
    return str(root.auth.token.create_orphan(
        policies=[f"{POLICY_PREFIX}{user}"], period="768h", no_default_policy=True,
        display_name=f"devvm-claude-auth-{user}", meta={"user": user, "host": "test"})["auth"]["client_token"])


@pytest.fixture
def claude_on_path(tmp_path: Path, claude_bin: Path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "claude").symlink_to(claude_bin)
    return folder


def make_user(tmp_path: Path, address: str, root: hvac.Client, api: MessagesApiStandIn, bin_dir: Path,
              name: str | None = None, policy: str | None = None) -> SyncUser:
    name = name or f"u{uuid.uuid4().hex[:10]}"
    home = tmp_path / f"home-{name}"
    home.mkdir()
    user = SyncUser(name=name, address=address, root=root, api=api, home=home, bin_dir=bin_dir,
                    path_prefix=f"test-{uuid.uuid4().hex[:8]}/claude-users")
    user.secrets_used.append(root.token)
    return user.provision(policy)


@pytest.fixture
def user(tmp_path: Path, openbao: OpenBaoServer, root_client: hvac.Client, messages_api: MessagesApiStandIn,
         claude_on_path: Path) -> Iterator[SyncUser]:
    person = make_user(tmp_path, openbao.address, root_client, messages_api, claude_on_path)
    yield person
    person.assert_no_leaks()


def log_lines(user: SyncUser) -> list[str]:
    return user.log.read_text().splitlines()


# --- backups that lose nothing ----------------------------------------------------------------------


def test_sibling_key_survives_a_backup_on_an_existing_path(user: SyncUser) -> None:
    password = "vw-" + secrets.token_urlsafe(24)
    user.remember(password)
    user.root.secrets.kv.v2.create_or_update_secret(path=user.kv_path, secret={SIBLING: password},
                                                    mount_point=KV_MOUNT)
    oauth = new_oauth()
    user.login(oauth)

    outcome = user.sync()

    assert outcome.status.value == "OK", outcome.line
    assert outcome.line.startswith(f"OK {user.name}: login works; backed up to ")
    version, data = user.stored() or (0, {})
    assert version == 2
    assert data[SIBLING] == password
    assert json.loads(data["claude_ai_oauth_json"]) == oauth
    assert data["claude_ai_oauth_json"] == json.dumps(oauth, sort_keys=True, separators=(",", ":"))
    assert data["credential_expires_at_ms"] == oauth["expiresAt"]
    assert time.strptime(data["backed_up_at"], "%Y-%m-%dT%H:%M:%SZ")


def test_sibling_key_survives_after_a_first_backup_created_the_path(user: SyncUser) -> None:
    first = new_oauth("first")
    user.login(first)
    assert current_version(user.root, user.kv_path) == 0

    done = user.sync_subprocess()  # cas=0: the path is new
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"OK {user.name}: login works; backed up to ")
    assert done.stderr == ""
    assert user.stored_oauth() == first

    password = "vw-" + secrets.token_urlsafe(24)
    user.remember(password)
    cas_merge(user.root, user.kv_path, {SIBLING: password})
    second = new_oauth("second")  # claude rotated the tokens
    user.login(second)

    assert user.sync().status.value == "OK"
    version, data = user.stored() or (0, {})
    assert version == 3
    assert data[SIBLING] == password
    assert json.loads(data["claude_ai_oauth_json"]) == second


def test_concurrent_sibling_writer_and_repeated_backups_both_survive(user: SyncUser) -> None:
    stop = threading.Event()
    last: list[str] = []
    errors: list[BaseException] = []
    writer_client = hvac.Client(url=user.address, token=user.root.token)

    def writer() -> None:
        n = 0
        try:
            while not stop.is_set():
                n += 1
                value = f"vw-{n}-" + secrets.token_hex(8)
                cas_merge(writer_client, user.kv_path, {SIBLING: value})
                last.append(value)
                time.sleep(random.uniform(0, 0.004))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        # Full syncs with the real claude, each after claude "rotated" the login.
        for n in range(3):
            oauth = new_oauth(f"r{n}")
            user.login(oauth)
            outcome = user.sync()
            assert outcome.status.value == "OK", outcome.line
            assert "backed up to" in outcome.line
        # And the backup step alone, many times, for more contention.
        vault = Vault(user.address, Secret(user.token))
        for n in range(40):
            oauth = new_oauth(f"b{n}")
            user.remember(oauth)
            result = backup.back_up(vault, KV_MOUNT, user.kv_path, oauth, "2025-01-01T00:00:00Z")
            assert result.written
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors
    assert last, "the writer never wrote"
    _, data = user.stored() or (0, {})
    assert data[SIBLING] == last[-1]
    assert stored_object(data) == oauth
    user.secrets_used.extend(last)


def test_unchanged_login_writes_no_new_version_and_makes_at_most_four_requests(user: SyncUser) -> None:
    user.login(new_oauth())
    first = user.sync()
    assert first.status.value == "OK" and "backed up to" in first.line
    version_before, data_before = user.stored() or (0, {})

    second = user.sync()
    done = user.sync_subprocess()

    assert second.status.value == "OK"
    assert "backup unchanged" in second.line
    assert second.vault_requests <= 4, second.vault_requests
    assert done.returncode == 0 and "backup unchanged" in done.stdout
    assert user.stored() == (version_before, data_before)  # backed_up_at not rewritten either
    assert current_version(user.root, user.kv_path) == 1


def test_old_shell_tool_backup_counts_as_equal(user: SyncUser) -> None:
    oauth = new_oauth()
    user.login(oauth)
    user.root.secrets.kv.v2.create_or_update_secret(path=user.kv_path, mount_point=KV_MOUNT, secret={
        "claude_ai_oauth_json": json.dumps(oauth, indent=2),  # jq's formatting, claude's key order
        "credential_expires_at_ms": str(oauth["expiresAt"]),
        "backed_up_at": "2025-01-01T00:00:00Z", SIBLING: "kept-by-vaultwarden-tool"})

    outcome = user.sync()

    assert outcome.status.value == "OK" and "backup unchanged" in outcome.line, outcome.line
    assert current_version(user.root, user.kv_path) == 1


@pytest.mark.parametrize("how", ["destroy", "delete"])
def test_a_destroyed_or_deleted_latest_version_is_backed_up_over_with_its_version(user: SyncUser, how: str) -> None:
    # A destroyed latest version reads as 404 like a new path; a write with cas=0 would then
    # fail forever ("another writer kept changing"). Its data is gone: the backup writes cas=1.
    user.root.secrets.kv.v2.create_or_update_secret(path=user.kv_path, secret={SIBLING: "gone"},
                                                    mount_point=KV_MOUNT)
    if how == "destroy":
        user.root.secrets.kv.v2.destroy_secret_versions(path=user.kv_path, versions=[1], mount_point=KV_MOUNT)
    else:
        user.root.secrets.kv.v2.delete_latest_version_of_secret(path=user.kv_path, mount_point=KV_MOUNT)
    oauth = new_oauth()
    user.login(oauth)

    outcome = user.sync()

    assert outcome.status.value == "OK", outcome.line
    assert outcome.line.endswith(f"backed up to {KV_MOUNT}/data/{user.kv_path} (version 2)")
    assert current_version(user.root, user.kv_path) == 2
    assert user.stored_oauth() == oauth
    again = user.sync()
    assert again.status.value == "OK" and "backup unchanged" in again.line
    assert again.vault_requests <= 4
    assert current_version(user.root, user.kv_path) == 2


# --- recovery ------------------------------------------------------------------------------------------


def test_rejected_login_is_recovered_from_the_backup(user: SyncUser) -> None:
    good = new_oauth("good")
    user.login(good)
    assert user.sync().status.value == "OK"  # the backup holds the good login
    mcp = {"github|abc": {"serverName": "github", "accessToken": "mcp-" + secrets.token_hex(16), "n": [1, 2.5]}}
    bad = new_oauth("bad")
    user.login(bad, accepted=False, mcp=mcp)  # a raced refresh left a rejected login behind

    done = user.sync_subprocess()

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"RECOVERED {user.name}: the API rejected the login (HTTP 401)")
    after = json.loads(user.credentials.read_text())
    assert after["claudeAiOauth"] == good
    assert after["mcpOAuth"] == mcp
    assert stat.S_IMODE(user.credentials.stat().st_mode) == 0o600
    kept = user.kept_copies()
    assert len(kept) == 1
    assert json.loads(kept[0].read_text()) == {"claudeAiOauth": bad}
    assert stat.S_IMODE(kept[0].stat().st_mode) == 0o600
    assert kept[0].name in lines[0]
    assert current_version(user.root, user.kv_path) == 1  # the restored login equals the backup
    assert log_lines(user)[-1].endswith(lines[0])
    assert sorted(p.name for p in user.state_dir.iterdir()) == sorted(["lock", "sync.log", kept[0].name])
    assert sorted(p.name for p in user.credentials.parent.iterdir() if p.name.startswith(".credentials")) == \
        [".credentials.json"]  # no temp file left behind


def test_recovery_from_an_old_shell_tool_backup(user: SyncUser) -> None:
    good = new_oauth("good")
    user.api.accept(good["accessToken"])
    user.remember(good)
    user.root.secrets.kv.v2.create_or_update_secret(path=user.kv_path, mount_point=KV_MOUNT, secret={
        "claude_ai_oauth_json": json.dumps(good, indent=2), "credential_expires_at_ms": str(good["expiresAt"]),
        "backed_up_at": "2025-01-01T00:00:00Z", SIBLING: "kept"})
    user.login(new_oauth("bad"), accepted=False)

    outcome = user.sync()

    assert outcome.status.value == "RECOVERED", outcome.line
    assert json.loads(user.credentials.read_text())["claudeAiOauth"] == good
    assert current_version(user.root, user.kv_path) == 1  # equal object: no new version
    assert (user.stored() or (0, {}))[1][SIBLING] == "kept"


def test_both_rejected_fails_after_one_restore_and_keeps_the_original(user: SyncUser) -> None:
    backed_up = new_oauth("backup")
    user.login(backed_up)
    assert user.sync().status.value == "OK"
    user.api.revoke(backed_up["accessToken"])
    local = new_oauth("local")
    user.login(local, accepted=False)

    done = user.sync_subprocess()

    assert done.returncode == 1
    assert done.stderr == ""
    line = done.stdout.strip()
    assert "\n" not in line
    assert line.startswith(f"FAIL {user.name}: the API rejected the login (HTTP 401)")
    assert "rejected too" in line and "interactive SSO login" in line
    after = json.loads(user.credentials.read_text())
    assert after["claudeAiOauth"] == backed_up  # as after the one restore attempt
    kept = user.kept_copies()
    assert [json.loads(p.read_text()) for p in kept] == [{"claudeAiOauth": local}]
    assert current_version(user.root, user.kv_path) == 1

    # The next run finds the backup equal to the local login: no second restore, no new copy.
    again = user.sync()
    assert again.status.value == "FAIL" and "the backup holds this same login" in again.line
    assert len(user.kept_copies()) == 1


def test_rejected_login_without_a_backup_fails(user: SyncUser) -> None:
    raw = user.login(new_oauth(), accepted=False)
    outcome = user.sync()
    assert outcome.status.value == "FAIL"
    assert "no usable backup" in outcome.line and "interactive SSO login" in outcome.line
    assert user.credentials.read_bytes() == raw
    assert user.kept_copies() == []


def test_wiped_credentials_file_is_restored(user: SyncUser) -> None:
    good = new_oauth()
    user.login(good)
    assert user.sync().status.value == "OK"
    user.credentials.unlink()

    outcome = user.sync()

    assert outcome.status.value == "RECOVERED", outcome.line
    assert "not logged in" in outcome.line
    assert json.loads(user.credentials.read_text()) == {"claudeAiOauth": good}
    assert stat.S_IMODE(user.credentials.stat().st_mode) == 0o600


def test_backup_failing_after_a_restore_keeps_the_restore_details(user: SyncUser,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    good = new_oauth("good")
    user.api.accept(good["accessToken"])
    user.remember(good)
    user.root.secrets.kv.v2.create_or_update_secret(path=user.kv_path, mount_point=KV_MOUNT,
                                                    secret=decoded(backup.backup_fields(good, "2025-01-01T00:00:00Z")))
    # The token may read its path but no longer write it.
    user.root.sys.create_or_update_acl_policy(
        name=f"{POLICY_PREFIX}{user.name}",
        policy=render("policy.hcl.j2", user=user.name, kv_mount=KV_MOUNT, kv_path=user.kv_path).replace(
            '["create", "read", "update"]', '["read"]'))
    bad = new_oauth("bad")
    user.login(bad, accepted=False)
    refreshed = new_oauth("refreshed")
    user.remember(refreshed)
    checks: list[Any] = []
    real_check = flow._Steps.live_check

    def check(self: Any, env: Any) -> Any:
        result = real_check(self, env)
        checks.append(result)
        if len(checks) == 2:  # claude refreshed the restored login during the check: a new one to back up
            document = json.loads(user.credentials.read_text())
            document["claudeAiOauth"] = refreshed
            user.credentials.write_text(json.dumps(document))
        return result

    monkeypatch.setattr(flow._Steps, "live_check", check)

    outcome = user.sync()

    assert outcome.status.value == "FAIL"
    assert [c.verdict.value for c in checks] == ["auth", "ok"]
    kept = user.kept_copies()
    assert [json.loads(p.read_text()) for p in kept] == [{"claudeAiOauth": bad}]
    line = outcome.line
    assert line.startswith(f"FAIL {user.name}: the API rejected the login (HTTP 401)")
    assert f"restored the backup ({KV_MOUNT}/data/{user.kv_path} version 1)" in line
    assert f"the replaced login kept as {kept[0].name}" in line
    assert f"the login works, but the backup to {KV_MOUNT}/data/{user.kv_path} failed: permission denied" in line
    assert json.loads(user.credentials.read_text())["claudeAiOauth"] == refreshed
    assert current_version(user.root, user.kv_path) == 1


# --- outages are not auth failures -----------------------------------------------------------------


def test_api_answering_500_is_an_outage_and_changes_nothing(user: SyncUser) -> None:
    good = new_oauth("good")
    user.login(good)
    assert user.sync().status.value == "OK"
    raw = user.login(new_oauth("local"))  # differs from the backup: a restore would change the file
    user.api.outage = True

    done = user.sync_subprocess()

    assert done.returncode == 1
    assert done.stdout.startswith(f"FAIL {user.name}: outage: the API answered HTTP 500")
    assert "no restore" in done.stdout
    assert user.credentials.read_bytes() == raw
    assert user.kept_copies() == []
    assert user.stored_oauth() == good


def test_api_not_listening_is_an_outage_and_changes_nothing(user: SyncUser) -> None:
    good = new_oauth("good")
    user.login(good)
    assert user.sync().status.value == "OK"
    raw = user.login(new_oauth("local"))
    user.extra_env["ANTHROPIC_BASE_URL"] = f"http://127.0.0.1:{free_port()}"

    outcome = user.sync()

    assert outcome.status.value == "FAIL"
    # 2.1.197: "Unable to connect to API (ConnectionRefused)"; 2.1.332: "Connection refused ... (ECONNREFUSED)".
    assert re.match(rf"FAIL {user.name}: outage: claude could not (connect to|reach) the API", outcome.line), \
        outcome.line
    assert user.credentials.read_bytes() == raw
    assert user.kept_copies() == []
    assert user.stored_oauth() == good


def test_claude_timeout_is_fail_and_changes_nothing(user: SyncUser, tmp_path: Path) -> None:
    raw = user.login(new_oauth())
    slow = tmp_path / "slow-bin"
    slow.mkdir()
    (slow / "claude").write_text("#!/bin/sh\nsleep 30\n")
    (slow / "claude").chmod(0o755)
    user.bin_dir = slow
    user.extra_env["CLAUDE_AUTH_CLAUDE_TIMEOUT"] = "1"

    started = time.monotonic()
    outcome = user.sync()

    assert time.monotonic() - started < 15
    assert outcome.status.value == "FAIL" and "timeout" in outcome.line
    assert user.credentials.read_bytes() == raw
    assert current_version(user.root, user.kv_path) == 0


def test_openbao_stopped_is_fail_and_changes_nothing(tmp_path: Path, fresh_openbao: OpenBaoServer,
                                                     messages_api: MessagesApiStandIn,
                                                     claude_on_path: Path) -> None:
    root = hvac.Client(url=fresh_openbao.address, token=fresh_openbao.root_token)
    person = make_user(tmp_path, fresh_openbao.address, root, messages_api, claude_on_path)
    raw = person.login(new_oauth())
    fresh_openbao.stop()

    done = person.sync_subprocess()

    assert done.returncode == 1
    assert done.stdout.startswith(f"FAIL {person.name}: Vault at VAULT_ADDR={fresh_openbao.address} is unreachable")
    assert done.stdout.count("\n") == 1 and done.stderr == ""
    assert person.credentials.read_bytes() == raw
    person.assert_no_leaks()


def test_backup_denied_after_a_good_check_is_fail_saying_the_login_works(
        tmp_path: Path, openbao: OpenBaoServer, root_client: hvac.Client, messages_api: MessagesApiStandIn,
        claude_on_path: Path) -> None:
    name = f"u{uuid.uuid4().hex[:10]}"
    person = make_user(tmp_path, openbao.address, root_client, messages_api, claude_on_path, name=name)
    # Take the write capability away (read only on the data path).
    policy = render("policy.hcl.j2", user=name, kv_mount=KV_MOUNT, kv_path=person.kv_path).replace(
        '["create", "read", "update"]', '["read"]')
    root_client.sys.create_or_update_acl_policy(name=f"{POLICY_PREFIX}{name}", policy=policy)
    raw = person.login(new_oauth())

    outcome = person.sync()

    assert outcome.status.value == "FAIL"
    assert "the login works, but the backup to" in outcome.line and "permission denied" in outcome.line
    assert person.credentials.read_bytes() == raw
    person.assert_no_leaks()


# --- identity, lock, environment ----------------------------------------------------------------


def test_another_users_token_is_drift_and_nothing_is_read_or_written(
        tmp_path: Path, openbao: OpenBaoServer, root_client: hvac.Client, messages_api: MessagesApiStandIn,
        claude_on_path: Path) -> None:
    alice = make_user(tmp_path, openbao.address, root_client, messages_api, claude_on_path)
    bob = make_user(tmp_path, openbao.address, root_client, messages_api, claude_on_path)
    bob.path_prefix = alice.path_prefix  # same prefix: bob's policy would reach <prefix>/bob
    root_client.sys.create_or_update_acl_policy(
        name=f"{POLICY_PREFIX}{bob.name}",
        policy=render("policy.hcl.j2", user=bob.name, kv_mount=KV_MOUNT, kv_path=bob.kv_path))
    for person in (alice, bob):
        person.login(new_oauth(person.name))
        cas_merge(root_client, person.kv_path, {SIBLING: f"{person.name}-password"})
    alice.token_file.write_text(bob.token + "\n")  # the wrong token in alice's file
    alice.secrets_used.append(bob.token)
    raw = alice.credentials.read_bytes()

    outcome = alice.sync()
    done = alice.sync_subprocess()

    for result in (outcome.line, done.stdout.strip()):
        assert result.startswith(f"FAIL {alice.name}: drift: the Vault token is token-devvm-claude-auth-{bob.name}")
    assert done.returncode == 1 and done.stderr == ""
    assert outcome.vault_requests == 1  # lookup-self only: no renew, no KV read, no write
    assert current_version(root_client, alice.kv_path) == 1
    assert current_version(root_client, bob.kv_path) == 1
    assert alice.credentials.read_bytes() == raw
    alice.assert_no_leaks()


def test_a_token_with_extra_policies_is_drift(user: SyncUser) -> None:
    user.root.sys.create_or_update_acl_policy(name=f"extra-{user.name}", policy='path "secret/*" {\n'
                                              '  capabilities = ["read"]\n}\n')
    token = str(user.root.auth.token.create_orphan(
        policies=[f"{POLICY_PREFIX}{user.name}", f"extra-{user.name}"], period="768h", no_default_policy=True,
        display_name=f"devvm-claude-auth-{user.name}")["auth"]["client_token"])
    user.secrets_used.append(token)
    user.token_file.write_text(token)
    user.login(new_oauth())
    outcome = user.sync()
    assert outcome.status.value == "FAIL" and "drift" in outcome.line
    assert current_version(user.root, user.kv_path) == 0


def test_revoked_vault_token_is_fail(user: SyncUser) -> None:
    user.root.auth.token.revoke(user.token)
    raw = user.login(new_oauth())
    outcome = user.sync()
    assert outcome.status.value == "FAIL" and "refused the token" in outcome.line
    assert user.credentials.read_bytes() == raw


def test_renew_self_renews_the_token(user: SyncUser) -> None:
    user.login(new_oauth())
    assert not user.root.auth.token.lookup(user.token)["data"].get("last_renewal_time")
    started = int(time.time())
    assert user.sync().status.value == "OK"
    renewed = user.root.auth.token.lookup(user.token)["data"].get("last_renewal_time")
    assert renewed and int(renewed) >= started - 1


def test_lock_held_is_skip(user: SyncUser) -> None:
    raw = user.login(new_oauth())
    fd = os.open(user.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = user.sync_subprocess()
    finally:
        os.close(fd)
    assert done.returncode == 0
    assert done.stdout == f"SKIP {user.name}: another sync run holds the lock\n"
    assert log_lines(user)[-1].endswith(f"SKIP {user.name}: another sync run holds the lock")
    assert user.credentials.read_bytes() == raw
    assert current_version(user.root, user.kv_path) == 0


def test_oauth_token_variable_is_dropped_and_the_file_login_is_used(
        user: SyncUser, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    oauth = new_oauth()
    user.login(oauth)
    env_token = "sk-ant-oat01-ENV-" + secrets.token_urlsafe(24)
    api_key = "sk-ant-api03-" + secrets.token_urlsafe(24)
    user.remember(env_token)
    user.remember(api_key)
    user.api.accept(env_token)  # even a working variable must not be used
    for key in list(os.environ):
        if key.startswith(("VAULT_", "BAO_", "CLAUDE_AUTH_", "ANTHROPIC_", "CLAUDE_CODE_")):
            monkeypatch.delenv(key)
    for key, value in user.environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CLAUDE_CODE_OAUTH_TOKEN", env_token)
    monkeypatch.setenv("ANTHROPIC_API_KEY", api_key)

    code = cli_main(["sync", "--user", user.name])

    captured = capsys.readouterr()
    user.outputs.extend([captured.out, captured.err])
    assert code == 0, captured.out
    lines = captured.out.splitlines()
    assert lines[0] == (f"WARN {user.name}: CLAUDE_CODE_OAUTH_TOKEN is set; not passed to claude "
                        "(it would override this user's own login)")
    assert lines[1].startswith(f"WARN {user.name}: ANTHROPIC_API_KEY is set")
    assert lines[2].startswith(f"OK {user.name}: login works")
    assert len(lines) == 3
    assert user.api.saw(oauth["accessToken"])
    assert not user.api.saw(env_token)
    assert not user.api.saw(api_key)
    assert [line.split(" ", 1)[1] for line in log_lines(user)] == lines


@pytest.mark.parametrize("variable", ["CLAUDE_CONFIG_DIR", "CLAUDE_SECURESTORAGE_CONFIG_DIR"])
def test_config_dir_variable_is_dropped_so_a_rejected_login_never_overwrites_a_good_backup(
        user: SyncUser, variable: str) -> None:
    good = new_oauth("good")
    user.login(good)
    assert user.sync().status.value == "OK"  # the backup holds the good login
    bad = new_oauth("bad")
    user.login(bad, accepted=False)  # ~/.claude now holds a rejected login
    elsewhere = new_oauth("elsewhere")  # an accepted login in another folder claude could read instead
    user.remember(elsewhere)
    user.api.accept(elsewhere["accessToken"])
    folder = user.home / "other-claude-config"
    folder.mkdir(mode=0o700)
    (folder / ".credentials.json").write_text(json.dumps({"claudeAiOauth": elsewhere}))
    (folder / ".credentials.json").chmod(0o600)
    user.extra_env[variable] = str(folder)

    outcome = user.sync()

    assert user.stored_oauth() == good, outcome.line  # never overwritten by the rejected login
    assert current_version(user.root, user.kv_path) == 1
    assert not user.api.saw(elsewhere["accessToken"])
    assert outcome.status.value == "RECOVERED", outcome.line  # the check proved ~/.claude's login: rejected
    assert json.loads(user.credentials.read_text())["claudeAiOauth"] == good
    lines = user.outputs[-1].splitlines()
    assert lines[0] == (f"WARN {user.name}: {variable} is set; not passed to claude (claude would read its login "
                        "from that folder, not the ~/.claude login this sync backs up)")
    assert len(lines) == 2


def test_provider_switch_variable_is_dropped_and_the_file_login_is_checked(user: SyncUser) -> None:
    oauth = new_oauth()
    user.login(oauth)
    user.extra_env["CLAUDE_CODE_USE_BEDROCK"] = "1"

    outcome = user.sync()

    assert outcome.status.value == "OK", outcome.line
    assert user.outputs[-1].splitlines()[0] == (
        f"WARN {user.name}: CLAUDE_CODE_USE_BEDROCK is set; not passed to claude "
        "(claude would use another provider, not this user's own login)")
    assert user.api.saw(oauth["accessToken"])
    assert user.stored_oauth() == oauth


def test_ctrl_c_during_the_live_check_is_one_fail_line_and_releases_the_lock(
        user: SyncUser, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = user.login(new_oauth())

    def interrupted(self: Any, env: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(flow._Steps, "live_check", interrupted)
    try:
        outcome = user.sync()
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped flow.run")

    assert outcome.status.value == "FAIL" and outcome.exit_code == 1
    assert outcome.line == f"FAIL {user.name}: interrupted"
    assert user.outputs[-1] == outcome.line + "\n"
    assert log_lines(user)[-1].endswith(outcome.line)
    assert user.credentials.read_bytes() == raw
    assert current_version(user.root, user.kv_path) == 0
    monkeypatch.undo()
    assert user.sync().status.value == "OK"  # the lock was released


def test_token_file_readable_by_others_is_a_warning(user: SyncUser) -> None:
    user.login(new_oauth())
    user.token_file.chmod(0o644)
    outcome = user.sync()
    assert outcome.status.value == "OK"
    assert user.outputs[-1].splitlines()[0] == (
        f"WARN {user.name}: the Vault token file {user.token_file} has mode 0644; expected 0600")


def test_vault_token_variable_is_not_used(user: SyncUser) -> None:
    user.login(new_oauth())
    user.extra_env["VAULT_TOKEN"] = user.root.token  # a root token in the environment must not be used
    user.token_file.write_text("")
    outcome = user.sync()
    assert outcome.status.value == "FAIL" and "is empty" in outcome.line
    assert current_version(user.root, user.kv_path) == 0


@pytest.mark.parametrize("content", [
    b'{"claudeAiOauth": {"accessToken": "sk-ant-oat01-TRUNCATED',
    b"",
    b'{"claudeAiOauth": "sk-ant-oat01-NOREFRESH-abcdefgh"}',
    b'["sk-ant-oat01-BADEXPIRY-abcdefgh", "sk-ant-ort01-x-abcdefgh"]',
    # (A claudeAiOauth object of a broken shape is a broken login, restored: tests/test_sync_broken_shapes.py.)
])
def test_malformed_credentials_are_fail_and_untouched(user: SyncUser, content: bytes) -> None:
    good = new_oauth()
    user.login(good)
    assert user.sync().status.value == "OK"  # a good backup exists: it must still not be restored over
    user.credentials.write_bytes(content)
    user.secrets_used.extend(["sk-ant-oat01-TRUNCATED", "sk-ant-oat01-NOREFRESH-abcdefgh",
                              "sk-ant-oat01-BADEXPIRY-abcdefgh", "sk-ant-ort01-x-abcdefgh"])

    done = user.sync_subprocess()

    assert done.returncode == 1
    assert done.stdout.startswith(f"FAIL {user.name}: ~/.claude/.credentials.json")
    assert done.stdout.count("\n") == 1 and done.stderr == ""
    assert user.credentials.read_bytes() == content
    assert user.kept_copies() == []


def test_compatibility_entry_point_runs_sync(user: SyncUser) -> None:
    user.login(new_oauth())
    done = user.sync_subprocess(compat_name=True)
    assert done.returncode == 0 and done.stdout.startswith(f"OK {user.name}: login works")


def test_full_sync_imports_neither_jsonschema_nor_jinja2_nor_yaml(user: SyncUser) -> None:
    user.login(new_oauth())
    code = ("import sys, reconcile.cli\n"
            f"status = reconcile.cli.main(['sync', '--user', {user.name!r}])\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('jsonschema', 'jinja2', 'yaml'))\n"
            "print('HEAVY', heavy, status, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], env=user.environment(), cwd=REPO, capture_output=True,
                          text=True, timeout=180)
    user.outputs.extend([done.stdout, done.stderr])
    assert done.stdout.startswith(f"OK {user.name}: login works"), done.stdout + done.stderr
    assert "HEAVY [] 0" in done.stderr
