"""`claude-auth sync` when the person's Vault path holds data no one should have to decode.

Values nested 3,000 levels deep (in `claude_ai_oauth_json` or in a sibling
key), huge values and values of the wrong type, written straight to a real
OpenBao over HTTP (hvac's own encoder cannot even send a value that deep).
None of them may wedge the person:

- on the restore path the run says `no usable backup: <why>`;
- on the OK path the working login is written over it with check-and-set
  (the backup heals itself) and a second run writes nothing;
- a sibling key is carried over as the very bytes Vault served, even one
  that nothing here could decode.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from reconcile.common import boundedjson
from tests.test_sync_real import (KV_MOUNT, SIBLING, SyncUser, claude_on_path, current_version,  # noqa: F401
                                  new_oauth, user)

DEPTH = 3000


def deep(depth: int = DEPTH) -> str:
    """JSON text nested `depth` levels deep (lists: OpenBao refuses a request with more than a few hundred
    strings, but not one nested this deep)."""
    return "[" * depth + "1" + "]" * depth


def write_raw(user: SyncUser, fields: dict[str, str]) -> int:
    """Write the path with each value given as JSON text, as root; returns the new version."""
    body = '{"data":{' + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}}"
    answer = requests.post(f"{user.address}/v1/{KV_MOUNT}/data/{user.kv_path}", data=body.encode(),
                           headers={"X-Vault-Token": user.root.token}, timeout=30)
    assert answer.status_code == 200, answer.text[:300]
    return int(boundedjson.loads(answer.content)["data"]["version"])


def read_raw(user: SyncUser) -> dict[str, bytes]:
    """The path's values as the JSON text Vault serves, without decoding them."""
    answer = requests.get(f"{user.address}/v1/{KV_MOUNT}/data/{user.kv_path}",
                          headers={"X-Vault-Token": user.root.token}, timeout=30)
    assert answer.status_code == 200
    body = answer.content
    data = boundedjson.object_members(body, boundedjson.object_members(body)["data"][0])
    return {key: body[a:b] for key, (a, b) in boundedjson.object_members(body, data["data"][0]).items()}


def stored_oauth(user: SyncUser) -> Any:
    return json.loads(json.loads(read_raw(user)["claude_ai_oauth_json"]))


HOSTILE_OAUTH = {
    "nested 3,000 deep as JSON text": (json.dumps('{"a":' * DEPTH + "1" + "}" * DEPTH),
                                       "is not usable JSON (nested deeper than 100 levels)"),
    "nested 3,000 deep as a value": (deep(), "is not usable JSON (nested deeper than 100 levels)"),
    "5 MB of text": (json.dumps("x" * 5_000_000), "is larger than 1 MiB"),
    "a number": ("42", "is a number, not JSON text"),
    "a list": ('["sk-ant-oat01-not-a-login"]', "is a list, not JSON text"),
    "an object of the wrong shape": (json.dumps(json.dumps({"accessToken": 5})),
                                     "accessToken is missing or empty"),
}


@pytest.mark.parametrize("case", list(HOSTILE_OAUTH))
def test_hostile_backup_on_the_restore_path_is_no_usable_backup(user: SyncUser, case: str) -> None:
    value, why = HOSTILE_OAUTH[case]
    write_raw(user, {"claude_ai_oauth_json": value, SIBLING: json.dumps("kept")})
    raw = user.login(new_oauth("rejected"), accepted=False)

    outcome = user.sync()

    assert outcome.status.value == "FAIL", outcome.line
    assert "no usable backup: " in outcome.line and why in outcome.line, outcome.line
    assert "interactive SSO login" in outcome.line
    assert user.credentials.read_bytes() == raw
    assert user.kept_copies() == []
    assert current_version(user.root, user.kv_path) == 1


@pytest.mark.parametrize("case", list(HOSTILE_OAUTH))
def test_hostile_backup_on_the_ok_path_is_written_over(user: SyncUser, case: str) -> None:
    value, _ = HOSTILE_OAUTH[case]
    write_raw(user, {"claude_ai_oauth_json": value, SIBLING: json.dumps("kept")})
    oauth = new_oauth()
    user.login(oauth)

    outcome = user.sync()

    assert outcome.status.value == "OK", outcome.line
    assert outcome.line.endswith(f"backed up to {KV_MOUNT}/data/{user.kv_path} (version 2)")
    assert stored_oauth(user) == oauth
    assert read_raw(user)[SIBLING] == b'"kept"'
    again = user.sync()
    assert again.status.value == "OK" and "backup unchanged" in again.line
    assert again.vault_requests <= 4
    assert current_version(user.root, user.kv_path) == 2


def test_undecodable_sibling_is_carried_over_byte_for_byte(user: SyncUser) -> None:
    # A sibling nested 3,000 deep and a large one: neither is decoded, both are written back as served.
    write_raw(user, {"nested_by_another_tool": deep(), "large_by_another_tool": json.dumps("y" * 3_000_000),
                     SIBLING: json.dumps("kept")})
    before = read_raw(user)
    oauth = new_oauth()
    user.login(oauth)

    outcome = user.sync()

    assert outcome.status.value == "OK", outcome.line
    after = read_raw(user)
    for key in ("nested_by_another_tool", "large_by_another_tool", SIBLING):
        assert after[key] == before[key], key
    assert stored_oauth(user) == oauth
    assert current_version(user.root, user.kv_path) == 2
    assert user.sync().status.value == "OK"
    assert current_version(user.root, user.kv_path) == 2


def test_restore_works_beside_an_undecodable_sibling(user: SyncUser) -> None:
    good = new_oauth("good")
    user.login(good)
    assert user.sync().status.value == "OK"
    nested = deep()
    fields = {key: value.decode() for key, value in read_raw(user).items()}
    write_raw(user, {**fields, "nested_by_another_tool": nested})
    user.login(new_oauth("rejected"), accepted=False)

    outcome = user.sync()

    assert outcome.status.value == "RECOVERED", outcome.line
    assert json.loads(user.credentials.read_text())["claudeAiOauth"] == good
    assert read_raw(user)["nested_by_another_tool"] == nested.encode()
