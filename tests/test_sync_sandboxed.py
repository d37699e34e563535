"""The whole product path, with the sync confined the way its rendered units confine it.

systemd is not PID 1 here, so the unit cannot be started for real. Instead the
test reads what `apply` rendered (the template unit and the person's drop-in),
resolves specifiers as systemd does for a system unit (`%h` is root's home,
whatever User= says; `%i` the instance), and reproduces the file-system and
privilege settings by hand in a private mount namespace (`unshare -m`): the
person's home at its user-database path, ProtectHome=read-only, exactly the
ReadWritePaths made writable again, ProtectSystem=strict, PrivateTmp (a fresh
/tmp), UMask, NoNewPrivileges and an empty capability set (setpriv), User=%i,
and the Environment= lines; then it runs the unit's own ExecStart with the real
pinned claude. What this cannot show: seccomp (SystemCallFilter=),
ProtectProc= and the other kernel-side settings.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import hvac
import pytest
import yaml

from reconcile.cli import main
from tests.support.leaks import assert_no_secrets
from tests.support.messages_api import MessagesApiStandIn
from tests.support.openbao import OpenBaoServer

UID = 5301
USER = "sandy"
REPO = Path(__file__).resolve().parent.parent


def unit_settings(texts: list[str], user: str) -> dict[str, list[str]]:
    """`Key=value` lines of the [Service] sections (unit, then drop-ins), specifiers resolved as
    systemd resolves them in a system unit: %h is root's home (systemd.unit(5)), %i the instance."""
    settings: dict[str, list[str]] = {}
    for text in texts:
        section = ""
        for line in text.splitlines():
            if line.startswith("["):
                section = line
            elif section == "[Service]" and "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                value = value.replace("%%", "\0").replace("%h", "/root").replace("%i", user).replace("\0", "%")
                settings.setdefault(key, []).append(value)
    return settings


@pytest.fixture
def sandbox_root() -> Iterator[Path]:
    """A root the user's uid can enter (pytest's tmp_path is 0700), outside /tmp, which PrivateTmp hides."""
    folder = Path(tempfile.mkdtemp(prefix="claude-auth-unit-", dir="/var/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_sync_runs_confined_as_its_unit_says(sandbox_root: Path, openbao: OpenBaoServer, claude_bin: Path,
                                             messages_api: MessagesApiStandIn,
                                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # An admin apply provisions the user under a sandbox root.
    root = sandbox_root / "root"
    home = root / "home" / USER
    home.mkdir(parents=True)
    os.chown(home, UID, UID)
    home.chmod(0o750)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text(f"{USER}:x:{UID}:{UID}::/home/{USER}:/bin/sh\n")
    prefix = f"t{os.getpid()}-{int(time.time())}"
    roster = sandbox_root / "roster.yaml"
    roster.write_text(yaml.safe_dump({
        "vault": {"address": openbao.address, "policy_prefix": f"{prefix}-", "path_prefix": f"{prefix}/users"},
        "users": {USER: {}}}))
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    monkeypatch.delenv("CLAUDE_AUTH_NO_ADMIN", raising=False)
    assert main(["apply", "--roster", str(roster), "--root", str(root)]) == 0
    capsys.readouterr()

    # The person's one SSO login (simulated), and claude where the unit's PATH looks: ~/.local/bin.
    access, refresh = f"sk-ant-oat01-{os.urandom(12).hex()}", f"sk-ant-ort01-{os.urandom(12).hex()}"
    messages_api.accept(access)
    for folder in (home / ".claude", home / ".local" / "bin"):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chown(folder, UID, UID)
    (home / ".local" / "bin" / "claude").symlink_to(claude_bin.resolve())
    credentials = home / ".claude" / ".credentials.json"
    credentials.write_text(json.dumps({"claudeAiOauth": {
        "accessToken": access, "refreshToken": refresh, "expiresAt": int(time.time() * 1000) + 3_600_000,
        "scopes": ["user:inference"], "subscriptionType": "enterprise"}, "mcpOAuth": {"kept": True}}))
    os.chown(credentials, UID, UID)
    credentials.chmod(0o600)

    unit_dir = root / "etc/systemd/system"
    settings = unit_settings([(unit_dir / "claude-auth-sync@.service").read_text(),
                              (unit_dir / f"claude-auth-sync@{USER}.service.d/home.conf").read_text()], USER)
    assert settings["User"] == [USER] and settings["ProtectHome"] == ["read-only"]
    assert settings["ProtectSystem"] == ["strict"] and settings["PrivateTmp"] == ["yes"]
    writable = [p.lstrip("-") for p in shlex.split(" ".join(settings["ReadWritePaths"]))]
    system_home = f"/home/{USER}"  # as etc/passwd names it; systemd sets HOME from it for User=
    assert writable == [f"{system_home}/.claude", f"{system_home}/.claude.json",
                        f"{system_home}/.config/claude-auth-sync", f"{system_home}/.local/state/claude-auth-sync"]
    environment = {"HOME": system_home, "USER": USER, "LOGNAME": USER,
                   # Not in the unit: points the real claude at the loopback stand-in.
                   "ANTHROPIC_BASE_URL": messages_api.base_url}
    for assignment in settings.get("Environment", []):
        key, _, value = shlex.split(assignment)[0].partition("=")
        environment[key] = value
    assert environment["VAULT_ADDR"] == openbao.address
    assert environment["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"  # the unit's own, not only the probe's

    # PrivateTmp=yes (its /tmp half). A checkout under /tmp (where the installed tool and claude
    # live in this test) is carried over the fresh /tmp, as an installation outside /tmp would be.
    old_tmp = sandbox_root / "old-tmp"
    old_tmp.mkdir()
    private_tmp = ["mount --rbind /tmp " + shlex.quote(str(old_tmp)), "mount -t tmpfs -o mode=1777 tmpfs /tmp"]
    if REPO.is_relative_to("/tmp"):
        held, inner = shlex.quote(str(old_tmp / REPO.relative_to("/tmp"))), shlex.quote(str(REPO))
        private_tmp += [f"mkdir -p {inner}", f"mount --rbind {held} {inner}"]
    # The machine as the person's account sees it: their home at its passwd path (a private
    # /home in this namespace, so the host's /home is not touched).
    at_home = shlex.quote(system_home)
    script = ["set -e", "mount --make-rprivate /", *private_tmp,
              "mount -t tmpfs -o mode=755 tmpfs /home", f"mkdir {at_home}",
              f"mount --bind {shlex.quote(str(home))} {at_home}",
              "mount -o remount,bind,ro /",                       # ProtectSystem=strict
              "mount -o remount,ro /home",                        # ProtectHome=read-only
              f"mount -o remount,bind,ro {at_home}"]
    for path in writable:                                          # ReadWritePaths=-...
        quoted = shlex.quote(path)
        script.append(f"if [ -e {quoted} ]; then mount --bind {quoted} {quoted}; "
                      f"mount -o remount,bind,rw {quoted}; fi")
    script += [f"if touch {at_home}/probe 2>/dev/null; then echo 'home is writable'; exit 99; fi",
               f"umask {settings['UMask'][0]}",
               "exec setpriv --reuid={0} --regid={0} --clear-groups --no-new-privs "
               "--inh-caps=-all --bounding-set=-all env -i {1} {2}".format(
                   UID, " ".join(shlex.quote(f"{k}={v}") for k, v in environment.items()), settings["ExecStart"][0])]
    result = subprocess.run(["unshare", "-m", "sh", "-c", "\n".join(script)], capture_output=True, text=True,
                            timeout=180, cwd="/")

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith(f"OK {USER}: login works; backed up")
    backup = hvac.Client(url=openbao.address, token=openbao.root_token).secrets.kv.v2.read_secret_version(
        path=f"{prefix}/users/{USER}", mount_point="secret", raise_on_deleted_version=False)["data"]["data"]
    assert json.loads(backup["claude_ai_oauth_json"])["refreshToken"] == refresh
    log = home / ".local/state/claude-auth-sync/sync.log"
    assert re.search(rf"^\S+Z OK {USER}: ", log.read_text(), re.M)
    assert log.stat().st_uid == UID
    assert not (home / "probe").exists()
    assert not (home / ".claude" / "telemetry").exists()
    # Claude's refresh lock was taken and let go; its legacy lock beside ~/.claude cannot be made under
    # ProtectHome=read-only, and the sync goes on without it, as claude itself does.
    assert not (home / ".claude" / ".oauth_refresh.lock").exists() and not (home / ".claude.lock").exists()
    token = (home / ".config/claude-auth-sync/vault-token").read_text().strip()
    assert_no_secrets([result.stdout, result.stderr, log.read_text()], [access, refresh, token])
