"""`claude-auth setup-token [--user NAME] [--expires-at DATE]`: store a person's long-lived setup token.

Reads the token from standard input (from a terminal: a prompt without echo),
never from argv: the bare token, or all that `claude setup-token` printed, whose
`(valid for <lifetime>)` then sets the expiry. Checks its shape (`sk-ant-oat01-…`), proves it with one live
`claude -p` that alone gets the token, through its environment, and stores it
by check-and-set merge at the person's KV path (every other key kept):
`claude_setup_token`, `claude_setup_token_stored_at`,
`claude_setup_token_expires_at_ms` (--expires-at, else the lifetime claude
printed, else stored + 365 days) and `claude_setup_token_expiry_source`.

Who may: the person, with their own scoped token file (their policy allows only
their own path), or root for anyone, with an admin VAULT_TOKEN (else
~/.vault-token). Vault settings come from the roster when it can be read
(--roster, else $CLAUDE_AUTH_ROSTER, else /etc/claude-auth/roster.yaml), else
from the environment the sync uses (VAULT_ADDR, CLAUDE_AUTH_KV_MOUNT,
CLAUDE_AUTH_PATH_PREFIX; the defaults are the roster's). One line: `OK <user>: ...` on stdout, or `FAIL <user>: ...` on
stderr; exit 0, 1, or 64 for a usage error. Nothing is stored unless every
check passed.
"""

from __future__ import annotations

import os
import sys
import termios
import time
from typing import Mapping, TextIO

from reconcile.common.exitcodes import Exit
from reconcile.sync import backup, settings as config
from reconcile.sync import setup_token as st
from reconcile.sync.livecheck import Verdict
from reconcile.sync.safefile import TOKEN_FILE_LIMIT, UnsafeFile, read_capped
from reconcile.sync.settings import SettingsError, SyncSettings
from reconcile.sync.statuslog import Redactor, Status, status_line, utc_timestamp
from reconcile.vault.client import Vault
from reconcile.vault.values import Secret, VaultError, resolve_token

PROMPT = "Setup token (paste the token, or all that `claude setup-token` printed, then Enter; not shown): "


class _Stop(Exception):
    """Ends the command; `code` and the reason (safe to show)."""

    def __init__(self, reason: str, code: Exit = Exit.ERROR) -> None:
        super().__init__(reason)
        self.code = code


def run(user: str | None, expires_at: str | None, *, roster_path: str | None = None,
        default_roster: str | None = None, environ: Mapping[str, str] | None = None,
        stdin: TextIO | None = None, out: TextIO | None = None, err: TextIO | None = None,
        is_root: bool | None = None) -> int:
    environ = os.environ if environ is None else environ
    out, err = out or sys.stdout, err or sys.stderr
    redact = Redactor()
    name = user or "?"
    try:
        as_root = os.geteuid() == 0 if is_root is None else is_root
        name, settings, expires_ms = _arguments(user, expires_at, environ, as_root, roster_path, default_roster)
        given = _read_given(stdin or sys.stdin, err)
        redact.add(given.token)
        vault = _vault(settings, environ, redact, is_root=as_root)
        message = _store(vault, settings, given, expires_ms, environ)
    except _Stop as exc:
        err.write(redact(status_line(Status.FAIL, name, str(exc))) + "\n")
        return int(exc.code)
    except KeyboardInterrupt:
        err.write(status_line(Status.FAIL, name, "interrupted; nothing stored") + "\n")
        return int(Exit.ERROR)
    out.write(redact(status_line(Status.OK, name, message)) + "\n")
    return int(Exit.OK)


def _current_user() -> str | None:
    try:
        return config.current_user()
    except KeyError:
        return None


def _arguments(user: str | None, expires_at: str | None, environ: Mapping[str, str],
               is_root: bool, roster_path: str | None,
               default_roster: str | None) -> tuple[str, SyncSettings, int | None]:
    current = _current_user()
    if user is None:
        if is_root:
            raise _Stop("as root, name the person: claude-auth setup-token --user NAME", Exit.USAGE)
        if current is None:
            raise _Stop("the current OS user has no passwd entry; pass --user", Exit.USAGE)
        user = current
    try:
        name = config.check_user(user)
    except SettingsError as exc:
        raise _Stop(str(exc), Exit.USAGE) from None
    # Without a passwd entry for this uid (a sandbox), Vault decides: the person's own
    # policy allows only their own path.
    if not is_root and current is not None and name != current:
        raise _Stop(f"only root (with an admin VAULT_TOKEN) can store a setup token for {name}; "
                    f"run it as {name}, or as root")
    expires_ms = None
    if expires_at is not None:
        try:
            expires_ms = st.parse_expiry(expires_at)
        except ValueError as exc:
            raise _Stop(str(exc), Exit.USAGE) from None
        if expires_ms <= time.time() * 1000:
            raise _Stop(f"--expires-at {expires_at} lies in the past", Exit.USAGE)
    try:
        settings = config.load(name, _with_roster(environ, roster_path, default_roster))
    except SettingsError as exc:
        raise _Stop(str(exc)) from None
    return name, settings, expires_ms


def _with_roster(environ: Mapping[str, str], roster_path: str | None,
                 default_roster: str | None) -> Mapping[str, str]:
    """`environ` with the Vault settings of the roster (as the units get them), so neither the person
    nor root has to repeat them: the --roster given, else the default one when it can be read,
    else the environment alone."""
    path = roster_path or default_roster
    if path is None or (roster_path is None and not os.access(path, os.R_OK)):
        return environ
    from reconcile.roster.issues import RosterInvalid
    from reconcile.roster.loader import load_roster

    try:
        roster = load_roster(path)
    except RosterInvalid as exc:
        raise _Stop(f"the roster {path} is not valid ({exc.issues[0].format()}); nothing stored") from None
    settings = {"CLAUDE_AUTH_KV_MOUNT": roster.vault.kv_mount, "CLAUDE_AUTH_PATH_PREFIX": roster.vault.path_prefix,
                "CLAUDE_AUTH_POLICY_PREFIX": roster.vault.policy_prefix, "CLAUDE_AUTH_MODEL": roster.sync.model}
    if roster.vault.address:
        settings["VAULT_ADDR"] = roster.vault.address
    return {**environ, **settings}


def _read_given(stdin: TextIO, err: TextIO) -> st.Given:
    """From a terminal: a prompt, and the paste read without echo; else standard input (bounded)."""
    text = _read_hidden(stdin, err) if stdin.isatty() else stdin.read(st.PASTE_LIMIT)
    given = st.read_given(text)
    if isinstance(given, str):
        raise _Stop(f"{given}; nothing stored")
    return given


def _read_hidden(stdin: TextIO, err: TextIO) -> str:
    """Lines typed or pasted at the terminal, echo off, until the paste is over (st.given_complete)
    or end of input; the terminal's settings are put back whatever happens (Ctrl-C included)."""
    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    quiet = termios.tcgetattr(fd)
    quiet[3] &= ~termios.ECHO
    err.write(PROMPT)
    err.flush()
    text = ""
    try:
        termios.tcsetattr(fd, termios.TCSAFLUSH, quiet)
        while len(text) < st.PASTE_LIMIT:
            line = stdin.readline(st.PASTE_LIMIT)
            if not line:
                break
            text += line
            if st.given_complete(text):
                break
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        err.write("\n")
        err.flush()
    return text


def _vault(settings: SyncSettings, environ: Mapping[str, str], redact: Redactor,
           *, is_root: bool) -> Vault:
    """Root: the admin VAULT_TOKEN (else ~/.vault-token); the person: their own scoped token file."""
    if is_root:
        token = resolve_token()
        if token is None:
            raise _Stop("no admin Vault token: set VAULT_TOKEN (or ~/.vault-token); nothing stored")
        where = "VAULT_TOKEN"
    else:
        path = settings.token_file
        try:  # as the sync reads it: non-blocking, a regular file only, capped (a FIFO must not hang us)
            found = read_capped(path, TOKEN_FILE_LIMIT, str(path))
            if found is None:
                raise _Stop(f"no Vault token file at {path}; ask for `claude-auth apply`; nothing stored")
            value = found.data.decode("utf-8").strip()
        except UnsafeFile as exc:
            raise _Stop(f"cannot read your Vault token file {exc}; nothing stored") from None
        except UnicodeDecodeError:
            raise _Stop(f"your Vault token file {path} is not UTF-8 text; nothing stored") from None
        if not value:
            raise _Stop(f"your Vault token file {path} is empty; ask for `claude-auth apply`; nothing stored")
        token, where = Secret(value), str(path)
    redact.add(token.reveal())
    try:
        vault = Vault(settings.vault_addr, token)
        vault.lookup_self()
    except VaultError as exc:
        raise _Stop(f"{exc} (token from {where}); nothing stored") from None
    return vault


def _store(vault: Vault, settings: SyncSettings, given: st.Given, expires_ms: int | None,
           environ: Mapping[str, str]) -> str:
    token = Secret(given.token)
    proof = st.probe(token, environ, settings.model, settings.claude_timeout)
    if not proof.is_ok:
        if proof.verdict is Verdict.AUTH:
            raise _Stop(f"the API rejected the setup token: {proof.reason}; nothing stored")
        raise _Stop(f"the setup token could not be proven: {proof.reason}; nothing stored")
    now = time.time()
    expires, source = st.expiry(now, expires_ms, given.lifetime_seconds)
    fields = backup.json_fields(st.store_fields(token.reveal(), utc_timestamp(now), expires, source))
    try:
        # Through the raw reader and writer: every other key at the path goes back byte for byte.
        result = backup.merge_write(vault, settings.kv_mount, settings.kv_path, lambda stored: fields)
    except (VaultError, backup.BackupError) as exc:
        raise _Stop(f"{exc}; nothing stored") from None
    return (f"setup token works and is stored at {settings.kv_display} (version {result.version}), "
            f"expires {st.expiry_date(expires)} ({st.SOURCE_PHRASES[source]}); "
            f"the next sync in setup-token mode installs it")
