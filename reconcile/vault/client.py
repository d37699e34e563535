"""The Vault client: `Vault`, one class made of what its callers need.

The only code that talks to Vault through hvac is here and in the modules this
one joins: reconcile.vault.connection (one connection, the retry policy, reads on
the active node), tokens (lookups, renewals, mints, revocations), kv (the
person's KV v2 path), policies (ACL policies), roles (token roles and mints through them)
and fastpath (pipelined requests);
reconcile.vault.transport holds hvac's bounded adapter and what a failure means,
reconcile.vault.values the values and errors they answer with.

Every call returns plain typed values or raises a VaultError whose text never
holds a token: hvac's exceptions are translated, with their chain cut (`from
None`) so no traceback carries request details further.

Answers are read defensively (transport.BoundedAdapter): at most
MAX_ANSWER_BYTES, nested at most MAX_ANSWER_DEPTH deep, and any answer that
cannot be read or has an unexpected shape is a VaultMalformed error, never a
traceback. A person controls the data at their own KV path; it must not break
anyone else's run.
"""

from __future__ import annotations

from reconcile.vault.fastpath import FastPath
from reconcile.vault.kv import KvOperations
from reconcile.vault.policies import PolicyOperations
from reconcile.vault.roles import RoleOperations
from reconcile.vault.tokens import TokenOperations


class Vault(TokenOperations, KvOperations, PolicyOperations, RoleOperations, FastPath):
    """One hvac client for one token: every operation, with a count of the requests it made.

    Made with `Vault(address, token)`; `with_token` and `twin` make more clients
    of the same run (sharing the count, the deadline and whether Vault is down).
    """
