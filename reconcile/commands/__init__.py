"""The commands: each one parses what it was given, calls below, and prints.

Owns `validate`, `reconcile_cmd` (`plan` and `apply`: open the apply session,
print what it planned or did), `status_cmd` (the table and the JSON of `status`),
`setup_token_cmd` (`claude-auth setup-token`), `whoami_cmd` (`claude-auth whoami`) and `render` (the human and JSON
views of a plan and of an apply). The exit status of each command is chosen here;
no domain work is done here (what two commands share lives below both, in
reconcile.engine), and no command module imports another, except `render`.

May import: reconcile.engine, reconcile.vault, reconcile.local, reconcile.roster,
reconcile.sync, reconcile.common and itself. reconcile.cli imports the command
modules lazily, so `claude-auth sync` pays for none of them.
"""
