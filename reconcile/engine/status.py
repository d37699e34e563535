"""What `claude-auth status` knows about each roster user, gathered read-only.

Reads the same world `plan` reads (Vault through the observe functions of
reconcile.vault.observe, the homes through homefs, timers through reconcile.local), plus each
user's sync.log (its tail, never following a link) and the latest backup's
version and `backed_up_at` (with the admin token, else with the user's own
token, whose policy may read its own path). Nothing is ever written. Where a
value cannot be known the row says so and why, instead of guessing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from reconcile.local import statefile
from reconcile.local import desired as local_desired
from reconcile.local import observe as local_observe
from reconcile.common.loginmode import Login
from reconcile.sync import notice, setup_token
from reconcile.local.accounts import Account, lookup_accounts
from reconcile.roster.fleet import this_host
from reconcile.local.homefs import STATE_DIR, HomeFsError, read_private_tail
from reconcile.engine.connect import CommandFailed, connect_vault
from reconcile.engine.hoststatus import HostTokenStatus, host_token_status
from reconcile.engine.metrics import UserMetrics, render_textfile, write_textfile
from reconcile.common.model import UserProblem
from reconcile.roster.values import Roster
from reconcile.local.systemd import SystemdError
from reconcile.vault.client import Vault
from reconcile.vault.values import KvSecret, Secret, VaultError
from reconcile.common.identity import shown_display_name
from reconcile.engine.homes import token_reader
from reconcile.vault.desired import desired_vault, render_policy
from reconcile.vault.observe import ObservedToken, ObservedVault, TokenState, observe_vault

SYNC_LOG = f"{STATE_DIR}/sync.log"
SYNC_LOG_ROTATED = f"{SYNC_LOG}.1"
LOG_TAIL_BYTES = 256 * 1024
REAUTH_BY = f"{STATE_DIR}/{notice.REAUTH_BY}"
REAUTH_BY_BYTES = 256
DEADLINE_HORIZON_SECONDS = 10 * 366 * 86400
_RESULTS = ("OK", "RECOVERED", "SKIP", "FAIL")
UNKNOWN = "—"
# Times read from files a user controls (sync.log, backed_up_at) are believed only in this
# range; anything else is treated as unreadable, so no later formatting can overflow.
EARLIEST_TIME = datetime(2000, 1, 1, tzinfo=timezone.utc).timestamp()
FUTURE_SLACK_SECONDS = 86400
SETUP_TOKEN_MODE = Login.SETUP_TOKEN.value
DEAD_TOKEN_CELLS = ("dead", "no file", "unreadable")
"""Token cells of a wanted token that cannot work: 0 seconds left in the metrics."""


@dataclass(frozen=True)
class SyncRecord:
    result: str
    at: float
    reason: str


@dataclass(frozen=True)
class UserStatus:
    user: str
    state: str
    """enabled | parked | claude_auth off"""
    policy: str
    """current | differs | missing | — (unknown)"""
    token: str
    """alive | drifted | dead | no file | unreadable | not wanted | —"""
    token_ttl_seconds: int | None = None
    token_minted_at: float | None = None
    timer: str = UNKNOWN
    """enabled | disabled | —"""
    last_run: SyncRecord | None = None
    last_success_at: float | None = None
    backup_version: int | None = None
    backup_at: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    """Why a value shows —, for people."""
    claude_login: str = "oauth"
    """The roster's claude_login."""
    setup_token_expires_at: float | None = None
    """setup-token mode: when the stored setup token expires."""
    reauth_deadline: float | None = None
    """When the person must log in again at the latest: Claude's refreshTokenExpiresAt as their
    last sync read it (the reauth-by file it keeps), or the setup token's expiry."""
    setup_token_expiry_source: str | None = None
    """Where that date came from: given (--expires-at), claude (printed by claude setup-token),
    default (365 days assumed); None when not recorded (stored by an older claude-auth)."""

    def as_json(self) -> dict[str, object]:
        return {
            "user": self.user, "state": self.state, "policy": self.policy, "token": self.token,
            "token_ttl_seconds": self.token_ttl_seconds, "token_minted_at": _iso(self.token_minted_at),
            "timer": self.timer,
            "last_sync_result": self.last_run.result if self.last_run else None,
            "last_sync_at": _iso(self.last_run.at) if self.last_run else None,
            "last_sync_reason": self.last_run.reason if self.last_run else None,
            "last_success_at": _iso(self.last_success_at),
            "backup_version": self.backup_version, "backup_at": _iso(self.backup_at),
            "notes": list(self.notes),
            "claude_login": self.claude_login,
            "setup_token_expires_at": _iso(self.setup_token_expires_at),
            "setup_token_expiry_source": self.setup_token_expiry_source,
            "reauth_deadline": _iso(self.reauth_deadline),
        }

    def metrics(self) -> UserMetrics:
        return UserMetrics(user=self.user, enabled=self.state == "enabled",
                           last_success=self.last_success_at,
                           last_run=self.last_run.at if self.last_run else None,
                           last_result=self.last_run.result if self.last_run else None,
                           token_ttl=self._metric_ttl(), backup_time=self.backup_at,
                           setup_token_expiry=self.setup_token_expires_at, reauth_deadline=self.reauth_deadline)

    def _metric_ttl(self) -> int | None:
        """A token that is wanted but dead, missing or unreadable has 0 seconds left, so the
        TTL alert sees it; unknown (Vault unreachable) or not wanted stays absent."""
        if self.token in DEAD_TOKEN_CELLS:
            return 0
        return self.token_ttl_seconds


def _iso(at: float | None) -> str | None:
    """Local ISO 8601, or None; never raises, whatever the number."""
    if at is None:
        return None
    try:
        return datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):
        return None


def parse_time(text: str, now: float | None = None) -> float | None:
    """Seconds since the epoch of an ISO 8601 time, or None when it is not one or lies
    outside 2000-01-01 .. now + 1 day (the files it comes from are the user's to write)."""
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError, OSError):
        return None
    latest = (time.time() if now is None else now) + FUTURE_SLACK_SECONDS
    return at if EARLIEST_TIME <= at <= latest else None


def parse_sync_log(text: str, now: float | None = None) -> tuple[SyncRecord | None, float | None]:
    """(the last run, the time of the last OK or RECOVERED) from sync.log lines
    `<ISO time> <RESULT> <user>: <reason>`; WARN and unreadable lines are skipped."""
    last: SyncRecord | None = None
    last_success: float | None = None
    now = time.time() if now is None else now
    for line in text.splitlines():
        stamp, _, rest = line.partition(" ")
        result, _, reason = rest.partition(" ")
        at = parse_time(stamp, now)
        if at is None or result not in _RESULTS:
            continue
        last = SyncRecord(result, at, reason.partition(": ")[2] or reason)
        if result in ("OK", "RECOVERED"):
            last_success = at
    return last, last_success


def _state_of(roster: Roster, user: str) -> str:
    spec = roster.users[user]
    if not spec.claude_auth:
        return "claude_auth off"
    return "parked" if spec.parked else "enabled"


def _token_cell(observed: ObservedToken, want_policy: str, want_display: str) -> str:
    if observed.state is TokenState.VALID and observed.info is not None:
        info = observed.info
        same = info.policies == (want_policy,) and info.display_name == want_display and info.orphan
        return "alive" if same else "drifted"
    return {TokenState.NO_FILE: "no file", TokenState.UNREADABLE: "unreadable",
            TokenState.DEAD: "dead", TokenState.REFUSED: "dead"}.get(observed.state, UNKNOWN)


@dataclass
class _World:
    """Everything read once for all users, with why a part could not be read."""

    accounts: dict[str, Account | UserProblem]
    vault: Vault | None = None
    admin: bool = False
    observed_vault: ObservedVault | None = None
    observed_local: local_observe.ObservedLocal | None = None
    notes: dict[str, str] = field(default_factory=dict)
    """Part (vault, systemd, state) -> why it is unknown."""
    backups: dict[str, KvSecret | None] = field(default_factory=dict)
    """Backups read ahead, pipelined (`_read_backups_ahead`); any other is read by `_backup` itself."""


def _read_world(roster: Roster, roster_path: str, root: Path, vault: Vault | None, admin: bool,
                vault_note: str | None) -> _World:
    users = list(roster.users)
    world = _World(accounts=dict(lookup_accounts(root, users)), vault=vault, admin=admin)
    if vault_note:
        world.notes["vault"] = vault_note
    accounts = {name: a for name, a in world.accounts.items() if isinstance(a, Account)}
    if vault is not None:
        try:
            records = statefile.read_records(root)
        except statefile.StateFileError as exc:
            records = {}
            world.notes["state"] = str(exc)
        desired = desired_vault(roster, this_host())

        try:
            world.observed_vault = observe_vault(vault, desired, admin=admin, records=records,
                                                 read_token=token_reader(accounts),
                                                 token_users=[u for u in desired.tokens if u in accounts])
        except VaultError as exc:
            world.notes["vault"] = str(exc)
            world.vault = None
    try:
        d_local = local_desired.desired_local(roster, local_desired.default_exec_path(), roster_path,
                                            local_desired.homes_of(world.accounts))
        world.observed_local = local_observe.observe_local(root, d_local, world.accounts)
    except SystemdError as exc:
        world.notes["systemd"] = str(exc)
    return world


def _path_reader(world: _World, token: ObservedToken | None) -> tuple[Vault | None, str | None]:
    """A client that may read the user's path (admin, else the user's own live token), or why none."""
    if world.vault is None:
        return None, "Vault not reachable"
    if world.admin:
        return world.vault, None
    if token is None or token.token is None or token.state is not TokenState.VALID:
        return None, "no admin token and no live user token to read it with"
    return world.vault.with_token(token.token), None


def _setup_token_expiry(world: _World, roster: Roster, user: str,
                        token: ObservedToken | None) -> tuple[float | None, str | None, str | None]:
    """(expiry in seconds since the epoch, its source, why unknown) of the setup token stored at
    the user's path."""
    client, why = _path_reader(world, token)
    if client is None:
        return None, None, why
    try:  # undecoded, as the sync reads it: a hostile sibling key is never decoded
        secret = client.kv_read_raw(roster.vault.kv_mount, roster.kv_path(user))
    except VaultError as exc:
        return None, None, str(exc)
    where = f"{roster.vault.kv_mount}/data/{roster.kv_path(user)}"
    stored = setup_token.stored_token_raw(secret.fields if secret else {}, secret.version if secret else 0, where)
    if isinstance(stored, str):
        return None, None, stored
    return stored.expires_at_ms / 1000, stored.expiry_source, None


def _backup(world: _World, roster: Roster, user: str,
            token: ObservedToken | None) -> tuple[int | None, float | None, str | None]:
    """(version, backed_up_at, why unknown) of the latest backup at the user's path."""
    client, why = _path_reader(world, token)
    if client is None:
        return None, None, why
    try:
        secret = (world.backups[user] if user in world.backups
                  else client.kv_read(roster.vault.kv_mount, roster.kv_path(user)))
    except VaultError as exc:
        return None, None, str(exc)
    if secret is None:
        return None, None, "no backup yet"
    backed_up = secret.data.get("backed_up_at")
    return secret.version, parse_time(backed_up) if isinstance(backed_up, str) else None, None


def _reauth_deadline(account: Account | UserProblem | None) -> float | None:
    """The deadline the person's own last sync wrote (reconcile.sync.notice), read as any file in a
    home: through a descriptor, never a link, at most REAUTH_BY_BYTES, then checked for its shape."""
    if not isinstance(account, Account):
        return None
    try:
        raw = read_private_tail(account, REAUTH_BY, REAUTH_BY_BYTES)
    except HomeFsError:
        return None
    found = notice.read_deadline(raw.decode(errors="replace")) if raw is not None else None
    if found is None or not EARLIEST_TIME <= found[0] <= time.time() + DEADLINE_HORIZON_SECONDS:
        return None  # the person's own file: a date that cannot be a login's is no date
    return float(found[0])


def _last_sync(account: Account | UserProblem | None) -> tuple[SyncRecord | None, float | None, str | None]:
    """(last run, last success, why unknown) from the tail of sync.log, and from the tail of
    the rotated sync.log.1 when sync.log holds no success (rotation moved it there)."""
    if not isinstance(account, Account):
        return None, None, account.message if isinstance(account, UserProblem) else "no account"
    try:
        raw = read_private_tail(account, SYNC_LOG, LOG_TAIL_BYTES)
    except HomeFsError as exc:
        return None, None, str(exc)
    last, success = parse_sync_log(raw.decode(errors="replace")) if raw is not None else (None, None)
    if success is not None:
        return last, success, None
    try:
        rotated = read_private_tail(account, SYNC_LOG_ROTATED, LOG_TAIL_BYTES)
    except HomeFsError as exc:
        return last, None, str(exc)
    if rotated is not None:
        older_last, success = parse_sync_log(rotated.decode(errors="replace"))
        last = last or older_last
    if raw is None and rotated is None:
        return None, None, "never synced (no sync.log)"
    return last, success, None if last else "sync.log holds no result yet"


def user_status(world: _World, roster: Roster, user: str) -> UserStatus:
    notes: list[str] = []
    policy_name = f"{roster.vault.policy_prefix.lower()}{user}"
    desired_text = None
    observed = world.observed_vault
    # Policy
    if observed is None or observed.policies is None:
        policy = UNKNOWN
        notes.append("policy: " + (world.notes.get("vault") or "needs an admin token to read"))
    else:
        desired_text = render_policy(roster, user)
        current = observed.policies.get(policy_name)
        policy = "missing" if current is None else ("current" if current == desired_text else "differs")
    # Token
    token_obs = observed.tokens.get(user) if observed is not None else None
    ttl = minted = None
    if not roster.users[user].claude_auth:
        token = "not wanted"
    elif token_obs is None:
        token = UNKNOWN
        account = world.accounts.get(user)
        why = account.message if isinstance(account, UserProblem) else world.notes.get("vault", "not observed")
        notes.append(f"token: {why}")
    else:
        token = _token_cell(token_obs, policy_name, shown_display_name(user))
        if token_obs.info is not None:
            ttl = token_obs.info.ttl_seconds
            minted = float(token_obs.info.creation_time) or None
        if token_obs.detail:
            notes.append(f"token: {token_obs.detail}")
    # Timer
    timer = UNKNOWN
    if world.observed_local is not None:
        seen = world.observed_local.timers.get(local_desired.sync_timer(user))
        timer = UNKNOWN if seen is None else ("enabled" if seen.is_enabled else "disabled")
    else:
        notes.append(f"timer: {world.notes.get('systemd', 'not observed')}")
    # Last sync and backup
    last_run, last_success, why_no_sync = _last_sync(world.accounts.get(user))
    if why_no_sync and roster.users[user].claude_auth:
        notes.append(f"last sync: {why_no_sync}")
    version = backup_at = None
    if roster.users[user].claude_auth:
        version, backup_at, why_no_backup = _backup(world, roster, user, token_obs)
        if why_no_backup:
            notes.append(f"backup: {why_no_backup}")
    # Login mode, and the setup token's expiry in setup-token mode
    login = roster.users[user].claude_login
    expires_at = expiry_source = None
    if login == SETUP_TOKEN_MODE and roster.users[user].claude_auth:
        expires_at, expiry_source, why_no_expiry = _setup_token_expiry(world, roster, user, token_obs)
        if why_no_expiry:
            notes.append(f"setup token: {why_no_expiry}")
    if login == SETUP_TOKEN_MODE:
        deadline = expires_at
    else:
        deadline = _reauth_deadline(world.accounts.get(user)) if roster.users[user].claude_auth else None
    return UserStatus(user=user, state=_state_of(roster, user), policy=policy, token=token,
                      token_ttl_seconds=ttl, token_minted_at=minted, timer=timer, last_run=last_run,
                      last_success_at=last_success, backup_version=version, backup_at=backup_at,
                      notes=tuple(notes), claude_login=login, setup_token_expires_at=expires_at,
                      setup_token_expiry_source=expiry_source, reauth_deadline=deadline)


def gather(roster: Roster, roster_path: str, root: Path, vault: Vault | None, *, admin: bool,
           vault_note: str | None = None) -> list[UserStatus]:
    # One row per user this host reconciles (the roster's `hosts`); the others are managed elsewhere.
    roster = roster.for_host(this_host())
    world = _read_world(roster, roster_path, root, vault, admin, vault_note)
    world.backups = _read_backups_ahead(world, roster)
    return [_row(world, roster, user) for user in roster.users]


def _row(world: _World, roster: Roster, user: str) -> UserStatus:
    """user_status, but whatever a person's own data makes it raise fails only their row. Every value
    read from it is bounded where it is decoded (boundedjson.bounded_int); this is the guard behind
    that: the exception's type is named, never its text (it may quote the data)."""
    try:
        return user_status(world, roster, user)
    except Exception as exc:  # noqa: BLE001 - one row, not everyone's status and metrics
        return UserStatus(user=user, state=_state_of(roster, user), policy=UNKNOWN, token=UNKNOWN,
                          claude_login=roster.users[user].claude_login,
                          notes=(f"row: could not be read ({type(exc).__name__}); the others are unaffected",))


def _read_backups_ahead(world: _World, roster: Roster) -> dict[str, KvSecret | None]:
    """Every backup `_backup` will read, pipelined (Vault.kv_read_pipelined), each with the client
    `_path_reader` gives it: those Vault answered plainly. `_backup` reads any other the ordinary way."""
    if world.vault is None:
        return {}
    wanted: list[tuple[str, str, Secret | None]] = []
    for user, spec in roster.users.items():
        if not spec.claude_auth:
            continue
        observed = world.observed_vault.tokens.get(user) if world.observed_vault is not None else None
        if world.admin:
            wanted.append((user, roster.kv_path(user), None))
        elif observed is not None and observed.token is not None and observed.state is TokenState.VALID:
            wanted.append((user, roster.kv_path(user), observed.token))  # as _path_reader reads it
    try:
        found = world.vault.kv_read_pipelined(roster.vault.kv_mount, [(path, token) for _, path, token in wanted])
    except Exception:  # noqa: BLE001 - a fast path only: `_backup` reads each one the ordinary way
        return {}
    return {wanted[index][0]: secret for index, secret in found.items()}


def by_user(rows: list[UserStatus]) -> Mapping[str, UserStatus]:
    return {row.user: row for row in rows}


def collect(roster: Roster, roster_path: str, root: Path) -> tuple[list[UserStatus], HostTokenStatus]:
    """Every row and this host's host token, with whatever Vault access there is: any token will do
    (read-only), and a Vault that cannot be reached only blanks the cells it would fill (the reason
    goes below the table)."""
    try:
        vault, no_admin_reason = connect_vault(roster, allow_non_admin=True)  # read-only: any token
    except CommandFailed as exc:
        return (gather(roster, roster_path, root, None, admin=False, vault_note=str(exc)),
                host_token_status(root, this_host(), None, admin=False))
    admin = no_admin_reason is None
    return (gather(roster, roster_path, root, vault, admin=admin),
            host_token_status(root, this_host(), vault, admin=admin))


def write_prometheus(path: str, rows: list[UserStatus], host: HostTokenStatus | None = None) -> None:
    """The node_exporter textfile for `rows` (and the host token), written atomically."""
    write_textfile(Path(path), render_textfile([row.metrics() for row in rows],
                                               host.metrics() if host is not None else None))
