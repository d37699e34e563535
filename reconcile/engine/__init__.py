"""The engine: what joins the domains into one run, below the commands.

Owns `session` (ApplySession: one plan or apply run and every resource it holds:
the Vault client and its deadline, the apply lock, the mint locks and their
allowance, the token reader and writer, the mint journal), `connect` (reaching
Vault, the admin or hourly mode), `planner` (pure: the domains' plans joined, and
the one cross-domain rule), `executor` (the one executor), `homes` (the Vault
side's token file reader, writer and lock, made from the local side), `status`
(read-only gathering for `status`, and the metrics textfile) and `metrics` (the
node_exporter textfile format).

May import: reconcile.vault, reconcile.local, reconcile.roster, reconcile.sync (the
stored setup token's fields, for `status`), reconcile.common and itself; never
reconcile.commands. Prints nothing but the session's one NOTE line about the mode.
"""
