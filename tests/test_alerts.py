"""The shipped alert rules: Prometheus rules run under the real promtool; the Loki
rule's structure, patterns and non-flapping logic checked against real status lines."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from reconcile.metrics import FAMILIES

ALERTS = Path(__file__).resolve().parent.parent / "deploy" / "alerts"


def promtool() -> str:
    path = os.environ.get("CLAUDE_AUTH_PROMTOOL") or str(ALERTS.parent.parent / ".tools" / "promtool")
    if not os.access(path, os.X_OK):
        pytest.fail(f"promtool missing at {path}: `make test` extracts it from Debian's prometheus package")
    return path


def test_prometheus_rules_pass_promtool_check() -> None:
    result = subprocess.run([promtool(), "check", "rules", "claude-auth.prometheus.yml"],
                            cwd=ALERTS, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rules found" in result.stdout


def test_prometheus_rules_unit_tests_pass() -> None:
    result = subprocess.run([promtool(), "test", "rules", "claude-auth.prometheus.test.yml"],
                            cwd=ALERTS, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_rule_unit_tests_can_fail(tmp_path: Path) -> None:
    """The promtool test is not vacuous: expecting no alert at 12h30m must fail."""
    text = (ALERTS / "claude-auth.prometheus.test.yml").read_text()
    broken = text.replace("- eval_time: 12h30m\n        alertname: WorkstationClaudeAuthSyncStale\n        exp_alerts:",
                          "- eval_time: 12h30m\n        alertname: WorkstationClaudeAuthSyncStale\n        exp_alerts: []\n        ignored:")
    assert broken != text
    (tmp_path / "claude-auth.prometheus.yml").write_text((ALERTS / "claude-auth.prometheus.yml").read_text())
    (tmp_path / "t.yml").write_text(broken)
    result = subprocess.run([promtool(), "test", "rules", "t.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0


def test_prometheus_rules_use_only_metrics_the_code_writes() -> None:
    written = {name for name, _ in FAMILIES}
    rules = yaml.safe_load((ALERTS / "claude-auth.prometheus.yml").read_text())
    for rule in rules["groups"][0]["rules"]:
        used = set(re.findall(r"claude_auth_[a-z_]+", rule["expr"]))
        assert used and used <= written, (rule["alert"], used - written)


def _loki_rule() -> dict:
    rules = yaml.safe_load((ALERTS / "claude-auth.loki.yml").read_text())
    (rule,) = rules["groups"][0]["rules"]
    return rule


def _seconds(text: str) -> int:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([hms])", text))


def test_loki_rule_structure() -> None:
    rule = _loki_rule()
    assert rule["alert"] == "WorkstationClaudeAuthInvalid"
    assert 'syslog_identifier="claude-auth-sync"' in rule["expr"]
    assert "{{ $labels.user }}" in rule["annotations"]["summary"]
    assert "sum by (user)" in rule["expr"]


def _patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    found = re.findall(r"\| regexp `([^`]+)`", _loki_rule()["expr"])
    assert len(found) == 2
    return re.compile(found[0]), re.compile(found[1])


@pytest.mark.parametrize("line, fail_user, ok_user", [
    ("FAIL alice: live check rejected the login and the backup is no better", "alice", None),
    ("FAIL bob-2: Vault at VAULT_ADDR=http://x is unreachable", "bob-2", None),
    ("OK alice: login works; backup unchanged", None, "alice"),
    ("RECOVERED carol: restored the login from Vault backup version 3", None, "carol"),
    ("SKIP alice: another sync holds the lock", None, None),
    ("WARN alice: CLAUDE_CODE_OAUTH_TOKEN removed from the environment", None, None),
])
def test_loki_patterns_extract_the_user(line: str, fail_user: str | None, ok_user: str | None) -> None:
    fail, ok = _patterns()
    fail_match, ok_match = fail.search(line), ok.search(line)
    assert (fail_match.group("user") if fail_match else None) == fail_user
    assert (ok_match.group("user") if ok_match else None) == ok_user


def _fires(events: list[tuple[int, str]], end: int, step: int = 300) -> list[tuple[int, bool]]:
    """Evaluate the rule's logic (FAIL in window, no OK in window, held for `for:`) over time."""
    rule = _loki_rule()
    window = _seconds(re.search(r"\[(\w+)\]", rule["expr"]).group(1))
    hold = _seconds(rule["for"])
    pending_since: int | None = None
    timeline = []
    for now in range(0, end + 1, step):
        recent = [kind for at, kind in events if now - window < at <= now]
        active = "FAIL" in recent and "OK" not in recent
        pending_since = (pending_since if pending_since is not None else now) if active else None
        timeline.append((now, pending_since is not None and now - pending_since >= hold))
    return timeline


H = 3600


def test_one_off_fail_followed_by_ok_does_not_fire() -> None:
    events = [(0, "OK"), (6 * H, "FAIL"), (12 * H + 300, "OK"), (18 * H, "OK")]
    assert not any(firing for _, firing in _fires(events, 24 * H))


def test_persistent_fail_fires_then_resolves_on_ok() -> None:
    events = [(0, "OK"), (6 * H, "FAIL"), (12 * H, "FAIL"), (18 * H, "FAIL"), (24 * H, "OK")]
    timeline = dict(_fires(events, 30 * H))
    assert not timeline[12 * H]
    assert timeline[13 * H] and timeline[18 * H]
    assert not timeline[24 * H]
