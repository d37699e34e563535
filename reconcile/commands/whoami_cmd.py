"""`claude-auth whoami [--json]`: the person's own login, as reconcile.sync.whoami gathered it."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from typing import Mapping, TextIO

from reconcile.common.exitcodes import Exit
from reconcile.sync import settings as config
from reconcile.sync import whoami
from reconcile.sync.settings import SettingsError


def run(user: str | None, *, as_json: bool, environ: Mapping[str, str] | None = None,
        out: TextIO | None = None, err: TextIO | None = None, systemd: bool = True) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        name = config.check_user(user or config.current_user())
    except (SettingsError, KeyError) as exc:
        err.write(f"claude-auth whoami: {exc if isinstance(exc, SettingsError) else 'no passwd entry; pass --user'}\n")
        return int(Exit.USAGE)
    me = whoami.gather(name, os.environ if environ is None else environ, systemd=systemd)
    out.write(json.dumps(me.as_json(), indent=2) + "\n" if as_json else render(me))
    return int(Exit.OK)


def _when(at: float | None) -> str:
    if at is None:
        return "unknown"
    try:
        moment = datetime.fromtimestamp(at, tz=timezone.utc)
    except (ValueError, OverflowError, OSError):
        return "unknown"
    days = (at - datetime.now(tz=timezone.utc).timestamp()) / 86400
    relative = f"in {days:.1f} days" if days >= 0 else f"{-days:.1f} days ago"
    return f"{moment:%Y-%m-%d %H:%M} UTC ({relative})"


def render(me: whoami.Whoami) -> str:
    ttl = f"{me.vault_token_ttl_seconds / 86400:.1f} days" if me.vault_token_ttl_seconds is not None else "unknown"
    last = (f"{me.last_sync_result} at {me.last_sync_at}: {me.last_sync_reason}" if me.last_sync_result
            else "never")
    backup = (f"version {me.backup_version}" + (f", {me.backup_at}" if me.backup_at else "")
              if me.backup_version is not None else "unknown")
    rows = [
        ("person", me.user),
        ("login mode", me.login_mode or "unknown"),
        ("login file", me.login),
        ("access token expires", _when(me.access_token_expires_at)),
        ("log in again by", _when(me.reauth_deadline) if me.reauth_deadline else "not known (Claude did not say)"),
        ("last sync", last),
        ("backup", backup),
        ("Vault token TTL", ttl),
        ("sync timer", me.timer),
        ("backup on change", me.backup_path_unit),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"{label + ':':<{width + 1}} {value}" for label, value in rows]
    lines += [f"note: {note}" for note in me.notes]
    lines.append(f"next step: {me.next_step}" if me.next_step else "next step: none, all is well")
    return "\n".join(lines) + "\n"
