"""Vault over TLS: a real OpenBao with `-dev-tls` and the CA it generates.

The client verifies the server with the CA named by `cacert` or VAULT_CACERT
(as the Vault CLI does), not with requests' default bundle. Until this test,
hvac quietly preferred the session's default `verify=True` over the CA it was
given, so a Vault with a private CA could not be reached at all.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from reconcile.vault.client import Vault
from reconcile.vault.values import Secret
from tests.support.openbao import OpenBaoServer


@pytest.fixture(scope="module")
def tls_openbao() -> Iterator[OpenBaoServer]:
    with OpenBaoServer(tls=True) as server:
        yield server


@pytest.fixture(autouse=True)
def no_ca_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "VAULT_CACERT", "VAULT_CAPATH"):
        monkeypatch.delenv(name, raising=False)


def test_the_ca_given_to_the_client_verifies_the_server(tls_openbao: OpenBaoServer) -> None:
    vault = Vault(tls_openbao.address, Secret(tls_openbao.root_token), cacert=str(tls_openbao.ca_path))
    assert "root" in vault.lookup_self().policies


def test_vault_cacert_in_the_environment_verifies_the_server(tls_openbao: OpenBaoServer,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_CACERT", str(tls_openbao.ca_path))
    vault = Vault(tls_openbao.address, Secret(tls_openbao.root_token))
    assert "root" in vault.lookup_self().policies
    assert vault.lookup_tokens_pipelined([Secret(tls_openbao.root_token)], own=True)[0] is not None
