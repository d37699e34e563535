"""Roster loading: every bad roster gives exactly one located message, good ones a typed Roster."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconcile.cli import main
from reconcile.roster.durations import format_duration, parse_duration
from reconcile.common.exitcodes import Exit
from reconcile.common.resources import schema_file
from reconcile.roster.values import Roster, StatusSettings, SyncSettings, User, VaultSettings
from reconcile.roster.issues import RosterInvalid, RosterIssue
from reconcile.roster.loader import load_roster

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "roster.example.yaml"


@dataclass(frozen=True)
class Bad:
    id: str
    content: str | bytes | None
    """None: no file is written (see `setup`)."""
    line: int | None
    path: str
    message: str
    """A fragment the message must contain."""
    setup: str = "file"
    """"file": write `content`; "missing": no file; "directory": a folder at the path."""


BAD = [
    # --- YAML and the file itself
    Bad("yaml-syntax", "users:\n  alice: [a, b\n  bob: {}\n", 3, "",
        "invalid YAML: while parsing a flow sequence on line 2, expected ',' or ']'"),
    Bad("yaml-bad-indent", "users:\n  alice: {}\n   bob: {}\n", 3, "", "invalid YAML:"),
    Bad("yaml-tab", "users:\n\talice: {}\n", 2, "", "invalid YAML: found character '\\t'"),
    Bad("yaml-two-documents", "users: {}\n---\nusers: {}\n", 2, "", "expected a single document"),
    Bad("yaml-control-character", "users:\n  alice: {}\x07\n", 2, "", "control character 0x07"),
    Bad("yaml-unsafe-tag", "users:\n  alice: !!python/object:os.system {}\n", 2, "users.alice",
        "unsupported YAML tag '!!python/object:os.system'"),
    Bad("yaml-recursive-alias", "users: &u\n  alice: *u\n", 2, "users.alice", "recursive data is not allowed"),
    Bad("yaml-non-scalar-key", "users:\n  ? [a, b]\n  : {}\n", 2, "users", "a key must be a plain name"),
    Bad("invalid-utf8", b"users:\n  al\xffice: {}\n", 2, "", "not valid UTF-8 text (byte 0xff)"),
    Bad("empty-file", "", 1, "", "the roster is empty"),
    Bad("comments-only", "# nothing yet\n\n# still nothing\n", 1, "", "the roster is only comments"),
    Bad("top-level-list", "- alice\n- bob\n", 1, "", "must be a mapping with a 'users' key at the top level, got a list"),
    Bad("top-level-scalar", "hello\n", 1, "", "got 'hello'"),
    Bad("missing-file", None, None, "", "cannot read the roster: no such file", setup="missing"),
    Bad("directory", None, None, "", "cannot read the roster: it is a directory, not a regular file", setup="directory"),
    # --- duplicate keys
    Bad("duplicate-top-level", "users:\n  alice: {}\nusers:\n  bob: {}\n", 3, "users",
        "duplicate key 'users': defined on line 1 and again on line 3"),
    Bad("duplicate-user", "users:\n  alice: {}\n  bob: {}\n  alice: {}\n", 4, "users.alice",
        "defined on line 2 and again on line 4"),
    Bad("duplicate-in-user", "users:\n  alice:\n    parked: true\n    parked: false\n", 4, "users.alice.parked",
        "duplicate key 'parked': defined on line 3 and again on line 4"),
    # --- structure
    Bad("users-missing", "# who?\nsync:\n  interval: 6h\n", 2, "", "missing required field 'users'"),
    Bad("users-list", "users:\n  - alice\n", 1, "users", "expected a mapping, got a list"),
    Bad("users-null", "users:\n", 1, "users", "expected a mapping, got null"),
    Bad("user-scalar", "users:\n  alice: yes\n", 2, "users.alice", "expected a mapping or nothing (null), got 'yes'"),
    Bad("vault-scalar", "vault: https://vault.example.org\nusers: {}\n", 1, "vault",
        "expected a mapping or nothing (null), got 'https://vault.example.org'"),
    # --- unknown fields at three levels
    Bad("unknown-top", "user: {}\nusers: {}\n", 1, "user", "unknown field 'user' (did you mean 'users'?)"),
    Bad("unknown-vault", "vault:\n  adress: https://v.example.org\nusers: {}\n", 2, "vault.adress",
        "unknown field 'adress' (did you mean 'address'?)"),
    Bad("unknown-sync", "sync:\n  intervall: 6h\nusers: {}\n", 2, "sync.intervall",
        "unknown field 'intervall' (did you mean 'interval'?)"),
    Bad("unknown-user", "users:\n  alice:\n    clade_auth: true\n", 3, "users.alice.clade_auth",
        "unknown field 'clade_auth' (did you mean 'claude_auth'?)"),
    Bad("unknown-user-no-match", "users:\n  alice: {shell: /bin/bash}\n", 2, "users.alice.shell",
        "unknown field 'shell' (known fields: authentik_user, claude_auth, claude_login, code_layout, hosts,"),
    # --- user names
    Bad("name-dotdot", "users:\n  ../x: {}\n", 2, 'users["../x"]', "invalid user name '../x': it starts with '.'"),
    Bad("name-upper", "users:\n  Alice: {}\n", 2, "users.Alice", "it starts with 'A'; user names are POSIX account names"),
    Bad("name-space", "users:\n  a b: {}\n", 2, 'users["a b"]', "it contains ' '"),
    Bad("name-too-long", f"users:\n  {'a' * 33}: {{}}\n", 2, f"users.{'a' * 33}", "it is 33 characters long"),
    Bad("name-semicolon", "users:\n  root;rm: {}\n", 2, 'users["root;rm"]', "it contains ';'"),
    Bad("name-dash", "users:\n  -x: {}\n", 2, "users.-x", "it starts with '-'"),
    Bad("name-numeric", "users:\n  123: {}\n", 2, "users.123", "invalid user name '123': it starts with '1'"),
    Bad("name-tilde", "users:\n  ~: {}\n", 2, 'users["~"]', "invalid user name '~'"),
    # --- wrong types, every field
    Bad("claude-auth-no", "users:\n  bob:\n    claude_auth: no\n", 3, "users.bob.claude_auth",
        "expected true or false, got 'no'"),
    Bad("claude-auth-quoted", "users:\n  bob: {claude_auth: 'true'}\n", 2, "users.bob.claude_auth",
        "expected true or false, got 'true'"),
    Bad("parked-on", "users:\n  bob:\n    parked: on\n", 3, "users.bob.parked", "expected true or false, got 'on'"),
    Bad("parked-number", "users:\n  bob: {parked: 1}\n", 2, "users.bob.parked", "expected true or false, got 1"),
    Bad("tier-number", "users:\n  bob: {tier: 3}\n", 2, "users.bob.tier",
        "expected one of admin, power-user, namespace-owner, got 3"),
    Bad("tier-unknown", "users:\n  bob:\n    tier: boss\n", 3, "users.bob.tier",
        "expected one of admin, power-user, namespace-owner, got 'boss'"),
    Bad("claude-login-unknown", "users:\n  bob:\n    claude_login: token\n", 3, "users.bob.claude_login",
        "expected one of oauth, setup-token, got 'token'"),
    Bad("claude-login-bool", "users:\n  bob: {claude_login: true}\n", 2, "users.bob.claude_login",
        "expected one of oauth, setup-token, got true"),
    Bad("claude-login-typo", "users:\n  bob:\n    claude_logn: oauth\n", 3, "users.bob.claude_logn",
        "unknown field 'claude_logn' (did you mean 'claude_login'?)"),
    Bad("authentik-number", "users:\n  bob: {authentik_user: 3}\n", 2, "users.bob.authentik_user",
        "expected a string, got 3"),
    Bad("authentik-empty", "users:\n  bob: {authentik_user: ''}\n", 2, "users.bob.authentik_user", "must not be empty"),
    Bad("k8s-user-list", "users:\n  bob: {k8s_user: [bob]}\n", 2, "users.bob.k8s_user", "expected a string, got a list"),
    Bad("namespaces-string", "users:\n  bob: {tier: namespace-owner, namespaces: team}\n", 2, "users.bob.namespaces",
        "expected a list, got 'team'"),
    Bad("namespaces-item-number", "users:\n  bob:\n    tier: namespace-owner\n    namespaces:\n      - 7\n", 5,
        "users.bob.namespaces[0]", "expected a string, got 7"),
    Bad("code-layout-unknown", "users:\n  bob: {code_layout: mono}\n", 2, "users.bob.code_layout",
        "expected one of single, workspace, got 'mono'"),
    Bad("repos-string", "users:\n  bob: {code_layout: workspace, repos: infra}\n", 2, "users.bob.repos",
        "expected a list, got 'infra'"),
    Bad("repos-duplicate", "users:\n  bob:\n    code_layout: workspace\n    repos:\n      - infra\n      - infra\n", 6,
        "users.bob.repos[1]", "'infra' is listed twice"),
    Bad("address-number", "vault:\n  address: 8200\nusers: {}\n", 2, "vault.address",
        "expected a string or nothing (null), got 8200"),
    Bad("kv-mount-list", "vault:\n  kv_mount: [secret]\nusers: {}\n", 2, "vault.kv_mount", "expected a string, got a list"),
    Bad("token-period-bool", "vault:\n  token_period: true\nusers: {}\n", 2, "vault.token_period",
        "expected a string or a whole number, got true"),
    Bad("model-float", "sync:\n  model: 3.5\nusers: {}\n", 2, "sync.model", "expected a string, got 3.5"),
    Bad("textfile-bool", "status:\n  prometheus_textfile: false\nusers: {}\n", 2, "status.prometheus_textfile",
        "expected a string or nothing (null), got false"),
    # --- durations
    Bad("duration-words", "sync:\n  interval: 6 hours\nusers: {}\n", 2, "sync.interval", "'6 hours' is not a duration"),
    Bad("duration-zero", "vault:\n  token_period: 0h\nusers: {}\n", 2, "vault.token_period", "'0h' is zero"),
    Bad("duration-negative", "sync:\n  interval: -1h\nusers: {}\n", 2, "sync.interval", "'-1h' is negative"),
    Bad("duration-letters", "sync:\n  randomized_delay: abc\nusers: {}\n", 2, "sync.randomized_delay",
        "'abc' is not a duration"),
    Bad("duration-sexagesimal", "sync:\n  interval: 1:30\nusers: {}\n", 2, "sync.interval", "'1:30' is not a duration"),
    Bad("token-period-short", "vault:\n  token_period: 30m\nusers: {}\n", 2, "vault.token_period",
        "'30m' is too short; at least 1h"),
    Bad("interval-short", "sync:\n  interval: 30s\nusers: {}\n", 2, "sync.interval", "'30s' is too short; at least 1m"),
    # --- vault address and names
    Bad("address-no-scheme", "vault:\n  address: vault.example.org\nusers: {}\n", 2, "vault.address",
        "expected an http:// or https:// URL such as https://vault.example.org:8200, got 'vault.example.org'"),
    Bad("address-ftp", "vault:\n  address: ftp://x\nusers: {}\n", 2, "vault.address", "got 'ftp://x'"),
    Bad("address-no-host", "vault:\n  address: http://\nusers: {}\n", 2, "vault.address", "'http://' has no host"),
    Bad("address-bad-port", "vault:\n  address: https://v.example.org:port\nusers: {}\n", 2, "vault.address",
        "has an invalid port"),
    Bad("path-prefix-dotdot", "vault:\n  path_prefix: ../x\nusers: {}\n", 2, "vault.path_prefix", "'..' is not allowed"),
    Bad("path-prefix-empty-segment", "vault:\n  path_prefix: a//b\nusers: {}\n", 2, "vault.path_prefix", "empty segment"),
    Bad("path-prefix-absolute", "vault:\n  path_prefix: /abs\nusers: {}\n", 2, "vault.path_prefix",
        "no leading or trailing slash"),
    Bad("policy-prefix-upper", "vault:\n  policy_prefix: Work\nusers: {}\n", 2, "vault.policy_prefix",
        "invalid policy prefix 'Work'"),
    Bad("policy-prefix-slash", "vault:\n  policy_prefix: a/b\nusers: {}\n", 2, "vault.policy_prefix",
        "invalid policy prefix 'a/b'"),
    Bad("kv-mount-slash", "vault:\n  kv_mount: kv/v2\nusers: {}\n", 2, "vault.kv_mount", "invalid mount 'kv/v2'"),
    Bad("model-space", "sync:\n  model: claude haiku\nusers: {}\n", 2, "sync.model", "invalid model 'claude haiku'"),
    Bad("textfile-relative", "status:\n  prometheus_textfile: claude.prom\nusers: {}\n", 2, "status.prometheus_textfile",
        "expected an absolute path ending in .prom"),
    Bad("textfile-suffix", "status:\n  prometheus_textfile: /var/lib/claude.txt\nusers: {}\n", 2,
        "status.prometheus_textfile", "got '/var/lib/claude.txt'"),
    # --- per-user rules
    Bad("namespace-owner-without-namespaces", "users:\n  dave:\n    tier: namespace-owner\n", 3, "users.dave.tier",
        "tier namespace-owner needs a non-empty 'namespaces' list"),
    Bad("namespace-owner-empty-namespaces", "users:\n  dave: {tier: namespace-owner, namespaces: []}\n", 2,
        "users.dave.tier", "needs a non-empty 'namespaces' list"),
    Bad("namespaces-without-tier", "users:\n  dave:\n    namespaces: [team]\n", 3, "users.dave.namespaces",
        "only tier namespace-owner has namespaces (no tier is set)"),
    Bad("namespaces-wrong-tier", "users:\n  dave:\n    tier: power-user\n    namespaces: [team]\n", 4,
        "users.dave.namespaces", "(tier is power-user)"),
    Bad("namespace-not-dns-label", "users:\n  dave:\n    tier: namespace-owner\n    namespaces: [Team_A]\n", 4,
        "users.dave.namespaces[0]", "invalid namespace 'Team_A': a DNS label"),
    Bad("repos-without-workspace", "users:\n  dave:\n    code_layout: single\n    repos: [infra]\n", 4,
        "users.dave.repos", "repos need code_layout: workspace (code_layout is single)"),
    Bad("repos-without-layout", "users:\n  dave:\n    repos: [infra]\n", 3, "users.dave.repos",
        "(code_layout is not set)"),
    Bad("repo-name-traversal", "users:\n  dave:\n    code_layout: workspace\n    repos:\n      - ../etc\n", 5,
        "users.dave.repos[0]", "invalid repository name '../etc'"),
    Bad("repo-name-dot", "users:\n  dave:\n    code_layout: workspace\n    repos: [infra, .]\n", 4,
        "users.dave.repos[1]", "invalid repository name '.'"),
    Bad("authentik-duplicate",
        "users:\n  alice:\n    authentik_user: a@example.org\n  bob:\n    authentik_user: a@example.org\n", 5,
        "users.bob.authentik_user", "authentik_user 'a@example.org' is also used by user 'alice' (line 3)"),
]


def _write(tmp_path: Path, case: Bad) -> Path:
    path = tmp_path / "roster.yaml"
    if case.setup == "directory":
        path.mkdir()
    elif case.setup == "file":
        assert case.content is not None
        if isinstance(case.content, bytes):
            path.write_bytes(case.content)
        else:
            path.write_text(case.content, encoding="utf-8")
    return path


def test_the_table_is_big_and_distinct() -> None:
    assert len(BAD) >= 45
    assert len({case.id for case in BAD}) == len(BAD)
    assert len({case.content for case in BAD if case.content is not None}) == len([c for c in BAD if c.content is not None])


@pytest.mark.parametrize("case", BAD, ids=[case.id for case in BAD])
def test_bad_roster_gives_one_located_issue(case: Bad, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, case)

    with pytest.raises(RosterInvalid) as caught:
        load_roster(str(path))

    [issue] = caught.value.issues
    assert (issue.file, issue.line, issue.path) == (str(path), case.line, case.path)
    assert case.message in issue.message
    where = str(path) if case.line is None else f"{path}:{case.line}"
    assert issue.format() == ": ".join(part for part in (where, case.path, issue.message) if part)

    assert main(["validate", "--roster", str(path)]) == Exit.ERROR
    out, err = capsys.readouterr()
    assert err.strip() == issue.format()
    assert "Traceback" not in out + err


def test_all_errors_of_a_file_come_together_sorted_by_line(tmp_path: Path) -> None:
    # Found in the order: duplicate key (YAML), unknown field (schema), zero period (rules).
    path = tmp_path / "roster.yaml"
    path.write_text(
        "vault:\n"
        "  token_period: 0h\n"
        "users:\n"
        "  alice:\n"
        "    clade_auth: true\n"
        "  alice: {}\n",
        encoding="utf-8",
    )
    with pytest.raises(RosterInvalid) as caught:
        load_roster(str(path))
    assert [(issue.line, issue.path) for issue in caught.value.issues] == [
        (2, "vault.token_period"),
        (5, "users.alice.clade_auth"),
        (6, "users.alice"),
    ]
    assert str(caught.value).splitlines() == [issue.format() for issue in caught.value.issues]


def test_issue_json_has_exactly_the_documented_keys() -> None:
    issue = RosterIssue("roster.yaml", 14, "users.bob.claude_auth", "expected true or false, got 'no'")
    assert issue.as_json() == {"file": "roster.yaml", "line": 14, "path": "users.bob.claude_auth",
                               "message": "expected true or false, got 'no'"}
    assert issue.format() == "roster.yaml:14: users.bob.claude_auth: expected true or false, got 'no'"


def test_the_file_is_named_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "roster.yaml").write_text("users:\n  bob: {claude_auth: no}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RosterInvalid) as caught:
        load_roster("roster.yaml")
    assert caught.value.issues[0].format() == "roster.yaml:2: users.bob.claude_auth: expected true or false, got 'no'"


# --- good rosters --------------------------------------------------------------------


def test_example_roster_loads_to_the_expected_roster() -> None:
    roster = load_roster(str(EXAMPLE))

    assert roster == Roster(
        users={
            "alice": User("alice"),
            "bob": User("bob", tier="power-user", parked=True),
            "carol": User("carol", claude_auth=False),
            "dave": User("dave", tier="namespace-owner", namespaces=("team-dave",), code_layout="workspace",
                         repos=("infra", "website"), authentik_user="dave@example.org"),
        },
        vault=VaultSettings(),
        sync=SyncSettings(),
        status=StatusSettings(),
        source=str(EXAMPLE),
    )
    alice, bob, carol = roster.users["alice"], roster.users["bob"], roster.users["carol"]
    assert (alice.wants_token, alice.wants_timer) == (True, True)
    assert (bob.wants_token, bob.wants_timer) == (True, False)
    assert (carol.wants_token, carol.wants_timer) == (False, False)


def test_example_roster_documents_every_field() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    schema = json.loads(schema_file().read_text(encoding="utf-8"))
    fields = [*schema["properties"]]
    for section in ("vault", "sync", "status", "user"):
        fields += schema["$defs"][section]["properties"]
    for field in fields:
        assert f"{field}:" in text, field
    assert "# address:" in text


def test_minimal_roster_gets_every_default(tmp_path: Path) -> None:
    path = tmp_path / "roster.yaml"
    path.write_text("users: {alice: }\n", encoding="utf-8")

    roster = load_roster(str(path))

    assert roster == Roster(users={"alice": User("alice")}, source=str(path))
    assert roster.vault.address is None
    assert roster.vault.token_period_seconds == 768 * 3600
    assert (roster.sync.interval_seconds, roster.sync.randomized_delay_seconds) == (6 * 3600, 600)
    assert roster.status.prometheus_textfile is None
    assert roster.users["alice"].claude_login == "oauth"
    assert roster.policy_name("alice") == "workstation-claude-alice"
    assert roster.kv_path("alice") == "workstation/claude-users/alice"


def test_settings_are_read_and_durations_converted(tmp_path: Path) -> None:
    path = tmp_path / "roster.yaml"
    path.write_text(
        "vault:\n"
        "  address: https://vault.example.org:8200\n"
        "  kv_mount: kv\n"
        "  path_prefix: team/claude\n"
        "  policy_prefix: claude.\n"
        "  token_period: 1h30m\n"
        "sync:\n"
        "  interval: 3600\n"
        "  randomized_delay: 0\n"
        "  model: claude-haiku-4-5:latest\n"
        "status:\n"
        "  prometheus_textfile: /var/lib/node_exporter/claude-auth.prom\n"
        "users:\n"
        "  alice: {claude_auth: TRUE, parked: False}\n"
        "  bob: {claude_login: setup-token}\n",
        encoding="utf-8",
    )
    roster = load_roster(str(path))
    assert roster.users["bob"].claude_login == "setup-token"
    assert roster.vault == VaultSettings("https://vault.example.org:8200", "kv", "team/claude", "claude.", "1h30m", 5400)
    assert roster.sync == SyncSettings("3600", 3600, "0", 0, "claude-haiku-4-5:latest")
    assert roster.status.prometheus_textfile == "/var/lib/node_exporter/claude-auth.prom"
    assert roster.users["alice"] == User("alice", claude_auth=True, parked=False)


def test_yaml_11_words_stay_user_names(tmp_path: Path) -> None:
    path = tmp_path / "roster.yaml"
    path.write_text("users:\n  no: {}\n  on:\n  null:\n  _svc-1: {}\n", encoding="utf-8")
    assert list(load_roster(str(path)).users) == ["_svc-1", "no", "null", "on"]


def test_empty_sections_and_users_are_allowed(tmp_path: Path) -> None:
    path = tmp_path / "roster.yaml"
    path.write_text("vault:\nsync: {}\nstatus:\nusers: {}\n", encoding="utf-8")
    roster = load_roster(str(path))
    assert roster.users == {}
    assert (roster.vault, roster.sync, roster.status) == (VaultSettings(), SyncSettings(), StatusSettings())


def test_roster_is_immutable() -> None:
    roster = load_roster(str(EXAMPLE))
    with pytest.raises(dataclasses.FrozenInstanceError):
        roster.source = "other.yaml"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        roster.vault.token_period = "1h"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        roster.users["alice"].parked = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        roster.users["eve"] = User("eve")  # type: ignore[index]
    assert isinstance(roster.users["dave"].repos, tuple)
    assert isinstance(roster.users["dave"].namespaces, tuple)


# --- schema ---------------------------------------------------------------------------


def test_schema_is_shipped_and_is_valid_2020_12() -> None:
    from jsonschema import Draft202012Validator

    resource = schema_file()
    assert resource.is_file()
    schema = json.loads(resource.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def _all_objects(node: object) -> list[dict[str, object]]:
    if isinstance(node, dict):
        found = [node] if "properties" in node else []
        for value in node.values():
            found += _all_objects(value)
        return found
    return []


def test_schema_closes_every_object_and_describes_every_field() -> None:
    schema = json.loads(schema_file().read_text(encoding="utf-8"))
    for obj in _all_objects(schema):
        assert obj["additionalProperties"] is False
        for name, prop in obj["properties"].items():  # type: ignore[attr-defined]
            assert "description" in prop or "$ref" in prop, name


@pytest.mark.parametrize(("section", "cls"), [("vault", VaultSettings), ("sync", SyncSettings),
                                              ("status", StatusSettings), ("user", User)])
def test_schema_defaults_and_fields_match_the_dataclasses(section: str, cls: type) -> None:
    schema = json.loads(schema_file().read_text(encoding="utf-8"))
    properties = schema["$defs"][section]["properties"]
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "name" and not f.name.endswith("_seconds")}
    assert set(properties) == set(fields)
    for name, prop in properties.items():
        if "default" in prop:
            assert prop["default"] == fields[name].default, name


def test_dataclass_duration_defaults_agree_with_their_text() -> None:
    assert parse_duration(VaultSettings().token_period) == VaultSettings().token_period_seconds
    assert parse_duration(SyncSettings().interval) == SyncSettings().interval_seconds
    assert parse_duration(SyncSettings().randomized_delay) == SyncSettings().randomized_delay_seconds


# --- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("768h", 768 * 3600), ("6h", 21600), ("10m", 600), ("45s", 45), ("1h30m", 5400),
    ("1h0m30s", 3630), ("90m", 5400), ("3600", 3600), (" 6h ", 21600),
])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "empty duration"), ("6 hours", "is not a duration"), ("0h", "is zero"), ("0", "is zero"),
    ("-1h", "is negative"), ("abc", "is not a duration"), ("2d", "is not a duration"),
    ("1.5h", "is not a duration"), ("30m1h", "is not a duration"), ("1h1h", "is not a duration"),
    ("6H", "is not a duration"), ("h", "is not a duration"),
])
def test_parse_duration_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_duration(text)


def test_parse_duration_allows_zero_when_asked() -> None:
    assert parse_duration("0s", allow_zero=True) == 0
    with pytest.raises(ValueError, match="negative"):
        parse_duration("-0s", allow_zero=True)


@pytest.mark.parametrize(("seconds", "text"), [
    (768 * 3600, "32d"), (21600, "6h"), (600, "10m"), (5400, "1h30m"), (45, "45s"), (0, "0s"), (90061, "1d1h1m1s"),
])
def test_format_duration(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_duration_rejects_negative() -> None:
    with pytest.raises(ValueError):
        format_duration(-1)


# --- command line -------------------------------------------------------------------------


def test_validate_module_run_accepts_the_example() -> None:
    done = subprocess.run([sys.executable, "-m", "reconcile", "validate", "--roster", "roster.example.yaml"],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == Exit.OK, done.stderr
    assert done.stdout.strip() == "roster.example.yaml: valid, 4 users"


def test_validate_usage_error_is_64(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--bogus"]) == 64  # Exit.USAGE
    assert "Traceback" not in capsys.readouterr().err


def test_loading_module_does_not_import_jsonschema() -> None:
    code = "import sys, reconcile.roster.loader; sys.exit('jsonschema' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60, check=False).returncode == 0
