"""A sandbox --root (etc/passwd with users at uid 5001.., homes under it) with its
own policy and KV prefixes on the session-wide OpenBao, driving `main(argv)` in
process. Every request is logged at the HTTP layer to count writes; at the end
of each test every token seen is searched for in every output, log and the
state file."""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import hvac
import hvac.exceptions
import pytest
import requests.adapters
import yaml

from reconcile.vault import pipeline as vault_pipeline
from reconcile.cli import main
from reconcile.common.exitcodes import Exit
from tests.support.leaks import assert_no_secrets
from tests.support.openbao import OpenBaoServer

TOKEN_REL = ".config/claude-auth-sync/vault-token"
READ_ONLY_POSTS = ("/v1/auth/token/lookup", "/v1/auth/token/lookup-accessor", "/v1/sys/capabilities-self")


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


@dataclass
class World:
    server: OpenBaoServer
    root: Path
    roster_path: Path
    capsys: Any
    caplog: Any
    prefix: str = field(default_factory=lambda: f"t{secrets.token_hex(4)}-")
    uids: dict[str, int] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)
    secrets_seen: set[str] = field(default_factory=set)
    http: list[tuple[str, str]] = field(default_factory=list)

    @property
    def path_prefix(self) -> str:
        return f"{self.prefix.rstrip('-')}/claude-users"

    @property
    def client(self) -> hvac.Client:
        return hvac.Client(url=self.server.address, token=self.server.root_token)

    def policy_name(self, user: str) -> str:
        return f"{self.prefix}{user}"

    def add_users(self, *names: str) -> None:
        for name in names:
            if name in self.uids:
                continue
            uid = 5001 + len(self.uids)
            self.uids[name] = uid
            home = self.root / "home" / name
            home.mkdir(parents=True)
            os.chown(home, uid, uid)
        passwd = self.root / "etc" / "passwd"
        passwd.write_text("root:x:0:0:root:/root:/bin/bash\n" + "".join(
            f"{n}:x:{u}:{u}::/home/{n}:/bin/bash\n" for n, u in self.uids.items()))

    def write_roster(self, users: dict[str, dict[str, object]], **vault: object) -> None:
        self.add_users(*users)
        document = {"vault": {"policy_prefix": self.prefix, "path_prefix": self.path_prefix, **vault},
                    "users": users}
        self.roster_path.write_text(yaml.safe_dump(document))

    def run(self, *argv: str) -> Run:
        self.http.clear()
        code = main([*argv, "--roster", str(self.roster_path), "--root", str(self.root)])
        captured = self.capsys.readouterr()
        self.texts += [captured.out, captured.err]
        for user in self.uids:
            self.token(user)  # remember whatever token is in the files now
        self.host_token()
        return Run(int(code), captured.out, captured.err)

    def host_token(self) -> str | None:
        """The host token in <root>/etc/claude-auth/host-token (remembered as a secret to search for)."""
        try:
            value = (self.root / "etc/claude-auth/host-token").read_text().strip()
        except OSError:
            return None
        if value:
            self.secrets_seen.add(value)
        return value

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p in self.http if m not in ("GET", "LIST", "HEAD") and not p.endswith(READ_ONLY_POSTS)]

    def token_path(self, user: str) -> Path:
        return self.root / "home" / user / TOKEN_REL

    def token(self, user: str) -> str | None:
        try:
            value = self.token_path(user).read_text().strip()
        except OSError:
            return None
        if value:
            self.secrets_seen.add(value)
        return value

    def put_token(self, user: str, value: str) -> None:
        self.secrets_seen.add(value)
        path = self.token_path(user)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
        os.chown(path, self.uids[user], self.uids[user])
        path.chmod(0o600)

    def lookup(self, token: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.auth.token.lookup(token)["data"])
        except hvac.exceptions.Forbidden:
            return None

    def mint_like_tool(self, user: str, *, period: str = "768h", policies: list[str] | None = None,
                       owner: str | None = None) -> str:
        """A token shaped as the tool mints it (metadata included), made directly with root."""
        data = self.client.auth.token.create_orphan(
            policies=policies or [self.policy_name(owner or user)], period=period, no_default_policy=True,
            display_name=f"devvm-claude-auth-{owner or user}",
            meta={"managed_by": "claude-auth", "user": owner or user, "host": socket.gethostname()})
        value = str(data["auth"]["client_token"])
        self.secrets_seen.add(value)
        return value

    def admin_token(self, *, deny: tuple[str, ...] = ()) -> str:
        """An admin token (everything, sudo included) except on the `deny` paths, made directly with root.

        Its policy is named outside the tool's prefix so the tool never sees it as one of its own.
        """
        name = f"admin-{self.prefix}{secrets.token_hex(3)}"
        text = 'path "*" {\n  capabilities = ["create", "read", "update", "delete", "list", "sudo"]\n}\n'
        text += "".join(f'path "{path}" {{\n  capabilities = ["deny"]\n}}\n' for path in deny)
        self.client.sys.create_or_update_acl_policy(name, text)
        data = self.client.auth.token.create_orphan(policies=[name], ttl="1h", no_default_policy=True,
                                                    display_name="test-admin")
        value = str(data["auth"]["client_token"])
        self.secrets_seen.add(value)
        return value

    def plain_token(self, policies: list[str] | None = None) -> str:
        """A valid token that is not an admin token (the `default` policy unless told), made with root."""
        data = self.client.auth.token.create_orphan(policies=policies or ["default"], ttl="1h",
                                                    display_name="test-plain")
        value = str(data["auth"]["client_token"])
        self.secrets_seen.add(value)
        return value

    def policy_text(self, user: str) -> str | None:
        try:
            return str(self.client.sys.read_acl_policy(self.policy_name(user))["data"]["policy"])
        except hvac.exceptions.InvalidPath:
            return None

    def state(self) -> dict[str, str]:
        path = self.root / "var/lib/claude-auth/state.json"
        text = path.read_text()
        self.texts.append(text)
        return {u: e["accessor"] for u, e in json.loads(text)["tokens"].items()}

    def pending_revoke(self) -> list[str]:
        """The state file's accessors of replaced tokens still to revoke."""
        text = (self.root / "var/lib/claude-auth/state.json").read_text()
        self.texts.append(text)
        return list(json.loads(text).get("pending_revoke", []))

    def assert_converged(self) -> None:
        again = self.run("plan")
        assert again.code == Exit.OK, again.out + again.err
        assert again.lines[-1] == "No changes."


@pytest.fixture
def world(tmp_path: Path, openbao: OpenBaoServer, capsys: Any, caplog: Any,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    w = World(server=openbao, root=root, roster_path=tmp_path / "roster.yaml", capsys=capsys, caplog=caplog)
    monkeypatch.setenv("VAULT_ADDR", openbao.address)
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.vault-token of the real user
    monkeypatch.delenv("CLAUDE_AUTH_NO_ADMIN", raising=False)
    monkeypatch.delenv("VAULT_CACERT", raising=False)

    original_send = requests.adapters.HTTPAdapter.send

    def send(adapter: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        w.http.append((request.method.upper(), request.path_url.split("?")[0]))
        return original_send(adapter, request, *args, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    original_exchange = vault_pipeline.exchange

    def exchange(address: str, wanted: Sequence[vault_pipeline.Request], **kwargs: Any) -> vault_pipeline.Exchange:
        result = original_exchange(address, wanted, **kwargs)
        w.http.extend((request.method, request.path) for request, sent in zip(wanted, result.sent) if sent)
        return result

    monkeypatch.setattr(vault_pipeline, "exchange", exchange)
    yield w
    texts = w.texts + [record.getMessage() for record in caplog.records]
    state = root / "var/lib/claude-auth/state.json"
    if state.exists():
        texts.append(state.read_text())
    assert_no_secrets(texts, w.secrets_seen | {openbao.root_token})


