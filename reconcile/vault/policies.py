"""ACL policy operations: list, read, write and delete (an admin token).
"""

from __future__ import annotations

from reconcile.vault.connection import Connection
from reconcile.vault.transport import MAX_LISTING_BYTES, is_not_found, is_unsupported, reading


class PolicyOperations(Connection):
    """The ACL policies under sys/policies/acl."""

    def list_policies_detailed(self) -> dict[str, str] | None:
        """Every ACL policy name and text in one request (OpenBao); None where unsupported (HashiCorp Vault)."""
        what = "list sys/policies/detailed/acl"
        data = self._call_or_none(what, is_unsupported, self._client.adapter.list, "/v1/sys/policies/detailed/acl",
                                  answer_cap=MAX_LISTING_BYTES)
        if data is None:
            return None
        with reading(what):
            key_info = ((data or {}).get("data") or {}).get("key_info") or {}
            return {str(name): str((info or {}).get("policy") or "") for name, info in key_info.items()}

    def list_policy_names(self) -> list[str]:
        what = "list sys/policies/acl"
        data = self._call(what, self._client.adapter.list, "/v1/sys/policies/acl")
        with reading(what):
            return [str(name) for name in ((data or {}).get("data") or {}).get("keys") or ()]

    def read_policy(self, name: str) -> str | None:
        """The policy text, or None when there is no such policy."""
        what = f"read policy {name}"
        data = self._call_or_none(what, is_not_found, self._client.sys.read_acl_policy, name)
        if data is None:
            return None
        with reading(what):
            return str(((data or {}).get("data") or {}).get("policy") or "")

    def write_policy(self, name: str, text: str) -> None:
        self._call(f"write policy {name}", self._client.sys.create_or_update_acl_policy, name=name, policy=text)

    def delete_policy(self, name: str) -> None:
        """Idempotent: deleting a missing policy succeeds."""
        self._call(f"delete policy {name}", self._client.sys.delete_acl_policy, name=name)
