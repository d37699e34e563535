"""What the person is told at login: two small files the sync keeps in its own state folder.

The login-shell snippet (deploy/profile.d/claude-auth.sh) reads them with the
shell alone, no Python and no Vault, so a login where all is well costs a
stat or two:

- `needs-you`: present only while the last sync that reached a verdict said the
  login needs the person (a FAIL only they can fix: an SSO login, a new setup
  token). One line, the command to run. Removed by the next OK or RECOVERED;
  a run that only met an outage or a held lock leaves it as it was (the login
  may still need them).
- `reauth-by`: `<epoch seconds> <YYYY-MM-DD> <command>`, when the person must
  log in again at the latest, and how: Claude's `refreshTokenExpiresAt` (2.1.332 writes it; a
  refresh does not move it), or a setup token's expiry. Absent when unknown.
  The snippet prints its line from three days before (REAUTH_NOTICE_DAYS).

Both are written atomically (temp file, rename) by the person's own process,
mode 0600; nothing secret is in them.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from reconcile.common import boundedjson
from reconcile.sync import credentials, setup_token
from reconcile.sync.statuslog import Status

NEEDS_YOU = "needs-you"
REAUTH_BY = "reauth-by"
REAUTH_NOTICE_DAYS = 3
SSO_COMMAND = "claude auth login --claudeai --sso"
SETUP_TOKEN_COMMAND = "claude setup-token | claude-auth setup-token"
SSO_HINT_MARK = SSO_COMMAND
"""The sync's FAIL reasons that only the person can fix name one of these commands."""


def command_for(status: Status, reason: str) -> str | None:
    """The command the person must run after this run, or None when nothing is theirs to do."""
    if status is not Status.FAIL:
        return None
    if SSO_HINT_MARK in reason:
        return SSO_COMMAND
    if setup_token.HINT in reason:
        return SETUP_TOKEN_COMMAND
    return None


def reached_a_verdict(status: Status, reason: str) -> bool:
    """Whether this run learned anything about the login (else the notice stays as it was)."""
    return status in (Status.OK, Status.RECOVERED) or command_for(status, reason) is not None


def deadline_ms(oauth: Mapping[str, Any] | None) -> int | None:
    """When the person must log in again at the latest, from the login in the file, or None."""
    if oauth is None:
        return None
    key = "expiresAt" if credentials.is_setup_token_object(oauth) else "refreshTokenExpiresAt"
    try:
        value = boundedjson.bounded_int(oauth.get(key), low=1, high=boundedjson.EPOCH_MS_MAX, what=key)
    except boundedjson.OutOfRange:
        return None
    return value


def needs_you_line(command: str, now: float | None = None) -> str:
    at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time() if now is None else now))
    return (f"claude-auth: your Claude login on this workstation needs you (sync of {at}). "
            f"Run: {command}   (details: claude-auth whoami)")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def update(state_dir: Path, status: Status, reason: str, oauth: Mapping[str, Any] | None,
           *, login_read: bool, now: float | None = None) -> None:
    """Keep both files in step with this run (best effort: a failure here never changes the run's
    outcome). `login_read`: whether `oauth` is what the file held this run (else the deadline
    file is left as it was)."""
    try:
        if reached_a_verdict(status, reason):
            command = command_for(status, reason)
            if command is None:
                _remove(state_dir / NEEDS_YOU)
            else:
                _write(state_dir / NEEDS_YOU, needs_you_line(command, now) + "\n")
        if login_read:
            deadline = deadline_ms(oauth)
            if deadline is None:
                _remove(state_dir / REAUTH_BY)
            else:
                day = datetime.fromtimestamp(deadline / 1000, tz=timezone.utc).strftime("%Y-%m-%d")
                command = SETUP_TOKEN_COMMAND if credentials.is_setup_token_object(oauth) else SSO_COMMAND
                _write(state_dir / REAUTH_BY, f"{deadline // 1000} {day} {command}\n")
    except OSError:
        pass


def read_deadline(text: str) -> tuple[int, str, str] | None:
    """(epoch seconds, YYYY-MM-DD, command) from a reauth-by file's text, or None when it is not one."""
    parts = text.strip().split(" ", 2)
    if len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) > 12:
        return None
    try:
        datetime.strptime(parts[1], "%Y-%m-%d")
    except ValueError:
        return None
    return int(parts[0]), parts[1], parts[2][:200]
