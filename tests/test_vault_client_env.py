"""The client variables an admin sets for the Vault CLI (issue 23), against a real OpenBao.

Read as OpenBao's own client reads them (openbao/openbao api/env.go): BAO_<name>
when it is set at all, even empty, else VAULT_<name>. The namespace must reach
every request, the pipelined fast path's included (it writes its own headers);
the TLS server name and the client certificate must reach both paths too.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import hvac
import pytest

from reconcile.vault.client import Vault
from reconcile.vault.values import Secret, VaultError, client_setting, resolve_address, resolve_token
from tests.support.openbao import OpenBaoServer, bao_binary, free_port

VARIABLES = [f"{side}_{name}" for side in ("BAO", "VAULT")
             for name in ("ADDR", "TOKEN", "CACERT", "CAPATH", "CLIENT_CERT", "CLIENT_KEY", "TLS_SERVER_NAME",
                          "NAMESPACE")]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, None),
    ({"VAULT_NAMESPACE": "a"}, "a"),
    ({"BAO_NAMESPACE": "b", "VAULT_NAMESPACE": "a"}, "b"),
    ({"BAO_NAMESPACE": "", "VAULT_NAMESPACE": "a"}, None),   # set, even empty, BAO_ wins
    ({"VAULT_NAMESPACE": ""}, None),
])
def test_bao_names_win_over_vault_names_even_when_empty(environ: dict[str, str], expected: str | None) -> None:
    assert client_setting("NAMESPACE", environ) == expected


def test_bao_addr_and_an_empty_bao_token_win(openbao: OpenBaoServer, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("BAO_ADDR", openbao.address)
    assert resolve_address(None) == openbao.address
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    monkeypatch.setenv("BAO_TOKEN", "")
    assert resolve_token(home=tmp_path) is None  # as bao: a set BAO_TOKEN hides VAULT_TOKEN
    monkeypatch.setenv("BAO_TOKEN", openbao.root_token)
    token = resolve_token(home=tmp_path)
    assert token is not None and "root" in Vault(resolve_address(None) or "", token).lookup_self().policies


@pytest.fixture
def namespace(openbao: OpenBaoServer) -> Iterator[str]:
    name = f"team-{secrets.token_hex(4)}"
    root = hvac.Client(url=openbao.address, token=openbao.root_token)
    root.sys.create_namespace(path=name)
    inside = hvac.Client(url=openbao.address, token=openbao.root_token, namespace=name)
    inside.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    yield name


def test_the_namespace_reaches_every_request_the_fast_path_included(
        openbao: OpenBaoServer, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    root = hvac.Client(url=openbao.address, token=openbao.root_token)
    inside = hvac.Client(url=openbao.address, token=openbao.root_token, namespace=namespace)
    monkeypatch.setenv("BAO_NAMESPACE", namespace)
    vault = Vault(openbao.address, Secret(openbao.root_token))

    probe = 'path "auth/token/lookup-self" { capabilities = ["read"] }'
    assert vault.write_policies_pipelined([("ns-probe", probe)]) == [True]
    vault.write_policy("ns-probe-2", 'path "y" { capabilities = ["read"] }')
    names = inside.sys.list_acl_policies()["data"]["keys"]
    assert {"ns-probe", "ns-probe-2"} <= set(names)
    assert not {"ns-probe", "ns-probe-2"} & set(root.sys.list_acl_policies()["data"]["keys"])
    assert vault.read_policies_pipelined(["ns-probe"]) == [probe]

    written = vault.kv_write_cas("secret", "people/alice", {"k": "v"}, cas=0)
    assert written == 1 and vault.kv_read_raw("secret", "people/alice").version == 1
    assert inside.secrets.kv.v2.read_secret_version(path="people/alice", mount_point="secret",
                                                    raise_on_deleted_version=False)["data"]["data"] == {"k": "v"}

    token = inside.auth.token.create_orphan(policies=["ns-probe"], period="1h", no_default_policy=True)
    secret = Secret(token["auth"]["client_token"])
    [info] = vault.lookup_tokens_pipelined([secret], own=True)
    assert info is not None and info.policies == ("ns-probe",)

    monkeypatch.delenv("BAO_NAMESPACE")
    outside = Vault(openbao.address, Secret(openbao.root_token))
    assert outside.read_policies_pipelined(["ns-probe"]) == [None]  # the root namespace has no such policy


def test_a_client_certificate_without_its_key_is_one_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                                 openbao: OpenBaoServer) -> None:
    monkeypatch.setenv("VAULT_CLIENT_CERT", "/etc/ssl/client.pem")
    with pytest.raises(VaultError, match="VAULT_CLIENT_CERT and VAULT_CLIENT_KEY must be set together"):
        Vault(openbao.address, Secret(openbao.root_token))


# --- mTLS: a listener that verifies client certificates, and a certificate for another name ----------


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@dataclass
class MutualTls:
    address: str
    root_token: str
    folder: Path


@pytest.fixture(scope="module")
def mtls_openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MutualTls]:
    """A dev OpenBao with a second listener: TLS with a certificate for vault.test only (so reaching
    it at 127.0.0.1 needs VAULT_TLS_SERVER_NAME), requiring a client certificate from our CA."""
    folder = tmp_path_factory.mktemp("mtls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", f"{folder}/ca.key", "-out", f"{folder}/ca.pem", "-days", "2",
             "-subj", "/CN=claude-auth test CA")
    (folder / "san.ext").write_text("subjectAltName=DNS:vault.test\n")
    for name, extra in (("server", ("-extfile", f"{folder}/san.ext")), ("client", ())):
        _openssl("req", *ec, "-keyout", f"{folder}/{name}.key", "-out", f"{folder}/{name}.csr",
                 "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", f"{folder}/{name}.csr", "-CA", f"{folder}/ca.pem", "-CAkey",
                 f"{folder}/ca.key", "-CAcreateserial", "-out", f"{folder}/{name}.pem", "-days", "2", *extra)
    port, dev_port = free_port(), free_port()
    (folder / "listener.hcl").write_text(f'''listener "tcp" {{
  address = "127.0.0.1:{port}"
  tls_cert_file = "{folder}/server.pem"
  tls_key_file = "{folder}/server.key"
  tls_client_ca_file = "{folder}/ca.pem"
  tls_require_and_verify_client_cert = true
}}
''')
    root_token = "devroot-" + secrets.token_hex(16)
    server = subprocess.Popen([bao_binary(), "server", "-dev", f"-dev-listen-address=127.0.0.1:{dev_port}",
                               f"-config={folder}/listener.hcl"],
                              env={**os.environ, "BAO_DEV_ROOT_TOKEN_ID": root_token},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{dev_port}/v1/sys/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        yield MutualTls(f"https://127.0.0.1:{port}", root_token, folder)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _mtls_env(monkeypatch: pytest.MonkeyPatch, tls: MutualTls, *, cert: bool, server_name: bool,
              prefix: str = "VAULT") -> None:
    monkeypatch.setenv(f"{prefix}_CACERT", str(tls.folder / "ca.pem"))
    if cert:
        monkeypatch.setenv(f"{prefix}_CLIENT_CERT", str(tls.folder / "client.pem"))
        monkeypatch.setenv(f"{prefix}_CLIENT_KEY", str(tls.folder / "client.key"))
    if server_name:
        monkeypatch.setenv(f"{prefix}_TLS_SERVER_NAME", "vault.test")


@pytest.mark.parametrize("prefix", ["VAULT", "BAO"])
def test_a_client_certificate_and_a_server_name_reach_both_paths(mtls_openbao: MutualTls, prefix: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _mtls_env(monkeypatch, mtls_openbao, cert=True, server_name=True, prefix=prefix)
    vault = Vault(mtls_openbao.address, Secret(mtls_openbao.root_token))
    assert "root" in vault.lookup_self().policies
    # The fast path speaks TLS itself: an answer here (not None) came over its own connection.
    [info] = vault.lookup_tokens_pipelined([Secret(mtls_openbao.root_token)], own=True)
    assert info is not None and "root" in info.policies
    assert vault.requests["POST-READ"] + vault.requests["GET"] >= 2


@pytest.mark.parametrize(("cert", "server_name", "why"), [
    (False, True, "no client certificate"),
    (True, False, "the certificate names vault.test, not 127.0.0.1"),
])
def test_without_the_certificate_or_the_server_name_vault_is_not_reached(
        mtls_openbao: MutualTls, monkeypatch: pytest.MonkeyPatch, cert: bool, server_name: bool, why: str) -> None:
    monkeypatch.setenv("CLAUDE_AUTH_VAULT_DEADLINE", "5")
    _mtls_env(monkeypatch, mtls_openbao, cert=cert, server_name=server_name)
    vault = Vault(mtls_openbao.address, Secret(mtls_openbao.root_token))
    with pytest.raises(VaultError):
        vault.lookup_self()
    assert vault.lookup_tokens_pipelined([Secret(mtls_openbao.root_token)], own=True) == [None]
