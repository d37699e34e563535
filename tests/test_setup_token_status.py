"""Setup-token mode in `claude-auth status` (table, JSON, the Prometheus textfile) against a
real OpenBao and a --root sandbox."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconcile.sync import setup_token as st
from tests.support.world import World

EXPIRES_MS = 1_900_000_000_000  # 2030-03-17


def store_fields(world: World, user: str, expires_ms: int = EXPIRES_MS, source: str = st.EXPIRY_FROM_CLAUDE) -> str:
    token = f"sk-ant-oat01-{'t' * 40}{user}"
    world.secrets_seen.add(token)
    world.client.secrets.kv.v2.create_or_update_secret(
        path=f"{world.path_prefix}/{user}", mount_point="secret",
        secret=st.store_fields(token, "2026-11-29T00:00:00Z", expires_ms, source))
    return token


@pytest.fixture
def mixed(world: World) -> World:
    """tokened (setup-token, stored), waiting (setup-token, nothing stored yet), classic (oauth)."""
    world.write_roster({"tokened": {"claude_login": "setup-token"}, "waiting": {"claude_login": "setup-token"},
                        "classic": {}})
    assert world.run("apply").code == 0
    store_fields(world, "tokened")
    store_fields(world, "classic")  # a stray token of an oauth user is not its mode
    return world


def test_status_json_shows_the_mode_and_the_expiry(mixed: World) -> None:
    run = mixed.run("status", "--json")
    assert run.code == 0, run.err
    rows = {row["user"]: row for row in json.loads(run.out)["users"]}
    assert rows["tokened"]["claude_login"] == "setup-token"
    assert rows["tokened"]["setup_token_expires_at"].startswith("2030-03-1")
    assert rows["tokened"]["setup_token_expiry_source"] == "claude"
    assert rows["waiting"]["setup_token_expires_at"] is None
    assert any(note.startswith("setup token: no setup token stored at ") for note in rows["waiting"]["notes"])
    assert (rows["classic"]["claude_login"], rows["classic"]["setup_token_expires_at"]) == ("oauth", None)


def test_status_table_lists_setup_token_people_with_their_expiry(mixed: World) -> None:
    run = mixed.run("status")
    lines = run.out.splitlines()
    start = lines.index("Login mode setup-token (everyone else: oauth):")
    days = int((EXPIRES_MS / 1000 - time.time()) / 86400)
    expected_date = time.strftime("%Y-%m-%d", time.localtime(EXPIRES_MS / 1000))
    assert lines[start + 1:start + 3] == [f"  tokened: token expires {expected_date} ({days} days left; "
                                          f"reported by claude setup-token)",
                                          "  waiting: token expires —"]
    assert all(len(line) <= 100 for line in lines)


def test_textfile_has_the_expiry_metric_for_setup_token_people_only(mixed: World, tmp_path: Path) -> None:
    target = tmp_path / "claude-auth.prom"
    assert mixed.run("status", "--prometheus", str(target)).code == 0
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(target.read_text()) for s in family.samples}
    expiry = {labels: value for (name, labels), value in samples.items()
              if name == "claude_auth_setup_token_expiry_timestamp_seconds"}
    assert expiry == {(("user", "tokened"),): EXPIRES_MS / 1000}


@pytest.mark.parametrize(("source", "phrase"), [
    (st.EXPIRY_DEFAULT, "assumed: 365 days from storing"),
    (st.EXPIRY_GIVEN, "given with --expires-at"),
    ("", "source not recorded"),  # stored by a claude-auth before the source was kept
])
def test_status_says_whether_the_expiry_is_known_or_assumed(mixed: World, source: str, phrase: str) -> None:
    store_fields(mixed, "tokened", source=source)
    rows = {row["user"]: row for row in json.loads(mixed.run("status", "--json").out)["users"]}
    assert rows["tokened"]["setup_token_expiry_source"] == (source or None)
    assert f"days left; {phrase})" in mixed.run("status").out


def test_the_reauthentication_deadline_comes_from_the_persons_file_or_the_setup_token(mixed: World,
                                                                                       tmp_path: Path) -> None:
    """oauth mode: the reauth-by file the person's sync keeps (reconcile.sync.notice); setup-token
    mode: the stored token's expiry. A file that is not a deadline is no deadline."""
    state = mixed.root / "home" / "classic" / ".local" / "state" / "claude-auth-sync"
    deadline = int(time.time()) + 2 * 86400
    (state / "reauth-by").write_text(f"{deadline} 2030-01-01 claude auth login --claudeai --sso\n")
    os.chown(state / "reauth-by", mixed.uids["classic"], mixed.uids["classic"])
    target = tmp_path / "claude-auth.prom"
    assert mixed.run("status", "--json", "--prometheus", str(target)).code == 0
    rows = {row["user"]: row for row in json.loads(mixed.run("status", "--json").out)["users"]}
    assert rows["classic"]["reauth_deadline"] == time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(deadline))
    assert rows["tokened"]["reauth_deadline"] == rows["tokened"]["setup_token_expires_at"]
    samples = {s.labels["user"]: s.value for family in text_string_to_metric_families(target.read_text())
               for s in family.samples if s.name == "claude_auth_login_reauth_deadline_timestamp_seconds"}
    assert samples == {"classic": deadline, "tokened": EXPIRES_MS / 1000}

    for planted in ("9" * 40 + " 2030-01-01 x\n", "soon\n", f"{deadline} not-a-date x\n"):
        (state / "reauth-by").write_text(planted)
        rows = {row["user"]: row for row in json.loads(mixed.run("status", "--json").out)["users"]}
        assert rows["classic"]["reauth_deadline"] is None
        assert not [note for note in rows["classic"]["notes"] if "reauth" in note]
