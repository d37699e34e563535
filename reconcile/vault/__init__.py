"""The Vault side: the client, and the Vault domain in the observe / plan / apply shape.

The client: `client` (the `Vault` class), joined from `connection` (one
connection, the one path of every request), `tokens`, `kv`, `policies` and
`fastpath` (what callers need of it), over `transport` (hvac's bounded adapter,
what a failure means) and `values` (errors, Secret, records; stdlib only);
`pipeline` (requests written several to a connection), `pool` (a few clients at
once) and `retry` (the one retry policy and the run's deadline).

The domain: `desired` (policies and tokens the roster asks for, pure),
`observe` (through the client only), `plan` (pure) and `apply` (the executor's
handlers and the state file's token bookkeeping).

May import: reconcile.roster, reconcile.common and itself; never reconcile.local
(a person's token file is read, written and locked through callables the
caller hands in: reconcile.engine.homes). Only the client modules (client,
connection, tokens, kv, policies, fastpath, transport) import hvac, requests or
urllib3; the sync imports the client modules, never the domain ones.
"""
