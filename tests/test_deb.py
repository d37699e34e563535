"""The Debian package (`make deb`): lintian, and its whole life under a real booted systemd.

Two builds of packaging/deb/build.sh from this checkout: the current version, and a newer one
from a copy whose version is bumped and whose sync timer template gained a line (so the upgrade
brings a unit change). The pinned wheels are cached in /var/cache/claude-auth-test/wheels.

- lintian reports only the tags the package overrides, and README.Debian explains each one.
- In Debian 12 booted in systemd-nspawn (an overlay over the suite's cached base tree, which has
  only Debian's python3 and no network: --private-network), as an administrator would:
  `apt-get install ./claude-auth_<v1>.deb` starts and enables nothing, ships exactly the pinned
  Python distributions and one conffile (the profile.d notice); the admin `apply` enables the timers; a sync is OK; `apt-get install` of the
  newer build with the timers running neither restarts a timer nor runs a sync (same activation,
  same next elapse, same last sync invocation), `plan` then shows the changed template and the next
  `apply` renders it, and a sync of the new build is OK; `apt-get remove` leaves no timer enabled
  or active and keeps the units, the state, the roster, the homes and Vault; `apt-get purge`
  removes the rendered units and /var/lib/claude-auth, keeps the administrator's own drop-in, and
  leaves every home file byte for byte and every Vault policy, token and backup as it was.
Every output, the journal and the sync logs are searched for every token at the end.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support import nspawn
from tests.support.leaks import assert_no_secrets
from tests.support.openbao import bao_binary
from tests.test_booted_systemd import (GOOD_DIGESTS, STAND_IN, STAND_IN_URL, SYNC_TEST_DROP_IN, TEST_UNITS, UNIT_DIR,
                                       VAULT_ADDR, Box, digest, oauth, roster, wait_for)

REPO = Path(__file__).resolve().parent.parent
BUILD_ITEMS = ("pyproject.toml", "README.md", "roster.example.yaml", "reconcile", "templates", "schema", "packaging",
               "deploy", "docs")
TIMERS = ("claude-auth-sync@alice.timer", "claude-auth-sync@bob.timer", "claude-auth-reconcile.timer")
UPGRADE_LINE = "# (a newer build of the package changed this template)"
TIMER_PROPERTIES = ("ActiveEnterTimestampMonotonic", "NextElapseUSecMonotonic", "LastTriggerUSecMonotonic")
HOME_FILES = [f"/home/{user}/{path}" for user in ("alice", "bob") for path in (
    ".config/claude-auth-sync/vault-token", ".local/state/claude-auth-sync/sync.log", ".claude/.credentials.json")]

# What Vault holds for the test, printed without a secret: run inside with the root token in
# VAULT_TOKEN; each person's token is looked up with itself (read from their file, never printed).
VAULT_SNAPSHOT = f"""\
import json, os, urllib.request
def get(path, token=os.environ["VAULT_TOKEN"], method="GET"):
    request = urllib.request.Request("{VAULT_ADDR}/v1/" + path, headers={{"X-Vault-Token": token}}, method=method)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)["data"]
snapshot = {{"policies": sorted(p for p in get("sys/policies/acl", method="LIST")["keys"]
                              if p.startswith("workstation-claude-"))}}
for user in ("alice", "bob"):
    token = open(f"/home/{{user}}/.config/claude-auth-sync/vault-token").read().strip()
    me = get("auth/token/lookup-self", token)
    snapshot[user] = {{"display_name": me["display_name"], "alive": me["ttl"] > 0, "accessor": me["accessor"],
                      "backup_version": get(f"secret/metadata/workstation/claude-users/{{user}}")["current_version"]}}
print(json.dumps(snapshot, sort_keys=True))
"""


def pins() -> dict[str, str]:
    text = (REPO / "packaging" / "requirements.txt").read_text()
    return {name.lower(): version for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)}


def build(source: Path, out: Path) -> Path:
    env = {**os.environ, "OUT": str(out), "BUILD_PYTHON": sys.executable,
           "WHEELHOUSE": str(nspawn.cache_dir() / "wheels")}
    env.pop("DEB_VERSION", None)
    result = subprocess.run([str(source / "packaging" / "deb" / "build.sh")], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return Path(result.stdout.split()[-1])  # the script's last line: the package it wrote (under OUT)


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the current build, a newer build with a changed sync timer template)."""
    work = tmp_path_factory.mktemp("debs")
    first = build(REPO, work / "dist")
    newer = work / "newer"
    newer.mkdir()
    for item in BUILD_ITEMS:
        if (REPO / item).is_dir():
            shutil.copytree(REPO / item, newer / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / item, newer / item)
    pyproject = newer / "pyproject.toml"
    pyproject.write_text(re.sub(r'^version = "([^"]+)"', r'version = "\1.post1"', pyproject.read_text(), count=1,
                                flags=re.M))
    template = newer / "templates" / "claude-auth-sync@.timer.j2"
    template.write_text(template.read_text() + UPGRADE_LINE + "\n")
    second = build(newer, work / "dist")
    assert first != second and first.exists() and second.exists()
    return first, second


def test_lintian_reports_only_the_explained_overrides(debs: tuple[Path, Path]) -> None:
    if shutil.which("lintian") is None:
        pytest.fail("lintian is missing: apt-get install lintian (.ci/run does)")
    result = subprocess.run(["lintian", "--pedantic", "--info", "--show-overrides", str(debs[0])],
                            capture_output=True, text=True, timeout=300)
    tags = [line for line in result.stdout.splitlines() if re.match(r"^[EWIPX]: ", line)]
    assert tags == [], "\n".join(tags)
    overridden = {line.split()[2] for line in result.stdout.splitlines() if line.startswith("O: ")}
    explained = (REPO / "packaging" / "deb" / "README.Debian").read_text().split("\nlintian\n", 1)[1]
    assert overridden and all(f"\n  {tag}" in explained for tag in overridden), overridden


def installed_pins(box: Box) -> dict[str, str]:
    code = ("import importlib.metadata as m, json;"
            "print(json.dumps({d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}))")
    return dict(json.loads(box.sh("/opt/claude-auth/bin/python", "-c", code)[1]))


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory, claude_bin: Path, debs: tuple[Path, Path]) -> Iterator[Box]:
    missing = nspawn.missing_tools()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: apt-get install systemd-container debootstrap (.ci/run does)")
    work = tmp_path_factory.mktemp("deb-booted")
    base = nspawn.base_rootfs(work / "debootstrap.log")
    overlay = nspawn.Overlay(base, work).mount()  # the cached tree is never written
    booted: nspawn.Machine | None = None
    try:
        tree = overlay.root
        (tree / "root" / "debs").mkdir(parents=True)
        for deb in debs:
            shutil.copy2(deb, tree / "root" / "debs" / deb.name)
        root_token = "devroot-" + secrets.token_hex(16)
        config = tree / "etc" / "claude-auth-test"
        config.mkdir(parents=True)
        (config / "openbao.env").write_text(f"BAO_DEV_ROOT_TOKEN_ID={root_token}\n")
        (config / "openbao.env").chmod(0o600)
        (config / "messages_api_unit.py").write_text(STAND_IN)
        (config / "vault_snapshot.py").write_text(VAULT_SNAPSHOT)
        for name, text in TEST_UNITS.items():
            (tree / UNIT_DIR.lstrip("/") / name).write_text(text)
        booted = nspawn.Machine(tree, work / "nspawn.log", read_only={
            "/etc/ssl/certs/ca-certificates.crt": nspawn.HOST_CA_BUNDLE,
            "/usr/local/bin/claude": os.path.realpath(claude_bin),
            "/usr/local/bin/bao": os.path.realpath(bao_binary()),
            "/srv/claude-auth-test/support": str(REPO / "tests" / "support"),
        }).boot()
        box = Box(booted, tree, root_token)
        yield box
        box.machine.stop()
    finally:
        if booted is not None:
            booted.stop(check=False)  # after a failure above; a no-op after the clean stop
        overlay.unmount()
        shutil.rmtree(work / "upper", ignore_errors=True)


def apt(box: Box, *argv: str) -> str:
    """apt-get in the container, which has no network (--private-network): nothing can be downloaded."""
    code, out, err = box.sh("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-q", *argv,
                            check=False)
    assert code == 0, out + err
    return out + err


def unit_files(box: Box) -> list[str]:
    code, out, _ = box.sh("sh", "-c", f"cd {UNIT_DIR} && find . -path './claude-auth*' -o -path './*.wants/claude-auth*'"
                          " | sort", check=False)
    return out.split()


def timer_state(box: Box) -> dict[str, dict[str, str]]:
    state = {}
    for timer in TIMERS:
        _, out, _ = box.sh("systemctl", "show", timer, *(f"-p{p}" for p in TIMER_PROPERTIES), "-pActiveState",
                           "-pUnitFileState")
        state[timer] = dict(line.split("=", 1) for line in out.splitlines())
    return state


def sync_invocations(box: Box) -> dict[str, str]:
    return {user: box.sh("systemctl", "show", "-p", "InvocationID", "--value", f"claude-auth-sync@{user}.service")[1]
            for user in ("alice", "bob")}


def home_digests(box: Box) -> str:
    return box.sh("sha256sum", *HOME_FILES, secret=True)[1]  # digests only, but of secrets: kept out of the texts


def vault_snapshot(box: Box) -> dict[str, object]:
    return dict(json.loads(box.sh("python3", "/etc/claude-auth-test/vault_snapshot.py", admin=True)[1]))


def sync_ok(box: Box, user: str) -> None:
    before = sum(line.startswith("OK") for line in box.journal(f"claude-auth-sync@{user}.service"))
    assert box.start(f"claude-auth-sync@{user}.service") == 0, box.why(f"claude-auth-sync@{user}.service")
    after = sum(line.startswith("OK") for line in box.journal(f"claude-auth-sync@{user}.service"))
    assert after == before + 1, box.why(f"claude-auth-sync@{user}.service")


def test_install_apply_sync_upgrade_remove_purge(machine: Box, debs: tuple[Path, Path]) -> None:
    box, started = machine, time.monotonic()
    first, second = (f"/root/debs/{deb.name}" for deb in debs)
    good = "sk-ant-oat01-" + secrets.token_urlsafe(32)
    box.secrets.add(good)
    box.write(GOOD_DIGESTS, digest(good) + "\n")
    for user in ("alice", "bob"):
        box.sh("useradd", "--create-home", "--shell", "/bin/bash", user)
    box.sh("systemctl", "start", "test-openbao.service", "test-messages-api.service")
    wait_for("OpenBao", lambda: box.sh("python3", "-c", "import urllib.request; urllib.request.urlopen("
                                       f"'{VAULT_ADDR}/v1/sys/health', timeout=1)", check=False)[0] == 0)
    wait_for("the stand-in", lambda: box.sh("test", "-s", STAND_IN_URL, check=False)[0] == 0)
    url = box.sh("cat", STAND_IN_URL)[1].strip()
    # The only Python is Debian's (the package brings its libraries, not an interpreter).
    assert box.sh("sh", "-c", "find / -xdev -path '*/bin/python3*' -type f")[1].split() == ["/usr/bin/python3.11"]

    # --- install: nothing enabled, started or rendered; exactly the pinned distributions --------------
    apt(box, "install", first)
    assert unit_files(box) == []
    assert box.sh("systemctl", "list-units", "--all", "--no-legend", "claude-auth*")[1].strip() == ""
    version = box.sh("claude-auth", "--version")[1].strip()
    assert version == f"claude-auth {debs[0].name.split('_')[1]}", version
    assert box.sh("claude-auth", "validate", "--roster", "/usr/share/claude-auth/roster.example.yaml")[0] == 0
    assert installed_pins(box) == {**pins(), "claude-auth": debs[0].name.split("_")[1]}
    assert box.sh("test", "-e", "/etc/claude-auth/roster.yaml", check=False)[0] == 1
    conffiles = box.sh("dpkg-query", "-W", "-f=${Conffiles}", "claude-auth")[1].split()
    assert conffiles[0::2] == ["/etc/profile.d/claude-auth.sh"], conffiles

    # --- the admin apply enables the timers; a sync is OK ------------------------------------------------
    box.write("/etc/claude-auth/roster.yaml", roster("alice", "bob"))
    code, out, err = box.sh("claude-auth", "apply", admin=True, check=False)
    assert code == 0, out + err
    box.remember_vault_tokens()
    for timer in TIMERS:
        assert box.state(timer) == ("enabled", "active"), timer
    exec_start = box.sh("systemctl", "show", "-p", "ExecStart", "--value", "claude-auth-sync@alice.service")[1]
    assert "path=/opt/claude-auth/bin/claude-auth " in exec_start, exec_start
    box.write(f"{UNIT_DIR}/claude-auth-sync@.service.d/test.conf", SYNC_TEST_DROP_IN.format(url=url))
    box.sh("systemctl", "daemon-reload")
    for user in ("alice", "bob"):
        box.write(f"/home/{user}/.claude/.credentials.json", oauth(good), owner=user, mode="0600")
        box.sh("chown", f"{user}:{user}", f"/home/{user}/.claude")
        sync_ok(box, user)

    # --- upgrade with the timers running: none restarted, no sync run, none lost -----------------------
    timers, invocations = timer_state(box), sync_invocations(box)
    assert all(state["ActiveState"] == "active" for state in timers.values()), timers
    apt(box, "install", second)
    assert box.sh("dpkg-query", "-W", "-f=${Version}", "claude-auth")[1] == debs[1].name.split("_")[1]
    assert timer_state(box) == timers
    assert sync_invocations(box) == invocations
    code, out, err = box.sh("claude-auth", "plan", admin=True, check=False)
    assert code == 2 and out.splitlines() == ["~ unit claude-auth-sync@.timer: content differs",
                                              "Plan: 0 to add, 1 to change, 0 to remove."], out + err
    code, out, err = box.sh("claude-auth", "apply", admin=True, check=False)
    assert code == 0, out + err
    assert UPGRADE_LINE in box.sh("cat", f"{UNIT_DIR}/claude-auth-sync@.timer")[1]
    assert box.sh("claude-auth", "plan", admin=True)[1].splitlines()[-1] == "No changes."
    for timer in TIMERS:
        assert box.state(timer) == ("enabled", "active"), timer
    sync_ok(box, "alice")
    assert installed_pins(box) == {**pins(), "claude-auth": debs[1].name.split("_")[1]}

    # --- remove: no timer enabled or active; units, state, roster, homes and Vault kept ------------------
    homes, vault, rendered = home_digests(box), vault_snapshot(box), unit_files(box)
    apt(box, "remove", "claude-auth")
    for timer in TIMERS:
        assert box.state(timer)[1] == "inactive" and box.state(timer)[0] != "enabled", timer
    assert box.sh("systemctl", "list-units", "--all", "--no-legend", "--state=active", "claude-auth*")[1].strip() == ""
    assert box.sh("systemctl", "list-units", "--all", "--no-legend", "--state=failed", "claude-auth*")[1].strip() == ""
    assert box.sh("test", "-e", "/opt/claude-auth", check=False)[0] == 1
    assert box.sh("test", "-e", "/usr/bin/claude-auth", check=False)[0] == 1
    assert unit_files(box) == [name for name in rendered if ".wants/" not in name]
    assert box.sh("test", "-s", "/var/lib/claude-auth/state.json", check=False)[0] == 0
    assert box.sh("test", "-s", "/etc/claude-auth/roster.yaml", check=False)[0] == 0
    assert box.sh("test", "-s", "/etc/profile.d/claude-auth.sh", check=False)[0] == 0  # a conffile
    assert home_digests(box) == homes and vault_snapshot(box) == vault

    # --- purge: rendered units and /var/lib/claude-auth gone; the admin's drop-in, homes, Vault kept -----
    apt(box, "purge", "claude-auth")
    assert unit_files(box) == ["./claude-auth-sync@.service.d", "./claude-auth-sync@.service.d/test.conf"]
    assert box.sh("test", "-e", "/var/lib/claude-auth", check=False)[0] == 1
    assert box.sh("test", "-e", "/etc/profile.d/claude-auth.sh", check=False)[0] == 1
    assert box.sh("test", "-s", "/etc/claude-auth/roster.yaml", check=False)[0] == 0
    assert box.sh("dpkg-query", "-W", "-f=${db:Status-Status}", "claude-auth", check=False)[1] in ("", "not-installed")
    assert home_digests(box) == homes and vault_snapshot(box) == vault
    assert box.sh("systemctl", "list-units", "--all", "--no-legend", "claude-auth*")[1].strip() == ""

    # --- leak nothing ----------------------------------------------------------------------------------------
    box.remember_vault_tokens()
    _, everything, _ = box.sh("journalctl", "--no-pager", "-o", "cat")
    logs = [box.sh("cat", f"/home/{user}/.local/state/claude-auth-sync/sync.log", check=False)[1]
            for user in ("alice", "bob")]
    box.machine.stop()
    assert_no_secrets([*box.texts, everything, *logs], box.secrets)
    assert time.monotonic() - started < 240
