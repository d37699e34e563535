"""The local side: this machine's user database, the homes, systemd, and root's own files.

Owns `accounts` (passwd under --root), `homefs` and `homelock` (the only code that
acts below a home folder as root, never following a planted link; the mint
lock), `execaccess` (whether a person can run the units' program), `systemd` (the
only module that runs systemctl), `statefile` (/var/lib/claude-auth: the state
file, the mint journal, the apply lock), and the local domain in the observe /
plan / apply shape: `desired`, `observe`, `plan` (pure), `apply`.

May import: reconcile.roster, reconcile.common and itself; never reconcile.vault
(what joins the two sides lives in reconcile.engine).
"""
