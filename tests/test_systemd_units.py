"""The unit files (rendered, verified and scored by the real systemd-analyze) and
reconcile.local.systemd against the real `systemctl --root`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reconcile.local import systemd
from reconcile.local.apply import write_unit
from reconcile.local.desired import (RECONCILE_SERVICE, RECONCILE_TIMER, SYNC_SERVICE, SYNC_TIMER,
                                     render_drop_in, render_units, systemd_environment, systemd_exec_word)
from reconcile.roster.values import Roster, StatusSettings, SyncSettings, User, VaultSettings
from reconcile.local.systemd import SystemdError, parse_is_enabled

REPO = Path(__file__).resolve().parent.parent
EXEC = str(REPO / ".venv" / "bin" / "claude-auth")
MAX_EXPOSURE = 3.5

# The real systemd tools are required, never skipped (.ci/run installs systemd when missing).
assert shutil.which("systemd-analyze") and shutil.which("systemctl"), "tests need systemd-analyze and systemctl"


def roster(address: str | None = None) -> Roster:
    return Roster(users={"alice": User("alice")}, vault=VaultSettings(address=address))


def units(r: Roster, exec_path: str = "/usr/local/bin/claude-auth",
          roster_path: str = "/etc/claude-auth/roster.yaml") -> dict[str, str]:
    return {unit.name: unit.text for unit in render_units(r, exec_path, roster_path)}


def directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


# --- rendering ------------------------------------------------------------


def test_sync_drop_in_names_the_persons_own_home() -> None:
    unit = render_drop_in("alice", "/srv/homes/alice")
    assert unit.name == "claude-auth-sync@alice.service.d/home.conf" and unit.user == "alice"
    lines = directives(unit.text)
    assert lines == [
        "[Service]",
        'Environment="PATH=/srv/homes/alice/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"',
        'Environment="CLAUDE_AUTH_LOGIN=oauth"',
        "ReadWritePaths=-/srv/homes/alice/.claude -/srv/homes/alice/.claude.json "
        "-/srv/homes/alice/.config/claude-auth-sync -/srv/homes/alice/.local/state/claude-auth-sync",
    ]


def test_sync_drop_in_carries_the_login_mode() -> None:
    text = render_drop_in("alice", "/home/alice", "setup-token").text
    assert 'Environment="CLAUDE_AUTH_LOGIN=setup-token"' in directives(text)


def test_sync_drop_in_quotes_a_home_with_specifier_characters() -> None:
    text = render_drop_in("bob", "/home/odd %h $dir").text
    assert not re.search(r"(?<!%)%h", "\n".join(directives(text)))  # no specifier left to expand
    assert '"-/home/odd %%h $dir/.claude"' in text  # quoted for the blank; $ is literal in path lists


def test_sync_service() -> None:
    text = units(roster(address="https://vault.example.org:8200"))[SYNC_SERVICE]
    lines = directives(text)
    for expected in (
        "Type=oneshot",
        "User=%i",
        "ExecStart=/usr/local/bin/claude-auth sync --user %i",
        "SyslogIdentifier=claude-auth-sync",
        "TimeoutStartSec=5min",
        'Environment="VAULT_ADDR=https://vault.example.org:8200"',
        'Environment="CLAUDE_AUTH_KV_MOUNT=secret"',
        'Environment="CLAUDE_AUTH_PATH_PREFIX=workstation/claude-users"',
        'Environment="CLAUDE_AUTH_POLICY_PREFIX=workstation-claude-"',
        'Environment="CLAUDE_AUTH_MODEL=haiku"',
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
    ):
        assert expected in lines, expected
    # In a system unit %h is root's home whatever User= says (systemd.unit(5)): the template must
    # not use it; the person's paths come from their drop-in. No W^X ban: claude's engine JIT-compiles.
    assert "%h" not in "\n".join(lines)
    assert not any(line.startswith(("ReadWritePaths=", 'Environment="PATH=')) for line in lines)
    assert not any(line.startswith("MemoryDenyWriteExecute") for line in lines)
    assert not any(line.startswith(("PrivateNetwork", "IPAddressDeny")) for line in lines)


def test_sync_service_without_a_vault_address_says_where_it_comes_from() -> None:
    text = units(roster())[SYNC_SERVICE]
    assert "VAULT_ADDR=" not in "\n".join(directives(text))
    assert "give VAULT_ADDR" in text and "drop-in" in text


def test_sync_timer() -> None:
    r = Roster(users={}, sync=SyncSettings(interval="1h30m", interval_seconds=5400,
                                           randomized_delay="0", randomized_delay_seconds=0))
    lines = directives(units(r)[SYNC_TIMER])
    assert lines == [
        "[Unit]",
        "Description=claude-auth sync for %i every 1h30m",
        "[Timer]",
        "OnBootSec=5min",
        "OnUnitActiveSec=1h30m",
        "RandomizedDelaySec=0s",
        "Unit=claude-auth-sync@%i.service",
        "[Install]",
        "WantedBy=timers.target",
    ]
    assert "Persistent= would" in units(r)[SYNC_TIMER]  # the comment says why it is not used


def test_reconcile_service_and_timer() -> None:
    r = Roster(users={}, status=StatusSettings(prometheus_textfile="/var/lib/node_exporter/textfile/claude.prom"))
    rendered = units(r, roster_path="/etc/claude auth/roster.yaml")
    lines = directives(rendered[RECONCILE_SERVICE])
    assert 'ExecStart=/usr/local/bin/claude-auth apply --roster "/etc/claude auth/roster.yaml"' in lines
    assert "Environment=CLAUDE_AUTH_NO_ADMIN=1" in lines
    assert not any("VAULT_TOKEN" in line for line in lines)
    assert "User=" not in "\n".join(lines)  # root
    assert "ReadWritePaths=/etc/systemd/system" in lines
    assert "ReadWritePaths=-/var/lib/node_exporter/textfile" in lines
    assert "StateDirectory=claude-auth" in lines
    timer = directives(rendered[RECONCILE_TIMER])
    assert "OnUnitActiveSec=1h" in timer and "Unit=claude-auth-reconcile.service" in timer
    assert "WantedBy=timers.target" in timer


def test_rendering_is_deterministic() -> None:
    assert units(roster()) == units(roster())


@pytest.mark.parametrize(("word", "quoted"), [
    ("/usr/bin/claude-auth", "/usr/bin/claude-auth"),
    ("/opt/a b/roster.yaml", '"/opt/a b/roster.yaml"'),
    ("/opt/100%/x", "/opt/100%%/x"),
    ("/opt/$HOME/x", "/opt/$$HOME/x"),
    ('/opt/"q"\\', '"/opt/\\"q\\"\\\\"'),
])
def test_exec_words_are_quoted_for_systemd(word: str, quoted: str) -> None:
    assert systemd_exec_word(word) == quoted


def test_environment_values_are_quoted_for_systemd() -> None:
    assert systemd_environment("X", 'a "b" 50%') == '"X=a \\"b\\" 50%%"'
    assert systemd_environment("PATH", "%h/bin", specifiers=True) == '"PATH=%h/bin"'
    with pytest.raises(ValueError):
        systemd_environment("X", "two\nlines")
    with pytest.raises(ValueError):
        systemd_exec_word("")


def test_a_relative_exec_path_is_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        render_units(roster(), "claude-auth", "/etc/claude-auth/roster.yaml")


# --- systemd-analyze ------------------------------------------------------

# The only complaints tolerated: targets that a bare root does not have.
_MISSING_TARGET = re.compile(r"Unit \S+\.target not found|non-existent unit \S+\.target")


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    r = roster(address="https://vault.example.org:8200")
    for name, text in units(r, exec_path=EXEC, roster_path="/etc/claude auth/roster.yaml").items():
        write_unit(tmp_path, name, text)
    return tmp_path / "etc" / "systemd" / "system"


def verify_problems(path: Path) -> list[str]:
    result = subprocess.run(["systemd-analyze", "verify", str(path)],
                            capture_output=True, text=True, cwd=path.parent, timeout=60)
    return [line for line in (result.stderr + result.stdout).splitlines()
            if line.strip() and not _MISSING_TARGET.search(line)]


@pytest.mark.parametrize("name", [SYNC_SERVICE, SYNC_TIMER, RECONCILE_SERVICE, RECONCILE_TIMER])
def test_every_unit_passes_systemd_analyze_verify(unit_dir: Path, name: str) -> None:
    problems = verify_problems(unit_dir / name)
    assert not problems, "\n".join(problems)


def test_verify_does_catch_a_broken_unit(unit_dir: Path) -> None:
    broken = unit_dir / "broken@.service"
    broken.write_text((unit_dir / SYNC_SERVICE).read_text().replace(f"ExecStart={EXEC}", "ExecStart=claude-auth")
                      .replace("ProtectSystem=strict", "ProtectSystem=sometimes"))
    problems = verify_problems(broken)
    assert any("protect system value" in line for line in problems), problems
    assert any("Command claude-auth is not executable" in line for line in problems), problems


def exposure(path: Path) -> float:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(path)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def test_sync_service_exposure(unit_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    score = exposure(unit_dir / SYNC_SERVICE)
    with capsys.disabled():  # shown in every run, not only with -s
        print(f"\nsystemd-analyze security --offline=true {SYNC_SERVICE}: exposure {score} (at most {MAX_EXPOSURE})")
    assert score <= MAX_EXPOSURE


def test_reconcile_service_exposure(unit_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    score = exposure(unit_dir / RECONCILE_SERVICE)
    with capsys.disabled():
        print(f"\nsystemd-analyze security --offline=true {RECONCILE_SERVICE}: exposure {score}")
    assert score <= 5.0  # root writing homes; still well below the 'exposed' band


# --- systemctl --root -----------------------------------------------------

# Recorded output of `systemctl --root=DIR is-enabled a@x.timer a@y.timer missing@z.timer b.timer`.
RECORDED_STOPPED = ("enabled\ndisabled\n",
                    "Failed to get unit file state for missing@z.timer: No such file or directory\n")


def test_parse_is_enabled_on_recorded_output() -> None:
    names = ["a@x.timer", "a@y.timer", "missing@z.timer", "b.timer"]
    assert parse_is_enabled(names, *RECORDED_STOPPED) == (
        {"a@x.timer": "enabled", "a@y.timer": "disabled", "missing@z.timer": "not-found"}, ["b.timer"])
    assert parse_is_enabled(["a", "b"], "enabled\nmasked\n", "") == ({"a": "enabled", "b": "masked"}, [])
    with pytest.raises(SystemdError, match="System has not been booted"):
        parse_is_enabled(["a"], "", "System has not been booted with systemd as init system (PID 1).\n")


class Calls:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.commands: list[list[str]] = []
        real = subprocess.run

        def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
            self.commands.append(list(command))
            return real(command, **kwargs)  # type: ignore[call-overload,no-any-return]

        monkeypatch.setattr(subprocess, "run", run)  # as reconcile.local.systemd sees it


def test_enable_disable_and_one_batched_is_enabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, text in units(roster(), exec_path=EXEC).items():
        write_unit(tmp_path, name, text)
    timers = ["claude-auth-sync@alice.timer", "claude-auth-sync@bob.timer", "claude-auth-sync@carol.timer",
              RECONCILE_TIMER]
    calls = Calls(monkeypatch)
    assert systemd.is_enabled(tmp_path, timers) == dict.fromkeys(timers, "disabled")
    systemd.enable(tmp_path, ["claude-auth-sync@alice.timer", "claude-auth-sync@carol.timer", RECONCILE_TIMER])
    wants = tmp_path / "etc" / "systemd" / "system" / "timers.target.wants"
    assert sorted(p.name for p in wants.iterdir()) == [
        RECONCILE_TIMER, "claude-auth-sync@alice.timer", "claude-auth-sync@carol.timer"]
    systemd.disable(tmp_path, ["claude-auth-sync@carol.timer"])
    calls.commands.clear()
    assert systemd.is_enabled(tmp_path, timers) == {
        "claude-auth-sync@alice.timer": "enabled", "claude-auth-sync@bob.timer": "disabled",
        "claude-auth-sync@carol.timer": "disabled", RECONCILE_TIMER: "enabled"}
    assert calls.commands == [["systemctl", f"--root={tmp_path}", "is-enabled", *timers]]  # one process


def test_is_enabled_without_the_template_unit(tmp_path: Path) -> None:
    (tmp_path / "etc" / "systemd" / "system").mkdir(parents=True)
    assert systemd.is_enabled(tmp_path, ["claude-auth-sync@alice.timer", "claude-auth-sync@bob.timer"]) == {
        "claude-auth-sync@alice.timer": "not-found", "claude-auth-sync@bob.timer": "not-found"}


def test_a_failed_systemctl_is_a_systemd_error_with_its_stderr(tmp_path: Path) -> None:
    (tmp_path / "etc" / "systemd" / "system").mkdir(parents=True)
    with pytest.raises(SystemdError, match=r"systemctl --root=.* enable nothere@x.timer` failed .*nothere@x.timer"):
        systemd.enable(tmp_path, ["nothere@x.timer"])


def test_is_live_root(tmp_path: Path) -> None:
    assert systemd.is_live_root(Path("/"))
    assert systemd.is_live_root(Path("/.."))
    assert not systemd.is_live_root(tmp_path)
    (tmp_path / "to-root").symlink_to("/")
    assert systemd.is_live_root(tmp_path / "to-root")
