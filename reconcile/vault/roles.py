"""Token roles and the mints made through them: what a host token is for (reconcile.vault.hosts).

An admin writes, reads, lists and deletes each enrolled host's role; the host
token mints its people's tokens through its own role (`create_role_token`, never
sent twice, like every mint) and a replaced person's token revokes itself
(tokens.TokenOperations.revoke_token_self): the hourly run holds no token that may revoke another.
"""

from __future__ import annotations

from typing import Any, Mapping

from reconcile.vault.connection import Connection
from reconcile.vault.transport import is_not_found, reading
from reconcile.vault.values import MintedToken, Secret


class RoleOperations(Connection):
    """auth/token/roles (admin) and auth/token/create/<role> (a host token)."""

    def read_role(self, name: str) -> dict[str, Any] | None:
        """The role's fields as Vault shows them, or None when there is no such role."""
        what = f"read token role {name}"
        data = self._call_or_none(what, is_not_found, self._client.adapter.get, f"/v1/auth/token/roles/{name}")
        if data is None:
            return None
        with reading(what):
            return dict((data or {}).get("data") or {})

    def write_role(self, name: str, fields: Mapping[str, Any]) -> None:
        """Create or replace the role (every field this tool manages is sent each time).

        Lists go as one comma-separated string, which the role API takes for every list field:
        OpenBao refuses a JSON body of more than 1,000 strings ("exceeded maximum number of
        strings"), so a host with a thousand people could not be enrolled (found by `make bench`).
        Policy names hold no comma (the roster schema allows none in a prefix or a user name).
        """
        wire = {key: ",".join(str(item) for item in value) if isinstance(value, (list, tuple)) else value
                for key, value in fields.items()}
        self._call(f"write token role {name}", self._client.adapter.post, f"/v1/auth/token/roles/{name}",
                   json=wire)

    def delete_role(self, name: str) -> None:
        """Idempotent: deleting a missing role succeeds."""
        self._call_or_none(f"delete token role {name}", is_not_found, self._client.adapter.delete,
                           f"/v1/auth/token/roles/{name}")

    def list_roles(self) -> list[str]:
        what = "list auth/token/roles"
        data = self._call_or_none(what, is_not_found, self._client.adapter.list, "/v1/auth/token/roles")
        with reading(what):
            return [str(name) for name in ((data or {}).get("data") or {}).get("keys") or ()]

    def create_role_token(self, role: str, *, policy: str, display_name: str,
                          meta: Mapping[str, str]) -> MintedToken:
        """Mint a token through `role` (the role makes it orphan and periodic, without the default policy).

        Only the three fields the host policy allows are sent (templates/host-policy.hcl.j2): any other
        would be refused. Never sent twice: an answer lost after sending may mean a token exists.
        """
        what = f"token create through role {role}"
        data = self._call(what, self._client.adapter.post, f"/v1/auth/token/create/{role}",
                          json={"policies": [policy], "display_name": display_name, "meta": dict(meta)},
                          _idempotent=False)
        with reading(what):
            auth = data.get("auth") or {}
            return MintedToken(token=Secret(str(auth["client_token"])), accessor=str(auth["accessor"]))
