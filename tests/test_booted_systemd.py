"""The units under a real booted systemd: Debian 12 with systemd 252 as PID 1 in systemd-nspawn.

The other tests reach systemd through `systemctl --root` and a mount-namespace
emulation of the sandbox; this one boots a real one (tests/support/nspawn.py),
so no change can silently break the units on a real machine. Inside it:

- the project installed the documented way (`make install PREFIX=/opt/claude-auth`
  from a checkout under /root, pip from PyPI before the boot), the pinned claude
  CLI and the OpenBao `bao` binary bound in read-only;
- a dev OpenBao and the Messages API stand-in as test units, on the container's
  own loopback (`--private-network`);
- `apply` on the live root, then `plan` says `No changes.`; the installed unit
  files pass `systemd-analyze verify`;
- `systemctl start claude-auth-sync@alice.service` logs OK, then RECOVERED after a
  broken login, with the unit's hardening in force;
- the hourly claude-auth-reconcile.service (no admin token, reduced capabilities,
  over D-Bus) restores a removed drop-in and a disabled timer, and does not
  enable the timer of a person who has no token yet;
- a timer fires (test drop-in: OnActiveSec=5s, AccuracySec=1s, no random delay);
- `apply --prune` stops and disables a departed person's timer;
- the backup-on-change path unit backs a rewrite up within 10 s, a burst of 100
  rewrites in 10 s in at most five versions, and never a broken shape
  (`claude-auth whoami` as the person reads the backup's version);
- the README's uninstall steps leave no unit and no installation behind;
- the container powers off cleanly and leaves no process behind.

The first run builds the cached base tree (about 80 s); later runs take well under
a minute or two. Every output, the journal and the sync logs are searched for
every token at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support import nspawn
from tests.support.leaks import assert_no_secrets
from tests.support.openbao import bao_binary

REPO = Path(__file__).resolve().parent.parent
PREFIX = "/opt/claude-auth"
SOURCE_ITEMS = ("pyproject.toml", "Makefile", "README.md", "reconcile", "templates", "schema", "deploy")
VAULT_ADDR = "http://127.0.0.1:8200"
UNIT_DIR = "/etc/systemd/system"
STAND_IN_URL = "/run/claude-auth-test/messages-api.url"
GOOD_DIGESTS = "/etc/claude-auth-test/good-tokens"
TIMERS = ("claude-auth-sync@alice.timer", "claude-auth-sync@bob.timer", "claude-auth-sync@carol.timer")

# The Messages API stand-in as a unit: the tests' own module, bound in read-only; it answers
# the tokens whose SHA-256 digests are listed in GOOD_DIGESTS (no secret in any file).
STAND_IN = f"""\
import pathlib, sys, time
sys.path.insert(0, "/srv/claude-auth-test/support")
from messages_api import MessagesApiStandIn
api = MessagesApiStandIn()
api.good_digests = set(pathlib.Path("{GOOD_DIGESTS}").read_text().split())
api.start()
url = pathlib.Path("{STAND_IN_URL}")
url.parent.mkdir(parents=True, exist_ok=True)
url.write_text(api.base_url)
while True:
    time.sleep(3600)
"""

TEST_UNITS = {
    "test-openbao.service": f"""\
[Unit]
Description=dev OpenBao for the booted-systemd test
[Service]
EnvironmentFile=/etc/claude-auth-test/openbao.env
Environment=HOME=/var/lib/test-openbao
StateDirectory=test-openbao
ExecStart=/usr/local/bin/bao server -dev -dev-listen-address=127.0.0.1:8200
# The dev server prints its root token; the journal is searched for tokens at the end.
StandardOutput=null
""",
    "test-messages-api.service": """\
[Unit]
Description=Messages API stand-in for the booted-systemd test
[Service]
ExecStart=/usr/bin/python3 /etc/claude-auth-test/messages_api_unit.py
""",
}

# Test-only drop-ins: claude talks to the stand-in; timers fire within seconds, on time.
SYNC_TEST_DROP_IN = "[Service]\nEnvironment=ANTHROPIC_BASE_URL={url}\n"
TIMER_TEST_DROP_IN = "[Timer]\nOnActiveSec=5s\nAccuracySec=1s\nRandomizedDelaySec=0\n"


def roster(*users: str) -> str:
    return (f"vault:\n  address: {VAULT_ADDR}\nusers:\n"
            + "".join(f"  {user}: {{}}\n" for user in users))


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def oauth(access: str, hours: float = 8, scopes: tuple[str, ...] | None = ("user:inference",)) -> str:
    login = {"accessToken": access, "refreshToken": "sk-ant-ort01-" + secrets.token_urlsafe(24),
             "expiresAt": int(time.time() * 1000 + hours * 3_600_000), "subscriptionType": "enterprise"}
    if scopes is not None:
        login["scopes"] = list(scopes)
    return json.dumps({"claudeAiOauth": login})


# Claude's own way to replace the login: a new file renamed over the old one, as the person.
REWRITES = """\
import json, os, secrets, sys, time
path = "/home/alice/.claude/.credentials.json"
access, count, seconds = sys.stdin.read().strip(), int(sys.argv[1]), float(sys.argv[2])  # no token in argv
for n in range(count):
    login = {"accessToken": access, "refreshToken": "sk-ant-ort01-" + secrets.token_urlsafe(24),
             "expiresAt": int(time.time() * 1000) + 9 * 3_600_000 + n, "scopes": ["user:inference"]}
    with open(path + ".tmp", "w") as f:
        json.dump({"claudeAiOauth": login}, f)
    os.rename(path + ".tmp", path)
    time.sleep(seconds / count)
"""


class Box:
    """The booted machine plus what the test saw (for the leak check at the end)."""

    def __init__(self, machine: nspawn.Machine, root: Path, root_token: str) -> None:
        self.machine = machine
        self.root = root
        self.root_token = root_token
        self.texts: list[str] = []
        self.secrets: set[str] = {root_token}

    def sh(self, *command: str, check: bool = True, admin: bool = False, input: str | None = None,
           secret: bool = False) -> tuple[int, str, str]:
        """Run a command inside. Its output joins the leak check unless it is `secret` (reads a token)."""
        # The admin token goes through the environment, never the argument list.
        env = {"VAULT_TOKEN": self.root_token} if admin else None
        result = self.machine.sh(list(command), check=check, env=env, input=input, timeout=300)
        if not secret:
            self.texts += [result.stdout, result.stderr]
        return result.returncode, result.stdout, result.stderr

    def write(self, path: str, text: str, *, owner: str | None = None, mode: str = "0644") -> None:
        self.sh("install", "-D", "-m", mode, *(("-o", owner, "-g", owner) if owner else ()), "/dev/stdin", path,
                input=text)

    def journal(self, unit: str) -> list[str]:
        _, out, _ = self.sh("journalctl", "--no-pager", "-o", "cat", "-u", unit)
        return out.splitlines()

    def why(self, unit: str) -> str:
        """For a failure message: the unit's status and its whole journal, systemd's own lines included."""
        status = self.sh("systemctl", "status", "--no-pager", "-l", unit, check=False)[1]
        return status + self.sh("journalctl", "--no-pager", "-o", "short", "-u", unit, check=False)[1]

    def start(self, unit: str) -> int:
        code, _, _ = self.sh("systemctl", "start", unit, check=False)
        return code

    def state(self, unit: str) -> tuple[str, str]:
        _, enabled, _ = self.sh("systemctl", "is-enabled", unit, check=False)
        _, active, _ = self.sh("systemctl", "is-active", unit, check=False)
        return enabled.strip(), active.strip()

    def remember_vault_tokens(self) -> None:
        for user in ("alice", "bob", "carol"):
            code, out, _ = self.sh("cat", f"/home/{user}/.config/claude-auth-sync/vault-token", check=False,
                                   secret=True)
            if code == 0 and out.strip():
                self.secrets.add(out.strip())


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, claude_bin: Path) -> Iterator[Box]:
    missing = nspawn.missing_tools()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: apt-get install systemd-container debootstrap (.ci/run does)")
    work = tmp_path_factory.mktemp("booted")
    base = nspawn.base_rootfs(work / "debootstrap.log")
    overlay = nspawn.Overlay(base, work).mount()
    machine: nspawn.Machine | None = None
    try:
        tree = overlay.root
        # A checkout under /root (0700), as an administrator would have it; the install goes to /opt.
        source = tree / "root" / "src"
        source.mkdir(parents=True)
        for item in SOURCE_ITEMS:
            if (REPO / item).is_dir():
                shutil.copytree(REPO / item, source / item, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(REPO / item, source / item)
        pip_cache = nspawn.cache_dir() / "pip"
        pip_cache.mkdir(parents=True, exist_ok=True)
        installed = nspawn.run_once(tree, ["make", "-C", "/root/src", "install", f"PREFIX={PREFIX}"],
                                    binds={"/root/.cache/pip": str(pip_cache)},
                                    read_only={"/etc/ssl/certs/ca-certificates.crt": nspawn.HOST_CA_BUNDLE})
        assert installed.returncode == 0, installed.stdout + installed.stderr

        root_token = "devroot-" + secrets.token_hex(16)
        config = tree / "etc" / "claude-auth-test"
        config.mkdir(parents=True)
        (config / "openbao.env").write_text(f"BAO_DEV_ROOT_TOKEN_ID={root_token}\n")
        (config / "openbao.env").chmod(0o600)
        (config / "messages_api_unit.py").write_text(STAND_IN)
        for name, text in TEST_UNITS.items():
            (tree / UNIT_DIR.lstrip("/") / name).write_text(text)

        machine = nspawn.Machine(tree, work / "nspawn.log", read_only={
            "/etc/ssl/certs/ca-certificates.crt": nspawn.HOST_CA_BUNDLE,
            "/usr/local/bin/claude": os.path.realpath(claude_bin),
            "/usr/local/bin/bao": os.path.realpath(bao_binary()),
            "/srv/claude-auth-test/support": str(REPO / "tests" / "support"),
        }).boot()
        result = Box(machine, tree, root_token)
        yield result
        result.machine.stop()  # also raises when a process is left behind
    finally:
        if machine is not None:
            machine.stop(check=False)  # after a failure above; a no-op after the clean stop
        overlay.unmount()
        shutil.rmtree(work / "upper", ignore_errors=True)


def wait_for(what: str, probe: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(probe) and probe():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_units_under_a_booted_systemd(box: Box) -> None:
    started = time.monotonic()
    good, broken = "sk-ant-oat01-" + secrets.token_urlsafe(32), "sk-ant-oat01-" + secrets.token_urlsafe(32)
    box.secrets |= {good, broken}
    box.write(GOOD_DIGESTS, digest(good) + "\n")  # the stand-in accepts only `good`
    for user in ("alice", "bob", "carol"):
        box.sh("useradd", "--create-home", "--shell", "/bin/bash", user)
    box.sh("systemctl", "start", "test-openbao.service", "test-messages-api.service")
    wait_for("OpenBao", lambda: box.sh("python3", "-c", "import urllib.request; urllib.request.urlopen("
                                       f"'{VAULT_ADDR}/v1/sys/health', timeout=1)", check=False)[0] == 0)
    wait_for("the stand-in", lambda: box.sh("test", "-s", STAND_IN_URL, check=False)[0] == 0)
    url = box.sh("cat", STAND_IN_URL)[1].strip()

    # --- apply on the live root, then plan finds nothing to do --------------------------------
    box.write("/etc/claude-auth/roster.yaml", roster("alice", "bob"))
    code, out, err = box.sh("claude-auth", "apply", admin=True, check=False)
    assert code == 0, out + err
    box.remember_vault_tokens()
    code, out, err = box.sh("claude-auth", "plan", admin=True, check=False)
    assert (code, out.splitlines()[-1]) == (0, "No changes."), out + err
    for timer in TIMERS[:2]:
        assert box.state(timer) == ("enabled", "active"), timer
    assert box.state("claude-auth-backup@alice.path") == ("enabled", "active")
    code, out, err = box.sh("systemd-analyze", "verify", "claude-auth-sync@alice.service",
                            "claude-auth-sync@alice.timer", "claude-auth-backup@alice.service",
                            "claude-auth-backup@alice.path", "claude-auth-reconcile.service",
                            "claude-auth-reconcile.timer", check=False)
    assert code == 0 and "claude-auth" not in err, out + err

    # --- a sync started by hand: OK, then RECOVERED after a broken login -----------------------
    box.write(f"{UNIT_DIR}/claude-auth-sync@.service.d/test.conf", SYNC_TEST_DROP_IN.format(url=url))
    box.sh("systemctl", "daemon-reload")
    box.write("/home/alice/.claude/.credentials.json", oauth(good), owner="alice", mode="0600")
    box.sh("chown", "alice:alice", "/home/alice/.claude")
    assert box.start("claude-auth-sync@alice.service") == 0, box.why("claude-auth-sync@alice.service")
    assert any(line.startswith("OK") for line in box.journal("claude-auth-sync@alice.service"))

    # A raced refresh left an older, rejected login behind (older: the backup on change keeps the newer backup).
    box.write("/home/alice/.claude/.credentials.json", oauth(broken, hours=7), owner="alice", mode="0600")
    assert box.start("claude-auth-sync@alice.service") == 0, box.why("claude-auth-sync@alice.service")
    assert any(line.startswith("RECOVERED") for line in box.journal("claude-auth-sync@alice.service"))
    restored = json.loads(box.sh("cat", "/home/alice/.claude/.credentials.json", secret=True)[1])
    assert restored["claudeAiOauth"]["accessToken"] == good
    # ...with the unit's hardening in force (the test drop-in only adds the stand-in's address).
    _, shown, _ = box.sh("systemctl", "show", "claude-auth-sync@alice.service", "-p", "User", "-p",
                         "ProtectSystem", "-p", "ProtectHome", "-p", "NoNewPrivileges", "-p", "PrivateTmp",
                         "-p", "CapabilityBoundingSet", "-p", "RestrictNamespaces", "-p", "DropInPaths")
    settings = dict(line.split("=", 1) for line in shown.splitlines())
    assert settings["User"] == "alice" and settings["ProtectSystem"] == "strict"
    assert settings["ProtectHome"] == "read-only" and settings["NoNewPrivileges"] == "yes"
    assert settings["PrivateTmp"] == "yes" and settings["CapabilityBoundingSet"] == ""
    assert settings["RestrictNamespaces"] == "yes"
    assert sorted(settings["DropInPaths"].split()) == [
        f"{UNIT_DIR}/claude-auth-sync@.service.d/test.conf", f"{UNIT_DIR}/claude-auth-sync@alice.service.d/home.conf"]

    # --- the hourly run repairs a removed drop-in and a disabled timer ------------------------
    box.sh("rm", f"{UNIT_DIR}/claude-auth-sync@alice.service.d/home.conf")
    box.sh("systemctl", "disable", "--now", "claude-auth-sync@bob.timer")
    box.write("/etc/claude-auth/roster.yaml", roster("alice", "bob", "carol"))  # carol has no token yet
    assert box.start("claude-auth-reconcile.service") == 0, box.why("claude-auth-reconcile.service")
    assert box.sh("test", "-s", f"{UNIT_DIR}/claude-auth-sync@alice.service.d/home.conf", check=False)[0] == 0
    assert box.state("claude-auth-sync@bob.timer") == ("enabled", "active")
    hourly = box.journal("claude-auth-reconcile.service")
    assert any(line.startswith("WARN carol: needs an admin run") for line in hourly), hourly
    # carol's timer waits for the admin run: a sync without a token could only FAIL.
    assert box.state("claude-auth-sync@carol.timer")[0] in ("disabled", "not-found"), hourly
    code, out, err = box.sh("claude-auth", "apply", admin=True, check=False)
    assert code == 0, out + err
    box.remember_vault_tokens()
    assert box.state("claude-auth-sync@carol.timer") == ("enabled", "active"), out

    # --- a timer fires --------------------------------------------------------------------------
    def invocation() -> str:
        return box.sh("systemctl", "show", "-p", "InvocationID", "--value", "claude-auth-sync@alice.service")[1]

    before = invocation()
    box.write(f"{UNIT_DIR}/claude-auth-sync@alice.timer.d/test.conf", TIMER_TEST_DROP_IN)
    box.sh("systemctl", "daemon-reload")
    box.sh("systemctl", "restart", "claude-auth-sync@alice.timer")
    wait_for("the timer to fire", lambda: invocation() != before, timeout=30)
    wait_for("the timed sync to end",
             lambda: box.state("claude-auth-sync@alice.service")[1] in ("inactive", "failed"), timeout=60)
    oks = [line for line in box.journal("claude-auth-sync@alice.service") if line.startswith("OK")]
    assert len(oks) == 2, oks  # the first hand-started one and the timer's
    box.sh("rm", "-r", f"{UNIT_DIR}/claude-auth-sync@alice.timer.d")
    box.sh("systemctl", "daemon-reload")

    # --- apply --prune stops and disables a departed person's timer -------------------------------
    box.write("/etc/claude-auth/roster.yaml", roster("alice", "carol"))
    code, out, err = box.sh("claude-auth", "apply", "--prune", admin=True, check=False)
    assert code == 0, out + err
    assert box.state("claude-auth-sync@bob.timer") == ("disabled", "inactive"), out
    code, out, err = box.sh("claude-auth", "plan", admin=True, check=False)
    assert (code, out.splitlines()[-1]) == (0, "No changes."), out + err

    # --- backup on change: the path unit backs each rewrite up within seconds (issue 24) ----------
    def me() -> dict:
        return json.loads(box.sh("runuser", "-u", "alice", "--", "claude-auth", "whoami", "--json")[1])

    def backup_runs() -> int:
        return len([line for line in box.journal("claude-auth-backup@alice.service")
                    if line.split(" ", 1)[0] in ("OK", "SKIP", "FAIL")])

    first = me()
    assert first["backup_path_unit"] == "enabled" and first["timer"] == "enabled", first
    assert first["login"] == "ok" and first["vault_token_ttl_seconds"] > 0, first
    box.write("/etc/claude-auth-test/rewrites.py", REWRITES)
    began = time.monotonic()
    box.sh("runuser", "-u", "alice", "--", "python3", "/etc/claude-auth-test/rewrites.py", "1", "0", input=good)
    wait_for("the backup of one rewrite", lambda: me()["backup_version"] > first["backup_version"], timeout=10)
    one = me()["backup_version"]
    print(f"one rewrite backed up in {time.monotonic() - began:.1f} s")
    # 100 rewrites in 10 s: the run waits for the file to be still, so a handful of versions, not 100.
    box.sh("runuser", "-u", "alice", "--", "python3", "/etc/claude-auth-test/rewrites.py", "100", "10", input=good)
    wait_for("the burst's backup", lambda: box.state("claude-auth-backup@alice.service")[1] == "inactive"
             and me()["backup_version"] > one, timeout=30)
    time.sleep(2)
    burst = me()["backup_version"] - one
    assert 1 <= burst <= 5, burst
    latest = json.loads(box.sh("cat", "/home/alice/.claude/.credentials.json", secret=True)[1])
    # A broken shape (a refresh that dropped scopes, #85262) written to the file is never backed up.
    runs = backup_runs()
    box.write("/home/alice/.claude/.credentials.json", oauth(good, hours=10, scopes=None), owner="alice",
              mode="0600")
    wait_for("the backup run on the broken shape", lambda: backup_runs() > runs, timeout=15)
    assert me()["backup_version"] == one + burst
    assert any("holds a broken login" in line for line in box.journal("claude-auth-backup@alice.service"))
    assert not any(line.startswith("FAIL") for line in box.journal("claude-auth-backup@alice.service"))
    box.write("/home/alice/.claude/.credentials.json", json.dumps(latest), owner="alice", mode="0600")
    print(box.sh("runuser", "-u", "alice", "--", "claude-auth", "whoami")[1])  # the README's example

    # --- the README's uninstall steps, word for word ----------------------------------------------
    readme = (REPO / "README.md").read_text()
    steps = readme.split("- **Uninstall:**", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    steps = "\n".join(line.strip() for line in steps.splitlines()).replace("cd - && ", "cd /root/src && ")
    code, out, err = box.sh("bash", "-euo", "pipefail", "-c", steps, check=False)
    assert code == 0, out + err
    for what in ("--state=active", "--state=failed"):
        assert box.sh("systemctl", "list-units", "--all", what, "--no-legend", "claude-auth*")[1].strip() == ""
    assert box.sh("systemctl", "list-unit-files", "--no-legend", "claude-auth*", check=False)[1].strip() == ""
    assert box.sh("test", "-e", PREFIX, check=False)[0] == 1
    assert box.sh("test", "-L", "/usr/local/bin/claude-auth", check=False)[0] == 1

    # --- leave nothing behind, leak nothing --------------------------------------------------------
    box.remember_vault_tokens()
    _, everything, _ = box.sh("journalctl", "--no-pager", "-o", "cat")
    logs = [box.sh("cat", f"/home/{user}/.local/state/claude-auth-sync/sync.log", check=False)[1]
            for user in ("alice", "bob", "carol")]
    box.machine.stop()
    assert_no_secrets([*box.texts, everything, *logs], box.secrets)
    assert time.monotonic() - started < 240
