"""The per-person `claude-auth sync`: check the Claude login, back it up, restore it.

Owns the flow (`flow`), its settings (`settings`: from the environment and the
unit's drop-in, never from the roster), the live check (`livecheck`), the login
file and Claude's refresh lock (`credentials`, `claudelock`, `ownerrecord`), the
backup at the person's Vault path (`backup`), the status line and `sync.log`
(`statuslog`), bounded reads of the person's files (`safefile`), and setup-token
mode (`setup_token`, `setup_token_sync`), and what the person is told: `notice` (the
notice files behind the profile.d line) and `whoami` (`claude-auth whoami`).

May import: the Vault client (reconcile.vault: client, connection, tokens, kv,
policies, fastpath, transport, values, pipeline, retry; never the Vault domain),
reconcile.common (never `templating`) and itself. Runs on every timer tick as
the person, so it reaches neither jsonschema, jinja2 nor yaml, however
indirectly.
"""
