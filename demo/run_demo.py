"""`make demo`: the whole claude-auth lifecycle on an embedded default.

Starts a real OpenBao dev server on a free loopback port, a sandbox root folder
(.demo/root, with its own etc/passwd and homes), and a loopback stand-in for the
Messages API; then runs the real `claude-auth` commands on roster.example.yaml.
Syncs run as the person's own uid, with the real pinned `claude` CLI when
`make test` installed it (else a clearly labelled stub). Everything it started
is stopped at the end, whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import hvac

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.messages_api import MessagesApiStandIn  # noqa: E402
from tests.support.openbao import OpenBaoServer  # noqa: E402
from tests.support.pinned import pinned_claude  # noqa: E402

SANDBOX = Path(os.environ.get("CLAUDE_AUTH_DEMO_DIR") or REPO / ".demo").resolve()
ROOT = SANDBOX / "root"
EXAMPLE_ROSTER = REPO / "roster.example.yaml"
ROSTER = SANDBOX / "roster.yaml"
"""The demo's /etc/claude-auth/roster.yaml: a copy of the example, edited when Dave leaves."""
USERS = {"alice": 5001, "bob": 5002, "carol": 5003, "dave": 5004}
STUB_CLAUDE = """#!/bin/sh
# DEMO STUB, not the real Claude CLI: answers like `claude -p` would.
cred="$HOME/.claude/.credentials.json"
case "$CLAUDE_CODE_OAUTH_TOKEN" in sk-ant-oat01-demogood*) echo AUTH_OK; exit 0;; esac
if grep -Eq '"accessToken": *"(demo-good-|sk-ant-oat01-demogood)' "$cred" 2>/dev/null; then echo AUTH_OK; exit 0; fi
echo 'Failed to authenticate. API Error: 401 Invalid bearer token'; exit 1
"""


def say(sentence: str) -> None:
    print(f"\n==> {sentence}", flush=True)


AS_USER = True
"""Run syncs as the person's uid; False when this checkout is out of that uid's reach."""
SANDBOX_MARKER = ".claude-auth-demo"


def run(args: list[str], *, env: dict[str, str], user: str | None = None, ok: tuple[int, ...] = (0,),
        show: bool = True, stdin: str | None = None, piped_from: str = "") -> subprocess.CompletedProcess[str]:
    shown = " ".join(["claude-auth", *args])
    as_uid = user is not None and AS_USER
    if show:
        print(f"$ {piped_from}{'sudo -u ' + user + ' ' if as_uid and user else ''}{shown}", flush=True)
    if not AS_USER and args[0] in ("plan", "apply"):
        ok = (*ok, 1)  # their ERROR lines: the people cannot run this checkout's claude-auth (the NOTE)
    uid = USERS[user] if as_uid and user else None
    result = subprocess.run([sys.executable, "-m", "reconcile", *args], env=env, text=True, input=stdin,
                            capture_output=True, user=uid, group=uid, cwd=str(ROOT) if user else None)
    output = (result.stdout + result.stderr).rstrip()
    if show and output:
        print(output, flush=True)
    if result.returncode not in ok:
        raise SystemExit(f"demo: `{shown}` exited {result.returncode}, expected {ok}")
    if show:
        print(f"(exit {result.returncode})", flush=True)
    return result


def can_run_as(uid: int) -> bool:
    """Whether that uid can start this checkout's interpreter (a clone under /root, 0700, is out of reach)."""
    try:
        probe = subprocess.run([sys.executable, "-c", "import reconcile"], user=uid, group=uid, cwd="/",
                               env={"PYTHONPATH": str(REPO)}, capture_output=True)
    except OSError:  # the interpreter itself cannot be started by that uid
        return False
    return probe.returncode == 0


def make_sandbox() -> None:
    if SANDBOX.exists():
        ours = SANDBOX == REPO / ".demo" or (SANDBOX / SANDBOX_MARKER).exists() or not any(SANDBOX.iterdir())
        if not ours:
            raise SystemExit(f"demo: {SANDBOX} exists and is not a demo sandbox; refusing to delete it")
        shutil.rmtree(SANDBOX)
    (ROOT / "etc").mkdir(parents=True)
    (SANDBOX / SANDBOX_MARKER).touch()
    lines = ["root:x:0:0:root:/root:/bin/sh"]
    for name, uid in USERS.items():
        home = ROOT / "home" / name
        home.mkdir(parents=True)
        os.chown(home, uid, uid)
        home.chmod(0o750)
        lines.append(f"{name}:x:{uid}:{uid}::/home/{name}:/bin/sh")
    (ROOT / "etc" / "passwd").write_text("\n".join(lines) + "\n")
    # The sandbox must be reachable by the demo users' uids.
    for folder in (SANDBOX, ROOT, ROOT / "home"):
        folder.chmod(0o755)


def write_login(name: str, access_token: str, refresh_token: str) -> None:
    """What `claude auth login --claudeai --sso` leaves behind, with demo values."""
    uid = USERS[name]
    claude_dir = ROOT / "home" / name / ".claude"
    claude_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(claude_dir, uid, uid)
    credentials = claude_dir / ".credentials.json"
    document = {
        "claudeAiOauth": {"accessToken": access_token, "refreshToken": refresh_token,
                          "expiresAt": int(time.time() * 1000) + 8 * 3600 * 1000,
                          "scopes": ["user:inference", "user:profile"], "subscriptionType": "enterprise"},
        "mcpOAuth": {"github": {"accessToken": "demo-mcp-token-kept-as-is"}},
    }
    credentials.write_text(json.dumps(document, indent=2))
    credentials.chmod(0o600)
    os.chown(credentials, uid, uid)


def find_claude(api: MessagesApiStandIn) -> tuple[Path, str]:
    configured = os.environ.get("CLAUDE_AUTH_DEMO_CLAUDE") or str(pinned_claude())
    if os.access(configured, os.X_OK):
        return Path(configured), f"the real Claude Code CLI ({configured}) against a loopback Messages API stand-in"
    stub_dir = SANDBOX / "stub-bin"
    stub_dir.mkdir(parents=True, exist_ok=True)
    stub = stub_dir / "claude"
    stub.write_text(STUB_CLAUDE)
    stub.chmod(0o755)
    return stub, "a DEMO STUB of the claude CLI (run `make test` first to use the real pinned CLI)"


def main() -> int:
    started = time.monotonic()
    server = OpenBaoServer()
    api = MessagesApiStandIn()
    try:
        say("Start a throwaway OpenBao dev server, a Messages API stand-in and a sandbox root folder.")
        server.start()
        api.start()
        make_sandbox()
        shutil.copyfile(EXAMPLE_ROSTER, ROSTER)
        claude, claude_note = find_claude(api)
        print(f"OpenBao {server.address}; sandbox {ROOT}; claude: {claude_note}")
        global AS_USER
        AS_USER = can_run_as(USERS["alice"])
        if not AS_USER:
            print("NOTE: this checkout is out of reach of the demo's uids (a folder on its path is private),"
                  " so its syncs run as root with HOME set to the person's home, and plan and apply"
                  " say per person that the units could not run it (no timers); clone it elsewhere"
                  " (e.g. /srv or /var/tmp) to see them run as the person's own uid.")

        root_env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "CLAUDE_AUTH_"))}
        admin_env = {**root_env, "VAULT_ADDR": server.address, "VAULT_TOKEN": server.root_token}
        common = ["--roster", str(ROSTER), "--root", str(ROOT)]

        say("Validate the example roster.")
        run(["validate", "--roster", str(ROSTER)], env=admin_env)

        say("Plan: compare the roster with Vault and the sandbox; nothing is changed yet.")
        run(["plan", *common], env=admin_env, ok=(2,))

        say("Apply with an admin Vault token: policies, scoped tokens, folders, units, timers.")
        run(["apply", *common], env=admin_env)

        say("Plan again: the world now matches the roster.")
        run(["plan", *common], env=admin_env)

        say("Alice's Vault token is revoked by mistake; the hourly run, with no admin token, re-mints it"
            " with this host's own host token (written by the admin apply).")
        alice_token = (ROOT / "home/alice/.config/claude-auth-sync/vault-token").read_text().strip()
        hvac.Client(url=server.address, token=server.root_token).auth.token.revoke(alice_token)
        hourly_env = {**root_env, "VAULT_ADDR": server.address, "CLAUDE_AUTH_NO_ADMIN": "1"}
        run(["apply", *common], env=hourly_env)

        say("Alice logs in to Claude once (simulated SSO login), and her first sync proves it and backs it up.")
        write_login("alice", "demo-good-access-1", "demo-refresh-1")
        api.accept("demo-good-access-1")
        user_env = {
            "PATH": f"{claude.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(ROOT / "home" / "alice"), "USER": "alice", "LANG": "C.UTF-8",
            "VAULT_ADDR": server.address, "ANTHROPIC_BASE_URL": api.base_url,
            "PYTHONPATH": str(REPO),
        }
        run(["sync", "--user", "alice"], env=user_env, user="alice")

        say("Another tool (a Vaultwarden helper) keeps its own key at Alice's Vault path.")

        admin = hvac.Client(url=server.address, token=server.root_token)
        admin.secrets.kv.v2.patch(path="workstation/claude-users/alice", mount_point="secret",
                                  secret={"vaultwarden_master_password": "kept-by-another-tool"})
        print("$ vault kv patch secret/workstation/claude-users/alice vaultwarden_master_password=...")

        say("Claude rotates Alice's login; the next sync backs the new one up by merging, keeping the other key.")
        write_login("alice", "demo-good-access-2", "demo-refresh-2")
        api.accept("demo-good-access-2")
        run(["sync", "--user", "alice"], env=user_env, user="alice")
        stored = admin.secrets.kv.v2.read_secret_version(path="workstation/claude-users/alice",
                                                         mount_point="secret", raise_on_deleted_version=False)
        keys = sorted(stored["data"]["data"])
        print(f"keys at secret/workstation/claude-users/alice (version {stored['data']['metadata']['version']}): "
              f"{', '.join(keys)}")
        if "vaultwarden_master_password" not in keys:
            raise SystemExit("demo: the other tool's key was lost")

        say("Alice's local login breaks (a raced refresh leaves a token the API rejects); sync restores the backup.")
        write_login("alice", "demo-broken-access-3", "demo-refresh-3")
        run(["sync", "--user", "alice"], env=user_env, user="alice")

        say("Dave runs many Claude agents at once; the admin switches him to setup-token mode in the roster.")
        text = ROSTER.read_text()
        ROSTER.write_text(text.replace("    authentik_user: dave@example.org\n",
                                       "    authentik_user: dave@example.org\n    claude_login: setup-token\n"))
        print(f"(set claude_login: setup-token for dave in {ROSTER})")
        run(["plan", *common], env=admin_env, ok=(2,))
        run(["apply", *common], env=admin_env)
        drop_in = ROOT / "etc/systemd/system/claude-auth-sync@dave.service.d/home.conf"
        login_line = next(line for line in drop_in.read_text().splitlines() if "CLAUDE_AUTH_LOGIN" in line)
        print(f"{drop_in.relative_to(ROOT.parent)}: {login_line}")

        say("Dave stores the long-lived token from `claude setup-token`; his next sync installs it.")
        setup_token = "sk-ant-oat01-demogood-" + os.urandom(24).hex()  # what `claude setup-token` prints
        api.accept(setup_token)
        write_login("dave", "demo-good-access-dave", "demo-refresh-dave")  # his earlier SSO login
        api.accept("demo-good-access-dave")
        dave_env = {**user_env, "HOME": str(ROOT / "home" / "dave"), "USER": "dave",
                    "CLAUDE_AUTH_LOGIN": login_line.split("=")[-1].strip('"')}  # as the drop-in sets it
        printed = ("✓ Long-lived authentication token created\n\nYour OAuth token (valid for 1 year):\n\n"
                   f"{setup_token}\n\nStore this token securely. You won't be able to see it again.\n")
        run(["setup-token", "--user", "dave"], env=dave_env, user="dave", stdin=printed,
            piped_from="claude setup-token | ")  # all that claude printed: its "valid for" sets the expiry
        run(["sync", "--user", "dave"], env=dave_env, user="dave")
        installed = json.loads((ROOT / "home/dave/.claude/.credentials.json").read_text())
        print("dave's ~/.claude/.credentials.json: claudeAiOauth keys "
              f"{sorted(installed['claudeAiOauth'])} (no refreshToken), other keys kept: "
              f"{sorted(k for k in installed if k != 'claudeAiOauth')}")

        say("Status: one row per person.")
        run(["status", *common], env=admin_env)

        say("Dave leaves: remove him from the roster; plan lists his leftovers (and the host's token role,"
            " which must no longer allow his policy); apply --prune removes them.")
        head, _, _ = ROSTER.read_text().partition("  # Fields kept for compatibility")
        ROSTER.write_text(head)
        print(f"(removed dave from {ROSTER})")
        run(["plan", *common], env=admin_env, ok=(2,))
        run(["apply", "--prune", *common], env=admin_env)
        run(["plan", *common], env=admin_env)

        print(f"\nDemo finished in {time.monotonic() - started:.1f} s; stopping OpenBao and the stand-in.")
        return 0
    finally:
        api.stop()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
