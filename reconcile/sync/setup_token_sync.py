"""`claude-auth sync` in setup-token mode: install the stored setup token, prove it works.

Which mode: the drop-in's CLAUDE_AUTH_LOGIN (the roster's claude_login, rendered
by `apply`). When it is unset (a run by hand outside the unit), the installed
login decides: a setup token installed stays in setup-token mode, anything else
is oauth, so a run by hand never undoes the roster's choice.

After the lock, the environment, the local read and the Vault identity checks
(shared with oauth mode, reconcile.sync.flow):

1. read the person's own path; no usable `claude_setup_token` -> FAIL, nothing
   touched (a Vault error likewise);
2. fewer than 30 days left -> a WARN line;
3. not installed yet (first run, or the token in Vault changed): probe it alone
   (reconcile.sync.setup_token.probe); rejected -> the FAIL line the runbook
   names, nothing touched; a refreshable login it replaces that is newer than
   the OAuth backup is checked and backed up first (oauth mode's own steps), so
   a switch back finds the newest one; then merge it into ~/.claude/.credentials.json with
   the restore's own function (credentials.replace_oauth: atomic, every other
   key kept, the replaced login kept in the state folder, under Claude's
   refresh lock); Claude holding that lock past the wait, or having refreshed
   the login since it was read, is a SKIP that writes nothing;
4. the same live check as oauth mode, through the file: OK ->
   `OK <user>: setup token works (expires YYYY-MM-DD)`. Should it fail right
   after an install, the previous login is put back, so a failed run leaves the
   file as it found it.

The setup token never reaches the OAuth backup (`claude_ai_oauth_json`): only
a working refreshable login is ever written there, for a switch back.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from reconcile.common.loginmode import Login
from reconcile.sync import backup, credentials, livecheck
from reconcile.sync import setup_token as st
from reconcile.sync.claudelock import ClaudeRefreshing
from reconcile.sync.credentials import CredentialsError, LocalCredentials, LoginChanged
from reconcile.sync.livecheck import LiveResult, Verdict
from reconcile.sync.safefile import UnsafeFile
from reconcile.sync.settings import SyncSettings
from reconcile.sync.statuslog import Status
from reconcile.vault.client import Vault
from reconcile.vault.values import VaultError

CREDENTIALS_SHOWN = "~/.claude/.credentials.json"


class Failed(Exception):
    """Ends the run with FAIL; the message is the reason (safe to show)."""


class Skipped(Exception):
    """Ends the run with SKIP, nothing written (Claude is refreshing the login); the reason (safe to show)."""


def mode(configured: Login | None, local_oauth: object) -> Login:
    """The login mode of this run: the roster's (via the drop-in), else what is installed."""
    if configured is not None:
        return configured
    return Login.SETUP_TOKEN if local_oauth is not None and credentials.is_setup_token_object(local_oauth) \
        else Login.OAUTH


SWITCHED_BACK = LiveResult(
    Verdict.AUTH, f"claude_login is oauth, but {CREDENTIALS_SHOWN} holds a setup token (switched back)")
"""How oauth mode names the reason it restores the OAuth backup over an installed setup token."""


def run(vault: Vault, settings: SyncSettings, env: Mapping[str, str], local: LocalCredentials, *,
        warn: Callable[[str], None], redact: Callable[..., None],
        keep: Callable[[Mapping[str, Any]], None],
        preserve: Callable[[], LocalCredentials]) -> tuple[Status, str]:
    """Steps 1-4 above; raises Failed (FAIL) or Skipped (SKIP) with the reason.

    `preserve` is called once before a setup token replaces a refreshable login that differs
    from the OAuth backup (claude refreshed it since the last oauth-mode sync): it backs that
    login up if it works, so a switch back finds the newest one, and returns the file as it is
    afterwards (its own check may have refreshed the login): the login the install replaces.
    """
    stored, fields = _read_stored(vault, settings)
    token = stored.token.reveal()
    redact(token)
    date = st.expiry_date(stored.expires_at_ms)
    left = st.days_left(stored.expires_at_ms)
    if left < 0:
        warn(f"the setup token expired on {date}; {st.HINT}")
    elif left < st.WARN_DAYS:
        warn(f"the setup token expires on {date} ({int(left)} days left); {st.HINT}")
    replaced: LocalCredentials | None = None
    if not st.is_installed(local.oauth, token, stored.expires_at_ms):
        proof = st.probe(stored.token, env, settings.model, settings.claude_timeout)
        if not proof.is_ok:
            raise Failed(_failure(proof, f"the setup token from {settings.kv_display} was not installed; "
                                         f"{CREDENTIALS_SHOWN} left untouched"))
        # A broken login is not worth a probe or a backup (flow's rules): the setup token replaces it.
        if local.oauth is not None and not credentials.is_setup_token_object(local.oauth) \
                and local.broken() is None and backup.decode_stored_oauth(fields)[0] != local.oauth:
            local = preserve()
        replaced = _install(settings, st.installed_object(token, stored.expires_at_ms), keep, local)
    check = livecheck.run(settings.model, env, settings.claude_timeout, cwd=str(settings.state_dir))
    if check.is_ok:
        return Status.OK, f"setup token works (expires {date})"
    if replaced is not None:
        _put_back(settings, replaced)
    raise Failed(_failure(check, f"{CREDENTIALS_SHOWN} left as it was"))


def _read_stored(vault: Vault, settings: SyncSettings) -> tuple[st.StoredToken, Mapping[str, bytes]]:
    """The stored setup token, and everything at the path undecoded (for the OAuth backup's comparison).

    Read undecoded (Vault.kv_read_raw, capped), like the backup: a hostile sibling key is never
    decoded, and a huge or deeply nested setup-token field is a FAIL, not an internal error.
    """
    try:
        current = vault.kv_read_raw(settings.kv_mount, settings.kv_path)
    except VaultError as exc:
        raise Failed(f"{exc}; the installed login in {CREDENTIALS_SHOWN} left untouched") from None
    fields = current.fields if current is not None else {}
    stored = st.stored_token_raw(fields, current.version if current else 0, settings.kv_display)
    if isinstance(stored, str):
        raise Failed(f"{stored}; {st.HINT}; {CREDENTIALS_SHOWN} left untouched")
    return stored, fields


def _failure(result: LiveResult, untouched: str) -> str:
    if result.verdict is Verdict.AUTH:
        return st.rejected_reason(result)
    return f"{result.reason}; {untouched}"


def _install(settings: SyncSettings, oauth: Mapping[str, Any],
             keep: Callable[[Mapping[str, Any]], None], local: LocalCredentials) -> LocalCredentials:
    # The restore's own merge: atomic, every other key kept, the replaced login kept in the
    # state folder, under Claude's refresh lock; and only over the login this run decided on
    # (`expected`): one Claude refreshed meanwhile is left for the next run to look at.
    try:
        return credentials.replace_oauth(settings.credentials_file, oauth, keep=keep, expected=local.oauth,
                                         lock_wait=settings.refresh_lock_wait, shown=CREDENTIALS_SHOWN,
                                         home=settings.home)
    except ClaudeRefreshing as exc:
        raise Skipped(f"claude is refreshing the login ({exc}); the setup token was not installed, "
                      "nothing written") from None
    except LoginChanged as exc:
        raise Skipped(f"{exc}; the setup token was not installed; the next run installs it") from None
    except UnsafeFile as exc:
        raise Failed(f"the setup token was not installed: {exc}; left untouched") from None
    except CredentialsError as exc:
        raise Failed(f"the setup token was not installed: {exc}") from None
    except OSError as exc:
        raise Failed(f"the setup token was not installed: cannot write {CREDENTIALS_SHOWN}: "
                     f"{exc.strerror or type(exc).__name__}") from None


def _put_back(settings: SyncSettings, replaced: LocalCredentials) -> None:
    """Undo this run's install after a failed check (best effort; a login that was never
    there cannot be put back, and the FAIL line says what to do either way)."""
    if replaced.oauth is None:
        return
    try:
        credentials.replace_oauth(settings.credentials_file, replaced.oauth, lock_wait=settings.refresh_lock_wait,
                                  shown=CREDENTIALS_SHOWN, home=settings.home)
    except (CredentialsError, UnsafeFile, ClaudeRefreshing, OSError):
        pass
