"""deploy/grafana/claude-auth.json against a real Prometheus scraping a real node_exporter.

A small roster (OK, RECOVERED, FAIL, setup-token, never synced, parked; one dead token) on the
shared OpenBao; `claude-auth status --json --prometheus FILE` writes the node_exporter textfile and
prints the rows in one run. Debian's prometheus-node-exporter (textfile collector only) serves that
folder and Debian's prometheus scrapes it every second, both on 127.0.0.1 (binaries extracted by
`make setup` into .tools/, as promtool is). Then every panel's query, and every template
variable's, is run against Prometheus's HTTP API with the variables set to "All": each returns
data, and its numbers are those of `status --json` (ages at the query's own evaluation time). A
panel the table below does not know fails the test, so a new panel needs its expectation.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from reconcile.sync import setup_token as st
from tests.support.openbao import free_port
from tests.support.world import World

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy" / "grafana" / "claude-auth.json"
ALERTS = REPO / "deploy" / "alerts" / "claude-auth.prometheus.yml"
STATE = ".local/state/claude-auth-sync"
ALL = ".*"  # the dashboard's allValue for every multi-value variable


def tool(variable: str, name: str) -> str:
    path = os.environ.get(variable) or str(REPO / ".tools" / name)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{name} missing at {path}: `make setup` extracts it from Debian's package")
    return path


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


def write_log(world: World, user: str, lines: list[tuple[float, str]]) -> None:
    path = world.root / "home" / user / STATE / "sync.log"
    path.write_text("".join(f"{iso(at)} {line}\n" for at, line in lines))
    os.chown(path, world.uids[user], world.uids[user])
    path.chmod(0o600)


def write_backup(world: World, user: str, at: float) -> None:
    world.client.secrets.kv.v2.create_or_update_secret(
        path=f"{world.path_prefix}/{user}", mount_point="secret",
        secret={"claude_ai_oauth_json": '{"accessToken":"x"}', "backed_up_at": iso(at)})


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]

    def instant(self, expr: str, at: float) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr, time=f"{at:.3f}")
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    def range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step="1")
        return list(data["result"])


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


@pytest.fixture
def scraped(world: World, tmp_path: Path) -> Iterator[tuple[Prometheus, dict[str, dict[str, Any]], str]]:
    now = time.time()
    world.write_roster({"alice": {}, "bob": {}, "carol": {}, "dave": {"claude_login": "setup-token"},
                        "erin": {}, "frank": {"parked": True}})
    assert world.run("apply").code == 0
    write_log(world, "alice", [(now - 7200, "OK alice: login works; backed up")])
    write_log(world, "bob", [(now - 30000, "OK bob: login works"), (now - 3600, "RECOVERED bob: restored")])
    write_log(world, "carol", [(now - 50000, "OK carol: login works"), (now - 600, "FAIL carol: login rejected")])
    write_log(world, "dave", [(now - 1800, "OK dave: setup token works")])
    write_backup(world, "alice", now - 86400)
    write_backup(world, "bob", now - 3590)
    token = "sk-ant-oat01-" + "d" * 40
    world.secrets_seen.add(token)
    world.client.secrets.kv.v2.create_or_update_secret(
        path=f"{world.path_prefix}/dave", mount_point="secret",
        secret=st.store_fields(token, iso(now - 86400), int((now + 20 * 86400) * 1000)))
    world.client.auth.token.revoke(world.token("erin"))  # a dead token: TTL 0 in the textfile

    textfiles = tmp_path / "textfile"
    run = world.run("status", "--json", "--prometheus", str(textfiles / "claude-auth.prom"))
    assert run.code == 0, run.err
    rows = {row["user"]: row for row in json.loads(run.out)["users"]}

    exporter_port, prometheus_port = free_port(), free_port()
    target = f"127.0.0.1:{exporter_port}"
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "node", "static_configs": [{"targets": [target]}]}]}))
    exporter = start([tool("CLAUDE_AUTH_NODE_EXPORTER", "prometheus-node-exporter"),
                      f"--web.listen-address={target}", "--collector.disable-defaults", "--collector.textfile",
                      f"--collector.textfile.directory={textfiles}"], tmp_path / "node-exporter.log")
    server = start([tool("CLAUDE_AUTH_PROMETHEUS", "prometheus"), f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                   tmp_path / "prometheus.log")
    try:
        prometheus = Prometheus(f"http://127.0.0.1:{prometheus_port}")
        deadline = time.monotonic() + 60
        while True:  # until a scrape has brought every person in (and a second one for range queries)
            try:
                found = prometheus.instant("claude_auth_user_enabled", time.time())
                if len(found) == len(rows) and len(prometheus.range(
                        "claude_auth_user_enabled", time.time() - 30, time.time())[0]["values"]) >= 2:
                    break
            except (OSError, AssertionError, IndexError):
                pass
            if time.monotonic() > deadline or server.poll() is not None or exporter.poll() is not None:
                logs = "\n".join(p.read_text()[-2000:] for p in tmp_path.glob("*.log"))
                pytest.fail(f"Prometheus never scraped the textfile:\n{logs}")
            time.sleep(0.3)
        yield prometheus, rows, target
    finally:
        for process in (server, exporter):
            process.terminate()
            process.wait(timeout=30)


def series_key(series: dict[str, Any]) -> str:
    labels = series["metric"]
    return labels.get("user") or labels.get("result") or ""


# Each panel's numbers, from the status rows, at the query's evaluation time `at`.
Expected = Callable[[dict[str, dict[str, Any]], float], dict[str, float]]


def per_user(field: str, *, age: bool = False, until: bool = False) -> Expected:
    def expected(rows: dict[str, dict[str, Any]], at: float) -> dict[str, float]:
        found = {}
        for user, row in rows.items():
            value = epoch(row[field])
            if value is not None:
                found[user] = at - value if age else value - at if until else value
        return found
    return expected


def ttl(rows: dict[str, dict[str, Any]], at: float) -> dict[str, float]:
    return {user: float(row["token_ttl_seconds"] or 0) for user, row in rows.items()
            if row["token_ttl_seconds"] is not None or row["token"] == "dead"}


def count(predicate: Callable[[dict[str, Any]], bool]) -> Expected:
    return lambda rows, at: {"": float(sum(1 for row in rows.values() if predicate(row)))}


def results(*wanted: str) -> Expected:
    return lambda rows, at: {result: float(sum(1 for row in rows.values() if row["last_sync_result"] == result))
                             for result in wanted}


PANELS: dict[str, Expected] = {
    "Enabled people": count(lambda row: row["state"] == "enabled"),
    "Last sync FAIL": count(lambda row: row["last_sync_result"] == "FAIL"),
    "Last sync RECOVERED": count(lambda row: row["last_sync_result"] == "RECOVERED"),
    "Enabled, never synced OK": count(lambda row: row["state"] == "enabled" and row["last_success_at"] is None),
    "FAIL and RECOVERED over time": results("FAIL", "RECOVERED"),
    "Last sync result": lambda rows, at: {user: 1.0 for user, row in rows.items() if row["last_sync_result"]},
    "Time since the last successful sync": per_user("last_success_at", age=True),
    "Time since the last sync run": per_user("last_sync_at", age=True),
    "Vault token TTL": ttl,
    "Backup age": per_user("backup_at", age=True),
    "Reauthentication deadline": per_user("reauth_deadline", until=True),
}


def panels() -> list[dict[str, Any]]:
    return [panel for panel in json.loads(DASHBOARD.read_text())["panels"] if panel["type"] != "row"]


def substitute(expr: str) -> str:
    assert set(re.findall(r"\$\{?(\w+)", expr)) <= {"instance", "user"}, expr
    return expr.replace("$instance", ALL).replace("$user", ALL)


def test_every_panel_query_returns_the_numbers_of_status_json(
        scraped: tuple[Prometheus, dict[str, dict[str, Any]], str]) -> None:
    prometheus, rows, target = scraped
    assert {panel["title"] for panel in panels()} == set(PANELS), "a panel without expectations, or one missing"
    assert prometheus.instant("node_textfile_scrape_error", time.time())[0]["value"][1] == "0"
    # A sanity check of the roster itself: every kind of person is there.
    assert {row["last_sync_result"] for row in rows.values()} == {"OK", "RECOVERED", "FAIL", None}
    assert rows["erin"]["token"] == "dead" and rows["dave"]["setup_token_expires_at"] is not None

    for panel in panels():
        (target_query,) = panel["targets"]
        expr = substitute(target_query["expr"])
        at = time.time()
        found = prometheus.instant(expr, at)
        assert found, f"{panel['title']}: {expr} returned no data"
        assert all(series["metric"].get("instance", target) == target for series in found), found
        got = {series_key(series): float(series["value"][1]) for series in found}
        want = PANELS[panel["title"]](rows, at)
        assert set(got) == set(want), (panel["title"], got, want)
        # Times: status --json gives whole seconds, the textfile keeps the fractions. Counts: exact.
        slack = 1.0 if panel["fieldConfig"]["defaults"].get("unit") == "s" else 0.0
        for key, value in want.items():
            assert abs(got[key] - value) <= slack, (panel["title"], key, got[key], value)
        if panel["title"] == "Last sync result":
            assert {s["metric"]["user"]: s["metric"]["result"] for s in found} == {
                user: row["last_sync_result"] for user, row in rows.items() if row["last_sync_result"]}
        if target_query.get("range", True):  # what a time-series panel draws
            assert prometheus.range(expr, at - 20, at), f"{panel['title']}: no range data"

    # The template variables: the host and the people (one fixture: a Prometheus start is 7 s).
    variables = {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for name, want in (("instance", [target]), ("user", sorted(rows))):
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variables[name]["query"]["query"])
        assert match and match.group(2) == name, variables[name]
        selector = substitute(match.group(1))
        assert sorted(prometheus.get(f"/api/v1/label/{name}/values", **{"match[]": selector})) == want
    # One person picked: only that person's series.
    ttl_panel = next(p for p in panels() if p["title"] == "Vault token TTL")
    expr = ttl_panel["targets"][0]["expr"].replace("$instance", ALL).replace("$user", "alice")
    assert [s["metric"]["user"] for s in prometheus.instant(expr, time.time())] == ["alice"]


def test_the_alert_thresholds_are_drawn_on_their_panels() -> None:
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    exprs = " ".join(rule["expr"] for rule in rules)
    by_title = {panel["title"]: panel for panel in panels()}

    def steps(title: str) -> set[float]:
        panel = by_title[title]
        assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off", title
        return {step["value"] for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]} - {None}

    assert "> 43800" in exprs and steps("Time since the last successful sync") == {43800}
    assert "< 7 * 86400" in exprs and steps("Vault token TTL") == {7 * 86400}
    assert "< 30 * 86400" in exprs and "< 3 * 86400" in exprs
    assert steps("Reauthentication deadline") == {3 * 86400, 7 * 86400, 30 * 86400}
