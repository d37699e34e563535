"""`claude-auth sync`: one user's check, backup and recovery, step by step.

The steps of SPEC.md "Sync, step by step", in order:

1. take the state folder's lock without waiting (held: SKIP);
2. drop the variables that would make claude check another login than
   ~/.claude's (credentials, config folders, provider switches; see
   livecheck) from claude's environment (WARN each);
3. read and validate `.credentials.json` (corrupt: FAIL, never overwritten);
4. read the token file; lookup-self; the display name and the policy list
   must be exactly this user's (else FAIL drift, before any KV access);
   renew-self;
5. live check (`claude -p`, with a timeout); a login of a broken shape
   (credentials.local_oauth_problem: a logged-out stub, no `expiresAt` or
   `scopes`, no `user:inference`, an empty token, a past expiry with no
   refresh token) skips it and goes to step 7 at once;
6. OK: back up (merge + check-and-set; nothing written when unchanged), only
   a healthy shape (credentials.oauth_problem): one that turned broken since
   the check goes to step 7;
7. AUTH failure or a broken shape only: restore the latest backup (the replaced login is kept
   in the state folder), live check once more, back up: RECOVERED;
   an outage, a timeout or unexpected output: FAIL, the file untouched;
8. exactly one status line on stdout and in the log.

The roster's claude_login reaches the sync as CLAUDE_AUTH_LOGIN (the person's
drop-in). In setup-token mode, after step 4, reconcile.sync.setup_token_sync
takes over (install the stored setup token, prove it; no OAuth backup). In
oauth mode, a setup token found installed is replaced by the OAuth backup
through step 7's restore (a switch back), and a setup token is never backed up.

Every file read is bounded (safefile): a credentials file, token file,
lock or log that is a FIFO, a device, a link where none belongs, or over
its cap is one `FAIL <user>: <file>: <why>` line, before any restore and
with nothing changed. The restore and the backup's read of the credentials
hold Claude's own refresh lock (claudelock); when Claude holds it past the
wait, the run is `SKIP <user>: claude is refreshing the login (...)` and
writes nothing. So does the setup-token install, which goes through the
restore's own credentials.replace_oauth.

Every failure is one `FAIL <user>: <reason>` line, never a traceback; an
unforeseen exception shows only its type; Ctrl-C ends with
`FAIL <user>: interrupted` (exit 1, lock released). A FAIL after a restore
keeps the restore's details (the backup version restored, the name of the
kept copy of the replaced login). Every line passes a redactor that knows
each secret the run has read.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TextIO

from reconcile.common.exitcodes import Exit
from reconcile.common.loginmode import Login
from reconcile.common.pause import pause
from reconcile.sync import backup, claudelock, credentials, livecheck, notice, setup_token_sync
from reconcile.sync import settings as config
from reconcile.sync.claudelock import ClaudeRefreshing
from reconcile.sync.credentials import CredentialsError, LocalCredentials, LoginChanged
from reconcile.sync.livecheck import LiveResult, Verdict
from reconcile.sync.safefile import TOKEN_FILE_LIMIT, UnsafeFile, read_capped
from reconcile.sync.settings import SettingsError, SyncSettings
from reconcile.sync.statuslog import (Lock, Redactor, Reporter, Status, ensure_private_dir, log_problem,
                                      utc_timestamp)
from reconcile.vault.client import Vault
from reconcile.vault.values import Secret, VaultDenied, VaultError

_SECRET_LEAF_LENGTH = 16
"""String values at least this long inside the credentials are treated as secrets by the redactor."""
CREDENTIALS_SHOWN = "~/.claude/.credentials.json"
"""How status lines name the credentials file."""
LOGIN_HINT = f"an interactive SSO login is needed ({notice.SSO_COMMAND})"


class Fail(Exception):
    """Ends the run with FAIL; the message is the reason (safe to show)."""


class Skip(Exception):
    """Ends the run with SKIP (nothing written); the message is the reason (safe to show)."""


class BrokenAfterCheck(Fail):
    """The check passed, but the file read for the backup holds a broken login: never backed up.
    Where nothing catches it, a FAIL that says so."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"{CREDENTIALS_SHOWN} holds a broken login ({problem}); not backed up")
        self.problem = problem


def _broken_result(problem: str) -> LiveResult:
    """The reason a broken login is restored, in the shape of a rejected check."""
    return LiveResult(Verdict.AUTH, f"{CREDENTIALS_SHOWN} holds a broken login ({problem})")


@dataclass(frozen=True)
class Outcome:
    status: Status
    reason: str
    """Redacted, like the line."""
    line: str
    """The status line as printed (redacted)."""
    vault_requests: int = 0

    @property
    def exit_code(self) -> int:
        return int(Exit.OK if self.status.is_success else Exit.ERROR)


BACKUP_LOG = "backup.log"
"""Where `sync --backup-only` keeps its lines: sync.log is the record of proven logins (status
reads its last OK as the last success), and a backup on change proves nothing."""
BACKUP_LOCK = "backup.lock"
"""A backup on change takes a lock of its own, never the sync's: a scheduled sync must not SKIP
(and lose its check for six hours) because a backup was settling. The two need no lock between
them: each reads the file under Claude's refresh lock (a restore writes under it too), and each
Vault write is a check-and-set merge in which an older login never replaces a newer backup."""
BACKUP_LOCK_WAIT = 60.0
"""How long a backup on change waits for another one (a run by hand beside the unit's)."""
SETTLE_SECONDS = 1.0
SETTLE_LIMIT = 10.0
"""A backup on change waits until the file has been still for SETTLE_SECONDS (at most
SETTLE_LIMIT): a burst of rewrites makes one backup, not one per rewrite."""
BACKUP_PASSES = 3
"""A file rewritten again while its backup was made is backed up again, at most this often per run."""


def main(user: str | None = None, *, backup_only: bool = False) -> int:
    """The `claude-auth sync` command: 0 for OK / RECOVERED / SKIP, 1 for FAIL."""
    # Whatever umask the caller had: nothing the sync or its claude child creates is for anyone
    # but the person (every file and folder of ours also gets its mode explicitly).
    os.umask(0o077)
    return run(user, os.environ, backup_only=backup_only).exit_code


def run(user: str | None, environ: Mapping[str, str], out: TextIO | None = None, *,
        backup_only: bool = False) -> Outcome:
    """One sync run for `user` (default: the current OS user) with `environ` as its environment.

    `backup_only` (`sync --backup-only`, the backup-on-change unit): no live check, no restore:
    back the file's login up when it is of a healthy shape, differs from the backup and is not
    older than it (_Steps.back_up_on_change); its lines go to backup.log."""
    redact = Redactor()
    reporter = Reporter(user or "?", None, redact, out)
    lock: Lock | None = None
    steps: _Steps | None = None
    try:
        try:
            name = config.check_user(user or config.current_user())
        except SettingsError as exc:
            return _finish(reporter, Status.FAIL, str(exc), None)
        except KeyError:
            return _finish(reporter, Status.FAIL, "the current OS user has no passwd entry; pass --user", None)
        reporter.user = name
        home_settings = SyncSettings(user=name, home=config.home_folder(environ), vault_addr="")
        try:
            ensure_private_dir(home_settings.state_dir)
            log_file = home_settings.state_dir / BACKUP_LOG if backup_only else home_settings.log_file
            unsafe_log = log_problem(log_file, home_settings.shown(log_file))
            if unsafe_log is not None:
                return _finish(reporter, Status.FAIL, f"{unsafe_log}; nothing changed", None)
            reporter.log_path = log_file
            lock_file = home_settings.state_dir / BACKUP_LOCK if backup_only else home_settings.lock_file
            lock = Lock(lock_file, home_settings.shown(lock_file))
            if not (lock.acquire_within(BACKUP_LOCK_WAIT) if backup_only else lock.acquire()):
                lock = None
                return _finish(reporter, Status.SKIP, "another backup on change holds its lock" if backup_only
                               else "another sync run holds the lock", None)
        except UnsafeFile as exc:
            lock = None
            return _finish(reporter, Status.FAIL, f"{exc}; nothing changed", None)
        except OSError as exc:
            return _finish(reporter, Status.FAIL,
                           f"cannot use the state folder {home_settings.state_dir}: "
                           f"{exc.strerror or type(exc).__name__}", None)
        try:
            settings = config.load(name, environ)
        except SettingsError as exc:
            return _finish(reporter, Status.FAIL, str(exc), None)
        steps = _Steps(settings, environ, reporter, redact)
        status, reason = _ended(steps.back_up_on_change if backup_only else steps.execute)
        if not backup_only:  # a backup on change proves nothing about the login: the notice stays
            # What the person sees at their next login (reconcile.sync.notice): nothing secret in it.
            notice.update(settings.state_dir, status, reason, steps.local_oauth, login_read=steps.login_read)
        return _finish(reporter, status, reason, steps.vault)
    except KeyboardInterrupt:
        # Ctrl-C during a run by hand: still one status line, and the lock is released below.
        # (A claude already started was killed with its process group by livecheck.run; a
        # restore is one atomic rename, so the file is either the old or the new one.)
        return _finish(reporter, Status.FAIL, "interrupted", steps.vault if steps else None)
    except Exception as exc:  # noqa: BLE001 - the one place that turns anything into a FAIL line
        # The type only: an unforeseen message might quote a secret.
        return _finish(reporter, Status.FAIL, f"internal error: {type(exc).__name__}",
                       steps.vault if steps else None)
    finally:
        if lock is not None:
            lock.release()


def _ended(steps: Callable[[], tuple[Status, str]]) -> tuple[Status, str]:
    """The status and reason the steps ended with, a Fail or Skip included."""
    try:
        return steps()
    except Fail as exc:
        return Status.FAIL, str(exc)
    except Skip as exc:
        return Status.SKIP, str(exc)


def _finish(reporter: Reporter, status: Status, reason: str, vault: Vault | None) -> Outcome:
    line = reporter.finish(status, reason)
    requests = sum(vault.requests.values()) if vault is not None else 0
    return Outcome(status=status, reason=reporter.redact(reason), line=line, vault_requests=requests)


def _secret_leaves(value: Any) -> list[str]:
    """Every long string inside a parsed credentials document (tokens and the like)."""
    if isinstance(value, str):
        return [value] if len(value) >= _SECRET_LEAF_LENGTH else []
    if isinstance(value, dict):
        return [s for item in value.values() for s in _secret_leaves(item)]
    if isinstance(value, list):
        return [s for item in value for s in _secret_leaves(item)]
    return []


def _file_state(path: os.PathLike[str] | str) -> tuple[int, ...] | None:
    """What tells one version of a file from the next (inode, size, mtime), or None when absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _keep_stamp() -> str:
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1_000_000):06d}Z"


class _Steps:
    """The steps after the lock; each raises Fail with a reason people can act on."""

    def __init__(self, settings: SyncSettings, environ: Mapping[str, str], reporter: Reporter,
                 redact: Redactor) -> None:
        self.settings = settings
        self.environ = environ
        self.reporter = reporter
        self.redact = redact
        self.vault: Vault | None = None
        self.kept: str | None = None
        """The file name of the kept copy of a replaced login, once one is made."""
        self.local_oauth: Mapping[str, Any] | None = None
        self.login_read = False
        """The login as last read from the file this run, and whether the file was read at all."""

    # --- the run ---------------------------------------------------------------

    def execute(self) -> tuple[Status, str]:
        env = self.child_environment()
        local = self.read_local("before the check")
        vault = self.open_vault()
        self.check_identity(vault)
        self.renew(vault)
        # claude_login: setup-token mode has its own steps (reconcile.sync.setup_token_sync);
        # oauth mode over an installed setup token restores the OAuth backup (switch back).
        if setup_token_sync.mode(self.settings.login, local.oauth) is Login.SETUP_TOKEN:
            try:
                result = setup_token_sync.run(vault, self.settings, env, local, warn=self.reporter.warn,
                                              redact=self.redact.add, keep=self.keep,
                                              preserve=lambda: self.preserve_oauth(vault, env))
                try:  # the installed token's expiry, for the notice; never changes the outcome
                    self.read_local("after the setup token's check")
                except Fail:
                    self.login_read = False
                return result
            except setup_token_sync.Failed as exc:
                raise Fail(str(exc)) from None
            except setup_token_sync.Skipped as exc:
                raise Skip(str(exc)) from None
        broken = local.broken()
        if broken is not None:  # Claude cannot use it: no probe spent to learn that, restore at once
            return self.recover(vault, env, _broken_result(broken))
        if credentials.is_setup_token_object(local.oauth):
            return self.recover(vault, env, setup_token_sync.SWITCHED_BACK)
        first = self.live_check(env)
        if first.is_ok:
            try:
                return Status.OK, f"login works; {self.back_up(vault)}"
            except BrokenAfterCheck as exc:  # a refresh meanwhile wrote a broken shape (#85262)
                return self.recover(vault, env, _broken_result(exc.problem))
        if first.verdict is Verdict.REFRESHING:
            raise Skip(f"{first.reason}; {CREDENTIALS_SHOWN} left untouched, nothing backed up or restored; "
                       f"the next run checks again")
        if first.verdict is not Verdict.AUTH:
            raise Fail(f"{first.reason}; {CREDENTIALS_SHOWN} left untouched, no restore")
        return self.recover(vault, env, first)

    # --- backup on change (`sync --backup-only`) -----------------------------------

    def back_up_on_change(self) -> tuple[Status, str]:
        """Back up a rewritten login with no probe: only a healthy refreshable one that is not
        older than the backup; then again if the file changed meanwhile (BACKUP_PASSES)."""
        phrase = ""
        for _ in range(BACKUP_PASSES):
            seen = self.settle()
            phrase = self.back_up_unproven()
            if _file_state(self.settings.credentials_file) == seen:
                break
        return Status.OK, phrase

    def settle(self) -> tuple[int, ...] | None:
        """Wait until the credentials file has been still for SETTLE_SECONDS (at most SETTLE_LIMIT)."""
        path = self.settings.credentials_file
        deadline = time.monotonic() + SETTLE_LIMIT
        seen = _file_state(path)
        still_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - still_since < SETTLE_SECONDS:
            pause(0.1)
            now = _file_state(path)
            if now != seen:
                seen, still_since = now, time.monotonic()
        return seen

    def back_up_unproven(self) -> str:
        try:
            local = self.read_local_locked("for a backup on change")
        except Skip as exc:
            raise Skip(f"{exc}".replace("the login works; ", "")) from None
        oauth = local.oauth
        if oauth is None:
            raise Skip(f"no login in {CREDENTIALS_SHOWN}; nothing backed up")
        if credentials.is_setup_token_object(oauth):
            raise Skip(f"{CREDENTIALS_SHOWN} holds a setup token; only a refreshable login is backed up")
        problem = credentials.oauth_problem(oauth)
        if problem is not None:
            raise Skip(f"{CREDENTIALS_SHOWN} holds a broken login ({problem}); never backed up; "
                       "the next sync restores the backup")
        vault = self.vault
        if vault is None:  # once per run: the token file, then the token's identity
            vault = self.open_vault()
            self.check_identity(vault)
        s = self.settings
        try:
            result = backup.back_up(vault, s.kv_mount, s.kv_path, dict(oauth), utc_timestamp(), not_older=True)
        except backup.OlderThanBackup as exc:
            raise Skip(f"{exc}; nothing backed up") from None
        except (VaultError, backup.BackupError) as exc:
            raise Fail(f"the backup to {s.kv_display} failed: {exc}") from None
        if result.written:
            return f"backed up on change to {s.kv_display} (version {result.version})"
        return f"backup unchanged ({s.kv_display} version {result.version})"

    # --- step 2: environment -----------------------------------------------------

    def child_environment(self) -> dict[str, str]:
        env, removed = livecheck.child_environment(self.environ)
        for name in removed:
            if name in livecheck.CREDENTIAL_VARIABLES:
                self.redact.add(self.environ.get(name, ""))
            self.reporter.warn(f"{name} is set; not passed to claude ({livecheck.why_removed(name)})")
        return env

    # --- step 3: the local file ----------------------------------------------------

    def read_local(self, when: str) -> LocalCredentials:
        try:
            local = credentials.read(self.settings.credentials_file, CREDENTIALS_SHOWN)
        except UnsafeFile as exc:
            raise Fail(f"{exc} ({when}); left untouched, nothing restored") from None
        except CredentialsError as exc:
            raise Fail(f"{exc} ({when}); left untouched, {LOGIN_HINT} or a manual repair") from None
        self.redact.add(*_secret_leaves(dict(local.document)))
        self.local_oauth, self.login_read = local.oauth, True
        return local

    def read_local_locked(self, when: str) -> LocalCredentials:
        """read_local under Claude's refresh lock: never the file of a refresh half done (Skip if it lasts)."""
        s = self.settings
        if not s.credentials_file.parent.is_dir():
            return self.read_local(when)  # no ~/.claude: no login to read, and no refresh to wait for
        try:
            with claudelock.held(s.credentials_file.parent, s.refresh_lock_wait, home=s.home):
                return self.read_local(when)
        except ClaudeRefreshing as exc:
            raise Skip(f"claude is refreshing the login ({exc}); the login works; nothing backed up") from None
        except OSError as exc:
            raise Fail(f"cannot take claude's refresh lock in {s.shown(s.credentials_file.parent)}: "
                       f"{exc.strerror or type(exc).__name__}; nothing backed up") from None

    # --- step 4: Vault token ---------------------------------------------------------

    def open_vault(self) -> Vault:
        path = self.settings.token_file
        try:
            found = read_capped(path, TOKEN_FILE_LIMIT, self.settings.shown(path))
        except UnsafeFile as exc:
            raise Fail(f"{exc}; run `claude-auth apply` as root; {CREDENTIALS_SHOWN} left untouched") from None
        if found is None:
            raise Fail(f"no Vault token file at {path}; run `claude-auth apply` as root")
        try:
            token = found.data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise Fail(f"the Vault token file {path} is not UTF-8 text; run `claude-auth apply` as root") from None
        if not token:
            raise Fail(f"the Vault token file {path} is empty; run `claude-auth apply` as root")
        self.redact.add(token)
        if found.mode & 0o077:
            self.reporter.warn(f"the Vault token file {path} has mode {found.mode & 0o777:04o}; expected 0600")
        self.vault = Vault(self.settings.vault_addr, Secret(token))
        return self.vault

    def check_identity(self, vault: Vault) -> None:
        try:
            info = vault.lookup_self()
        except VaultDenied:
            raise Fail(f"drift: Vault refused the token in {self.settings.token_file} (invalid, expired or "
                       f"revoked); run `claude-auth apply` as root; {CREDENTIALS_SHOWN} left untouched") from None
        except VaultError as exc:
            raise Fail(f"{exc}; {CREDENTIALS_SHOWN} left untouched") from None
        expected_name = self.settings.expected_display_name
        expected_policies = (self.settings.policy_name,)
        if info.display_name != expected_name or tuple(info.policies) != expected_policies:
            raise Fail(f"drift: the Vault token is {info.display_name or '(no name)'} with policies "
                       f"[{', '.join(info.policies)}], expected {expected_name} with "
                       f"[{expected_policies[0]}]; nothing read or written; run `claude-auth apply` as root")

    def renew(self, vault: Vault) -> None:
        try:
            vault.renew_self()
        except VaultError as exc:
            raise Fail(f"{exc}; {CREDENTIALS_SHOWN} left untouched") from None

    # --- step 5: live check ------------------------------------------------------------

    def live_check(self, env: Mapping[str, str]) -> LiveResult:
        return livecheck.run(self.settings.model, env, self.settings.claude_timeout,
                             cwd=str(self.settings.state_dir))

    # --- step 6: backup ---------------------------------------------------------------

    def back_up(self, vault: Vault) -> str:
        """Back the (possibly just refreshed) local login up; a phrase for the status line."""
        local = self.read_local_locked("after a successful check")
        oauth = local.oauth
        if oauth is None:
            raise Fail(f"the login works but {CREDENTIALS_SHOWN} holds no claudeAiOauth to back up")
        if credentials.is_setup_token_object(oauth):  # never over the refreshable OAuth backup
            raise Fail(f"the login works but {CREDENTIALS_SHOWN} holds a setup token, not a refreshable "
                       f"login; not backed up over the OAuth backup")
        problem = credentials.oauth_problem(oauth)
        if problem is not None:  # the backup only ever holds a shape a restore can use
            raise BrokenAfterCheck(problem)
        s = self.settings
        try:
            result = backup.back_up(vault, s.kv_mount, s.kv_path, dict(oauth), utc_timestamp())
        except (VaultError, backup.BackupError) as exc:
            raise Fail(f"the login works, but the backup to {s.kv_display} failed: {exc}") from None
        if result.written:
            return f"backed up to {s.kv_display} (version {result.version})"
        return f"backup unchanged ({s.kv_display} version {result.version})"

    def preserve_oauth(self, vault: Vault, env: Mapping[str, str]) -> LocalCredentials:
        """Setup-token mode, before the setup token replaces a refreshable login newer than the
        backup: check it and back it up (never a broken one), so a switch back finds it.

        Returns the file as read afterwards: the check may have refreshed the login, and the
        install must replace only the login that was backed up (else it SKIPs)."""
        check = self.live_check(env)
        if not check.is_ok:
            self.reporter.warn(f"the OAuth login being replaced failed its check ({check.reason}); "
                               f"the OAuth backup keeps the last good one")
        else:
            try:
                self.back_up(vault)
            except Fail as exc:
                self.reporter.warn(f"the OAuth login being replaced was not backed up: {exc}")
            except Skip as exc:
                raise Skip(f"{exc}; the setup token was not installed") from None
        return self.read_local("before the setup token is installed")

    # --- step 7: recovery ---------------------------------------------------------------

    def recover(self, vault: Vault, env: Mapping[str, str], first: LiveResult) -> tuple[Status, str]:
        s = self.settings
        local = self.read_local("before the restore")
        try:
            latest = backup.latest_backup(vault, s.kv_mount, s.kv_path)
        except VaultError as exc:
            raise Fail(f"{first.reason}; the backup could not be read: {exc}; {CREDENTIALS_SHOWN} "
                       f"left untouched") from None
        if latest.oauth is None:
            raise Fail(f"{first.reason}; no usable backup: {latest.problem}; {LOGIN_HINT}")
        self.redact.add(*_secret_leaves(dict(latest.oauth)))
        if latest.oauth == local.oauth:
            raise Fail(f"{first.reason}; the backup holds this same login; {LOGIN_HINT}")
        try:
            credentials.replace_oauth(s.credentials_file, latest.oauth, keep=self.keep, expected=local.oauth,
                                      lock_wait=s.refresh_lock_wait, shown=CREDENTIALS_SHOWN, home=s.home)
        except ClaudeRefreshing as exc:
            raise Skip(f"claude is refreshing the login ({exc}); {first.reason}; nothing restored, "
                       "nothing written") from None
        except LoginChanged as exc:
            raise Skip(f"{first.reason}; {exc}, nothing restored; the next run checks the new login") from None
        except UnsafeFile as exc:
            raise Fail(f"{exc}; {first.reason}; left untouched, nothing restored") from None
        except CredentialsError as exc:
            raise Fail(f"{first.reason}; the restore was not made: {exc}") from None
        except OSError as exc:
            raise Fail(f"{first.reason}; the restore was not made: cannot write {s.credentials_file}: "
                       f"{exc.strerror or type(exc).__name__}") from None
        restored = f"restored the backup ({s.kv_display} version {latest.version})"
        if self.kept:
            restored += f", the replaced login kept as {self.kept}"
        second = self.live_check(env)
        if second.is_ok:
            try:
                backed_up = self.back_up(vault)
            except Fail as exc:
                # Keep what was restored and where the replaced login went: what undoing it needs.
                raise Fail(f"{first.reason}; {restored}; {exc}") from None
            except Skip as exc:  # Claude began a refresh right after: the login is back, its backup waits
                return Status.RECOVERED, f"{first.reason}; {restored}; {exc}"
            return Status.RECOVERED, f"{first.reason}; {restored}; login works; {backed_up}"
        if second.verdict is Verdict.AUTH:
            raise Fail(f"{first.reason}; {restored}, but it was rejected too ({second.reason}); {LOGIN_HINT}")
        raise Fail(f"{first.reason}; {restored}, but the check after it failed: {second.reason}")

    def keep(self, previous: Mapping[str, Any]) -> None:
        try:
            path = credentials.keep_previous(self.settings.state_dir, previous, _keep_stamp())
        except OSError as exc:
            raise Fail(f"cannot keep a copy of the login about to be replaced in {self.settings.state_dir}: "
                       f"{exc.strerror or type(exc).__name__}; nothing restored") from None
        self.kept = path.name
