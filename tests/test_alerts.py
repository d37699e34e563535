"""The shipped alert rules: Prometheus rules run under the real promtool; the Loki
rule's structure, patterns and non-flapping logic checked against real status lines."""

from __future__ import annotations

import os
import random
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from reconcile.engine.metrics import FAMILIES

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
    assert "SUCCESS: 7 rules found" in result.stdout
    assert "FAILED" not in result.stdout + result.stderr  # e.g. promtool's duplicate-rule lint


def test_prometheus_rules_unit_tests_pass() -> None:
    tests = sorted(path.name for path in ALERTS.glob("*.prometheus.test.yml"))
    assert "claude-auth.setup-token.prometheus.test.yml" in tests
    result = subprocess.run([promtool(), "test", "rules", *tests], cwd=ALERTS, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_setup_token_expiry_rules_fire_at_30_and_7_days() -> None:
    rules = yaml.safe_load((ALERTS / "claude-auth.prometheus.yml").read_text())["groups"][0]["rules"]
    expiring = [rule for rule in rules if rule["alert"] == "WorkstationClaudeAuthSetupTokenExpiring"]
    assert [rule["labels"]["within"] for rule in expiring] == ["30d", "7d"]
    assert ["30 * 86400" in expiring[0]["expr"], "7 * 86400" in expiring[1]["expr"]] == [True, True]
    assert all("claude_auth_setup_token_expiry_timestamp_seconds" in rule["expr"] for rule in expiring)


def _rule_tests_with(tmp_path: Path, test: str, old: str, new: str) -> int:
    """promtool's exit code for `test` against the rules with `old` replaced by `new`."""
    rules = (ALERTS / "claude-auth.prometheus.yml").read_text()
    broken = rules.replace(old, new)
    assert broken != rules
    (tmp_path / "claude-auth.prometheus.yml").write_text(broken)
    (tmp_path / test).write_text((ALERTS / test).read_text())
    return subprocess.run([promtool(), "test", "rules", test], cwd=tmp_path, capture_output=True, text=True).returncode


def test_setup_token_rule_unit_tests_can_fail(tmp_path: Path) -> None:
    """Not vacuous: the same tests against rules with the 7-day threshold moved to 3 days must fail."""
    assert _rule_tests_with(tmp_path, "claude-auth.setup-token.prometheus.test.yml",
                            "< 7 * 86400)\n          and on (instance, user)\n          (claude_auth_user_enabled",
                            "< 3 * 86400)\n          and on (instance, user)\n          (claude_auth_user_enabled") != 0


def test_host_token_rule_unit_tests_can_fail(tmp_path: Path) -> None:
    """Not vacuous: with the threshold at 3 days, ws3's 5 days left must no longer fire."""
    assert _rule_tests_with(tmp_path, "claude-auth.host-token.prometheus.test.yml",
                            "expr: claude_auth_host_token_ttl_seconds < 7 * 86400",
                            "expr: claude_auth_host_token_ttl_seconds < 3 * 86400") != 0


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


def test_staleness_rules_only_consider_enabled_users() -> None:
    rules = yaml.safe_load((ALERTS / "claude-auth.prometheus.yml").read_text())["groups"][0]["rules"]
    stale = [rule for rule in rules if rule["alert"] == "WorkstationClaudeAuthSyncStale"]
    assert len(stale) == 2
    assert all("claude_auth_user_enabled" in rule["expr"] for rule in stale)
    no_sample = next(rule for rule in stale if "unless" in rule["expr"])
    assert _seconds(no_sample["for"]) >= 12 * 3600  # a grace for a user who has not synced yet


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


M = 60
SYNC_TIMEOUT = 5 * M  # TimeoutStartSec of claude-auth-sync@.service


def test_loki_window_leaves_a_margin_over_the_schedule() -> None:
    rule = _loki_rule()
    window = _seconds(re.search(r"\[(\w+)\]", rule["expr"]).group(1))
    interval_and_delay = 6 * H + 10 * M
    assert window >= interval_and_delay + SYNC_TIMEOUT + 10 * M
    assert _seconds(rule["for"]) + window >= 2 * interval_and_delay + SYNC_TIMEOUT + 5 * M


@pytest.mark.parametrize("ok_after_fail", [6 * H, 6 * H + 10 * M, 6 * H + 15 * M, 6 * H + 25 * M])
def test_one_off_fail_followed_by_a_late_ok_does_not_fire(ok_after_fail: int) -> None:
    """The OK comes up to 15 minutes later than interval + delay after the FAIL."""
    fail = 6 * H
    events = [(0, "OK"), (fail, "FAIL"), (fail + ok_after_fail, "OK"), (fail + ok_after_fail + 6 * H, "OK")]
    assert not any(firing for _, firing in _fires(events, 30 * H, step=60))


def test_persistent_fail_with_late_runs_fires_and_resolves_on_ok() -> None:
    gap = 6 * H + 15 * M  # interval + delay + the previous run finishing 5 minutes sooner
    fails = [(gap * n, "FAIL") for n in range(1, 5)]
    ok_at = gap * 5
    timeline = dict(_fires([(0, "OK"), *fails, (ok_at, "OK")], ok_at + 2 * H, step=60))
    assert not timeline[12 * H + 25 * M]
    assert timeline[12 * H + 30 * M]  # 6h30m after the last OK, held for 6h
    first = min(at for at, firing in timeline.items() if firing)
    assert all(firing for at, firing in timeline.items() if first <= at < ok_at)  # no restart of `for`
    assert not timeline[ok_at]


def _runs(rng: random.Random, results: list[str]) -> list[tuple[int, str]]:
    """Lines of a timer run every 6h plus up to 10m after the previous start, each stamped when
    its run ends, after 5s up to the 5-minute timeout."""
    start, events = 0, []
    for result in results:
        events.append((start + rng.randint(5, SYNC_TIMEOUT), result))
        start += 6 * H + rng.randint(0, 10 * M)
    return events


def test_random_schedules_one_off_never_fires_and_two_fails_in_a_row_do() -> None:
    rng = random.Random(6)
    for _ in range(200):
        one_off = _runs(rng, ["OK", "OK", "FAIL", "OK", "OK", "FAIL", "OK"])
        assert not any(firing for _, firing in _fires(one_off, one_off[-1][0] + H, step=60)), one_off
        persistent = _runs(rng, ["OK", "FAIL", "FAIL", "OK"])
        timeline = _fires(persistent, persistent[-1][0] + H, step=60)
        firing = [at for at, on in timeline if on]
        assert firing and firing[-1] < persistent[-1][0], persistent  # fires, resolves on OK


def test_reauth_rule_unit_tests_can_fail(tmp_path: Path) -> None:
    """Not vacuous: with the 3-day threshold moved to 1 day, bob's alert must not come, and the test fails."""
    assert _rule_tests_with(tmp_path, "claude-auth.reauth.prometheus.test.yml",
                            "claude_auth_login_reauth_deadline_timestamp_seconds - time() < 3 * 86400",
                            "claude_auth_login_reauth_deadline_timestamp_seconds - time() < 1 * 86400") != 0
