"""KV v2 operations: the person's path, read and written with check-and-set.

Decoded (`kv_read`, `kv_write_cas`, `kv_metadata`) and undecoded (`kv_read_raw`,
`kv_write_cas_raw`: each value as its JSON text, for data other people control,
read with reconcile.common.boundedjson, never the recursive stdlib decoder).
"""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any, Mapping

import hvac
import hvac.adapters
import hvac.exceptions
import hvac.utils

from reconcile.common import boundedjson
from reconcile.vault.connection import Connection
from reconcile.vault.transport import (Redirected, decode_kv_metadata, decode_kv_secret, is_not_found,
                                       raw_secret, read_limited, reading)
from reconcile.vault.values import KV_BODY_LIMIT, KvMetadata, KvRawSecret, KvSecret, VaultDenied, VaultError


class KvOperations(Connection):
    """Reads and check-and-set writes of KV v2 secrets."""

    # --- KV v2 -----------------------------------------------------------------

    def kv_read(self, mount: str, path: str, *, consistent: bool = False) -> KvSecret | None:
        """The latest version of a KV v2 secret, or None when the path has none.

        `consistent`: answered by the active node (`_on_active`), for the read
        that a check-and-set write depends on.

        A deleted or destroyed latest version N reads as KvSecret(N, {}): its
        data is gone, but a check-and-set write must still name N. The data
        read answers 404 (InvalidPath) for a destroyed version, as for a path
        that never existed; only then is the metadata read (one more request)
        to tell the two apart. Data at the path that cannot be read (nested too
        deep, too large, not a map) is a VaultMalformed error.
        """
        what = f"read {mount}/data/{path}"
        if consistent:
            data = self._on_active(what, is_not_found, lambda client: client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=mount, raise_on_deleted_version=False))
        else:
            data = self._call_or_none(what, is_not_found, self._client.secrets.kv.v2.read_secret_version,
                                      path=path, mount_point=mount, raise_on_deleted_version=False)
        if data is None:
            try:
                versions = self.kv_metadata(mount, path, consistent=consistent)
            except VaultDenied:  # a policy without metadata read: the path counts as new, as before
                return None
            if versions is None or versions.current_version <= 0:
                return None
            return KvSecret(version=versions.current_version, data=MappingProxyType({}))
        with reading(what):
            return decode_kv_secret(data)

    def kv_write_cas(self, mount: str, path: str, data: Mapping[str, Any], cas: int) -> int:
        """Write the whole map only if the current version is `cas` (0: path is new). Returns the new version.

        Retried like a read after a lost answer: check-and-set makes a second
        copy impossible (a write that did land makes the retry a CasConflict).
        """
        what = f"write {mount}/data/{path}"
        result = self._call(what, self._client.secrets.kv.v2.create_or_update_secret,
                            path=path, secret=dict(data), cas=cas, mount_point=mount)
        with reading(what):
            return int((result.get("data") or {}).get("version") or 0)

    def kv_metadata(self, mount: str, path: str, *, consistent: bool = False) -> KvMetadata | None:
        what = f"read {mount}/metadata/{path}"
        if consistent:
            data = self._on_active(what, is_not_found, lambda client: client.secrets.kv.v2.read_secret_metadata(
                path=path, mount_point=mount))
        else:
            data = self._call_or_none(what, is_not_found, self._client.secrets.kv.v2.read_secret_metadata,
                                      path=path, mount_point=mount)
        if data is None:
            return None
        with reading(what):
            return decode_kv_metadata(data)

    # --- KV v2, undecoded (for data other people control) -----------------------
    # hvac decodes every answer with the stdlib json, which raises RecursionError on a
    # value nested a few thousand levels deep and holds a huge answer several times
    # over. These two read and write the map's values as JSON text instead; see
    # reconcile.common.boundedjson. Both go through _call like every other request.

    def kv_read_raw(self, mount: str, path: str, limit: int = KV_BODY_LIMIT, *,
                    consistent: bool = False) -> KvRawSecret | None:
        """As kv_read, but each value is its JSON text as Vault sent it (decoded by the caller).

        `consistent`: answered by the active node, as in kv_read (for the read a
        check-and-set write names the version of).

        The answer is streamed and refused (VaultError) past `limit` bytes;
        its structure is read without recursion. One request, or two (the
        metadata) for a destroyed latest version, as kv_read.
        """
        what = f"read {mount}/data/{path}"
        url = hvac.utils.format_url("/v1/{mount}/data/{path}", mount=mount, path=path)

        def fetch(client: hvac.Client) -> KvRawSecret | bytes | None:
            self.requests["GET"] += 1
            try:
                # RawAdapter's request, not the client's: hvac's JSON adapter would decode the answer.
                # So what BoundedAdapter.request does for every other request is done here: this
                # attempt's timeout, and a standby's redirect raised (retried), never read as an answer.
                timeout = self._adapter.attempt_timeout
                response = hvac.adapters.RawAdapter.request(client.adapter, "GET", url, stream=True,
                                                            **({} if timeout is None else {"timeout": timeout}))
            except hvac.exceptions.InvalidPath as exc:  # 404: no data; a deleted version still names itself
                answer = exc.json if isinstance(exc.json, dict) else {}
                metadata = (answer.get("data") or {}).get("metadata")
                if isinstance(metadata, dict) and metadata.get("deletion_time"):
                    return KvRawSecret(version=int(metadata.get("version") or 0), fields=MappingProxyType({}))
                return None
            with response:
                if 300 <= response.status_code < 400:
                    raise Redirected(response.status_code)
                return read_limited(response, limit, what)

        if consistent:
            body = self._on_active(what, None, fetch)
        else:
            body = self._call(what, fetch, self._client)
        if isinstance(body, KvRawSecret):
            return body
        if body is None:
            try:
                versions = self.kv_metadata(mount, path, consistent=consistent)
            except VaultDenied:  # a policy without metadata read: the path counts as new, as in kv_read
                return None
            if versions is None or versions.current_version <= 0:
                return None
            return KvRawSecret(version=versions.current_version, fields=MappingProxyType({}))
        try:
            return raw_secret(body)
        except (boundedjson.JsonProblem, ValueError, TypeError, KeyError):
            raise VaultError(f"unexpected answer to {what} (not a KV v2 secret)") from None

    def kv_write_cas_raw(self, mount: str, path: str, fields: Mapping[str, bytes], cas: int) -> int:
        """kv_write_cas with each value given as JSON text (written as is). Returns the new version."""
        members = b",".join(json.dumps(key).encode() + b":" + value for key, value in fields.items())
        body = b'{"options":{"cas":%d},"data":{%s}}' % (int(cas), members)
        url = hvac.utils.format_url("/v1/{mount}/data/{path}", mount=mount, path=path)
        result = self._call(f"write {mount}/data/{path}", self._client.adapter.post, url, data=body,
                            headers={"Content-Type": "application/json"})
        return int(((result or {}).get("data") or {}).get("version") or 0)
