"""The Vault domain: each user's ACL policy and scoped token.

Owns four things, kept apart:

- desired state (`desired_vault`, pure): from the roster, one policy per user
  and one scoped token per user with `claude_auth: true` (parked users too, so
  unparking works at once);
- observation (`observe_vault`): the managed policies and each user's token as
  Vault sees it, through reconcile.vault only, into plain frozen records;
- the plan (`plan_vault`, pure): (desired, observed) -> changes, each with a
  reason for people; the executor never reads the reason;
- the handlers the executor calls for Vault kinds, and the bookkeeping of the
  token accessors kept in the state file (`next_records`, pure).

A token is "minted for" a user when its metadata says this tool minted it for
that user. Only such a token is ever revoked: a token found in a user's file
that belongs to someone else is replaced there but left alone in Vault.

A replaced token that may still live (its revocation failed after a mint, or
a recorded accessor was replaced by another) is kept in the state file's
`pending_revoke` list (`next_pending`, pure); every admin run looks each one
up and plans `- token <name>: replaced token still alive; revoke` until it is
revoked or gone.

Every mint is written ahead (reconcile.local.statefile's intents): a nonce goes to
the state file before the create call and into the token's metadata
(`mint_nonce`). `observe_vault` resolves the intents a crashed run left: a
token in the user's file that carries the nonce is adopted (it becomes the
record as usual); otherwise (admin runs only) every token accessor is listed
and looked up once to find tokens carrying an outstanding nonce, which are
then revoked like replaced tokens (`plan_pending`). That scan runs only when
an intent is outstanding, within its own time budget (`_resolve_intents`).

A policy is observed, and reconciled for roster users, when its name is under
the policy prefix; it is orphaned or deleted only when this tool wrote it
(`is_tool_policy`: a POSIX user name after the prefix and the template's
header line naming that user), so hand-made policies under the prefix stay.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType
from typing import Callable, ContextManager, Iterable, Iterator, Mapping, Protocol, Sequence

from reconcile import retry
from reconcile.local.accounts import Account
from reconcile.roster.durations import format_duration
from reconcile.roster.fleet import is_assigned
from reconcile.local.homefs import TOKEN_FILE, HomeFsError, read_private_file
from reconcile.common.identity import token_display_name, vault_display_name
from reconcile.common.model import Action, Change, Kind, UserProblem
from reconcile.roster.values import Roster
from reconcile.common.templating import render
from reconcile.vault_pool import ordered_map
from reconcile.vault import (MintedToken, Secret, TokenInfo, Vault, VaultDenied, VaultError, VaultInvalid,
                             VaultUnreachable)

TOOL = "claude-auth"
NONCE_META = "mint_nonce"
"""The token metadata key that carries the nonce of the intent written before its mint."""
POLICY_TEMPLATE = "policy.hcl.j2"
RESERVED_POLICIES = frozenset({"root", "default"})
"""Never managed, whatever the prefix."""
POLICY_HEADER_START = "# Managed by claude-auth for user "
"""The template's first line starts so, followed by the user name (a test checks the template)."""
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
"""A POSIX account name, as the roster requires."""



# --- desired (pure) -------------------------------------------------------------


@dataclass(frozen=True)
class DesiredPolicy:
    name: str
    user: str
    text: str


@dataclass(frozen=True)
class DesiredToken:
    user: str
    policy: str
    display_name: str
    """As requested at creation (`devvm-claude-auth-alice`); also the change name."""
    period: str
    """The roster's text (`768h`), handed to Vault as is."""
    period_seconds: int
    meta: Mapping[str, str]

    @property
    def vault_display_name(self) -> str:
        """What Vault's lookup shows for `display_name`."""
        return vault_display_name(self.display_name)


@dataclass(frozen=True)
class DesiredVault:
    policy_prefix: str
    policies: Mapping[str, DesiredPolicy]
    """By policy name."""
    tokens: Mapping[str, DesiredToken]
    """By user name: only users with claude_auth true."""
    users: frozenset[str]
    """Every roster user."""
    host: str = ""
    """This host's name, as written into the metadata of every token it mints."""
    here: frozenset[str] | None = None
    """Roster users assigned to this host (the roster's `hosts`); None: every roster user."""

    def is_here(self, user: str) -> bool:
        return self.here is None or user in self.here


def render_policy(roster: Roster, user: str) -> str:
    return render(POLICY_TEMPLATE, user=user, kv_mount=roster.vault.kv_mount, kv_path=roster.kv_path(user))


def desired_vault(roster: Roster, host: str) -> DesiredVault:
    """What Vault should hold for this roster (pure apart from reading the template).

    Policies are fleet-wide: one per roster user whatever the host. Tokens are
    per host: only for users assigned to `host` (reconcile.roster.fleet).
    """
    prefix = roster.vault.policy_prefix.lower()  # Vault stores policy names lower-cased
    policies: dict[str, DesiredPolicy] = {}
    tokens: dict[str, DesiredToken] = {}
    for name, user in roster.users.items():
        policy = f"{prefix}{name}"
        policies[policy] = DesiredPolicy(name=policy, user=name, text=render_policy(roster, name))
        if user.wants_token and is_assigned(user.hosts, host):
            tokens[name] = DesiredToken(
                user=name, policy=policy, display_name=token_display_name(name),
                period=roster.vault.token_period, period_seconds=roster.vault.token_period_seconds,
                meta=MappingProxyType({"managed_by": TOOL, "user": name, "host": host}),
            )
    return DesiredVault(policy_prefix=prefix, policies=MappingProxyType(policies),
                        tokens=MappingProxyType(tokens), users=frozenset(roster.users), host=host,
                        here=frozenset(name for name, user in roster.users.items() if is_assigned(user.hosts, host)))


def is_managed_policy(name: str, prefix: str) -> bool:
    """Under the prefix (names only; never root/default): observed, and reconciled for roster users.

    A name under the prefix is not enough to delete a policy: see `is_tool_policy`.
    """
    return bool(prefix) and name.startswith(prefix) and name not in RESERVED_POLICIES and len(name) > len(prefix)


def policy_header(user: str) -> str:
    """The first line of every policy this tool writes, up to its `;` (templates/policy.hcl.j2)."""
    return f"{POLICY_HEADER_START}{user}"


def is_tool_policy(name: str, text: str, prefix: str) -> bool:
    """Whether this tool wrote the policy: only such a policy is ever orphaned or deleted.

    Its name is the prefix and a POSIX user name, and its text starts with the
    template's header line naming that same user; a policy someone made by hand
    under the prefix (`workstation-claude-admins`) is left alone.
    """
    if not is_managed_policy(name, prefix):
        return False
    user = name[len(prefix):]
    if not USER_NAME.fullmatch(user):
        return False
    header = policy_header(user)
    first_line = text.split("\n", 1)[0]
    if not first_line.startswith(header):
        return False
    rest = first_line[len(header):]
    return not rest or rest[0] == ";" or rest[0].isspace()


def is_minted_for(info: TokenInfo, user: str) -> bool:
    """Whether the token's metadata says this tool minted it for `user` (the only tokens ever revoked)."""
    return info.meta.get("managed_by") == TOOL and info.meta.get("user") == user


def is_minted_here(info: TokenInfo, host: str) -> bool:
    """Whether the token's metadata names `host` as the host that minted it."""
    return bool(host) and info.meta.get("host") == host


def is_ours_to_revoke(info: TokenInfo, user: str, desired: DesiredVault) -> bool:
    """Whether this host may revoke a token its state file records for `user`.

    For a user whose token this host still manages, a token minted for them
    (by any host: in a shared home every host adopts one token) that this
    host found in its own files. For anybody else (offboarded, claude_auth
    false, or not assigned here), only a token this host minted: in a shared
    home another host may still be using the one it adopted.
    """
    if not is_minted_for(info, user):
        return False
    return user in desired.tokens or is_minted_here(info, desired.host)


def minted_for_whom(info: TokenInfo) -> str | None:
    """The user this tool minted the token for, or None when the tool did not mint it."""
    user = info.meta.get("user")
    return user if user and info.meta.get("managed_by") == TOOL else None


# --- observed ---------------------------------------------------------------------


class TokenState(Enum):
    VALID = "valid"
    """Looked up: the token lives (its fields may still differ from the desired ones)."""
    NO_FILE = "no-file"
    UNREADABLE = "unreadable"
    """The file exists but is not safe to read or holds no token."""
    DEAD = "dead"
    """The admin lookup says: expired, revoked or unknown."""
    REFUSED = "refused"
    """Without an admin token: its own lookup-self was refused (dead, or its policy changed)."""
    FAILED = "failed"
    """Vault answered the lookup with an error (or an answer that cannot be read) that says nothing about
    the token's life: this user's token work waits, the others go on (`detail` says why)."""


@dataclass(frozen=True)
class ObservedToken:
    user: str
    state: TokenState
    info: TokenInfo | None = None
    detail: str = ""
    """Why the file is unreadable (safe to show)."""
    token: Secret | None = field(default=None, compare=False, repr=False)
    """The value from the file, for a renewal with the token itself; never rendered."""


@dataclass(frozen=True)
class RecordedToken:
    """A token accessor the state file holds for a user."""

    user: str
    accessor: str
    checked: bool = False
    """True when looked up by accessor (admin only); then `info` None means it is gone."""
    info: TokenInfo | None = None


@dataclass(frozen=True)
class PendingRevoke:
    """A replaced token's accessor the state file keeps until the token is revoked or gone."""

    accessor: str
    checked: bool = False
    """True when looked up by accessor (admin only); then `info` None means it is gone."""
    info: TokenInfo | None = None
    interrupted: bool = False
    """Found by an outstanding intent's nonce: minted by a run that never handed it over."""


@dataclass(frozen=True)
class ObservedVault:
    admin: bool
    policies: Mapping[str, str] | None
    """Managed policy name -> text; None when they cannot be read (no admin token)."""
    tokens: Mapping[str, ObservedToken]
    """By user, for every user with a desired token and an account."""
    recorded: Mapping[str, RecordedToken]
    """By user, every record of the state file."""
    pending: Mapping[str, PendingRevoke] = field(default_factory=lambda: MappingProxyType({}))
    """By accessor, every replaced token the state file says may still live, and every token an
    outstanding intent minted that is in nobody's file."""
    resolved_intents: frozenset[str] = frozenset()
    """Nonces of the state file's intents this observation accounted for (adopted, or searched for)."""
    garbage: Mapping[str, TokenInfo] = field(default_factory=lambda: MappingProxyType({}))
    """By accessor, live tokens this host minted that nothing here references (`apply --prune` only)."""
    unresolved_intents: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Nonce -> user of the intents an admin run could not account for (listing accessors was denied,
    or the scan was cut short: `scan_cut_short`)."""
    scan_cut_short: str = ""
    """Why the scan of every token stopped before its end (its budget ran out, a request failed); empty
    when it finished or never ran."""

    @property
    def problems(self) -> list[UserProblem]:
        """One per user whose token could not be observed (FAILED): only that user's token work waits;
        one per mint of an interrupted run that an admin run could not look for (listing denied)."""
        problems = [UserProblem(user, f"token: {token.detail}") for user, token in sorted(self.tokens.items())
                    if token.state is TokenState.FAILED]
        if not self.scan_cut_short:
            problems += [UserProblem(user, "a token minted by an interrupted run cannot be looked for: listing "
                                           "auth/token/accessors was denied (the admin token needs list and sudo "
                                           "there)") for user in sorted(set(self.unresolved_intents.values()))]
        return problems

    @property
    def scan_warning(self) -> str | None:
        """One line for a scan cut short, naming the people whose interrupted mints stay outstanding."""
        if not self.scan_cut_short or not self.unresolved_intents:
            return None
        users = ", ".join(sorted(set(self.unresolved_intents.values())))
        return (f"token scan: {self.scan_cut_short}; the tokens interrupted runs minted for {users} are "
                "not accounted for yet (the next admin run looks again)")


class TokenFileUnreadable(Exception):
    """Raised by a `read_token` function: the file exists but may not or cannot be read."""


TokenReader = Callable[[str], "bytes | None"]


def token_reader(accounts: Mapping[str, Account]) -> TokenReader:
    """Reads a person's token file as root, never following a planted link (homefs)."""
    def read_token(user: str) -> bytes | None:
        try:
            return read_private_file(accounts[user], TOKEN_FILE)
        except HomeFsError as exc:
            raise TokenFileUnreadable(str(exc)) from None
    return read_token


def parse_token_file(raw: bytes) -> Secret | None:
    """The token in a token file, or None when it holds none (empty, not one printable word)."""
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    if not text or any(ch.isspace() or not ch.isprintable() for ch in text):
        return None
    return Secret(text)


def _read_token_entry(user: str, read_token: TokenReader) -> ObservedToken | Secret:
    """The token in a user's file, or what is observed without asking Vault (no file, unreadable)."""
    try:
        raw = read_token(user)
    except TokenFileUnreadable as exc:
        return ObservedToken(user, TokenState.UNREADABLE, detail=str(exc))
    if raw is None:
        return ObservedToken(user, TokenState.NO_FILE)
    secret = parse_token_file(raw)
    if secret is None:
        return ObservedToken(user, TokenState.UNREADABLE, detail="it holds no token")
    return secret


def _looked_up(user: str, secret: Secret, info: TokenInfo | None, *, admin: bool) -> ObservedToken:
    if info is None:
        return ObservedToken(user, TokenState.DEAD if admin else TokenState.REFUSED, token=secret)
    return ObservedToken(user, TokenState.VALID, info=info, token=secret)


def _look_up(vault: Vault, user: str, secret: Secret, *, admin: bool) -> ObservedToken:
    """One token, the ordinary way (the retry policy, the active node for a refusal)."""
    try:
        info = vault.lookup_token(secret) if admin else vault.lookup_token_self(secret)
    except VaultUnreachable:
        raise  # nobody's token can be observed: the run stops
    except VaultError as exc:  # about this token only (what is in the file is the user's doing)
        return ObservedToken(user, TokenState.FAILED, detail=f"looking up the token in the file failed: {exc}")
    return _looked_up(user, secret, info, admin=admin)


def _observe_tokens(vault: Vault, users: list[str], read_token: TokenReader, *,
                    admin: bool) -> dict[str, ObservedToken]:
    """Every user's token file, and each token in it looked up.

    The lookups depend on nothing but the person: they go pipelined
    (Vault.lookup_tokens_pipelined) and every answer that is not a plain
    success (a refusal, a redirect, a lost connection, an answer that cannot
    be read) is asked again the ordinary way, a few at once
    (reconcile.vault_pool), so each outcome is what the one-by-one loop gave.
    """
    entries = {user: _read_token_entry(user, read_token) for user in users}
    asking = [(user, entry) for user, entry in entries.items() if isinstance(entry, Secret)]
    quick = vault.lookup_tokens_pipelined([secret for _, secret in asking], own=not admin)
    observed: dict[str, ObservedToken] = {}
    again: list[tuple[str, Secret]] = []
    for (user, secret), info in zip(asking, quick):
        if info is None:
            again.append((user, secret))
        else:
            observed[user] = _looked_up(user, secret, info, admin=admin)
    slow = ordered_map(vault, lambda client, item: _look_up(client, item[0], item[1], admin=admin), again)
    observed.update((user, result) for (user, _), result in zip(again, slow))
    return {user: entry if isinstance(entry, ObservedToken) else observed[user] for user, entry in entries.items()}


def _observe_policies(vault: Vault, prefix: str) -> dict[str, str]:
    bodies = vault.list_policies_detailed()  # OpenBao: every body in one request
    if bodies is None:  # HashiCorp Vault: names, then one read per managed policy, pipelined
        names = [name for name in vault.list_policy_names() if is_managed_policy(name, prefix)]
        bodies = {}
        for name, quick in zip(names, vault.read_policies_pipelined(names)):
            text = quick if quick is not None else vault.read_policy(name)  # not read plainly: ask again
            if text is not None:
                bodies[name] = text
    return {name: text for name, text in bodies.items() if is_managed_policy(name, prefix)}


def _needs_accessor_check(user: str, accessor: str, desired: DesiredVault,
                          tokens: Mapping[str, ObservedToken]) -> bool:
    if user not in desired.tokens:
        return True  # offboarded or claude_auth false: is it still alive and ours?
    current = tokens.get(user)
    if current is None:
        return False  # no account: nothing will be minted for this user now
    return not (current.state is TokenState.VALID and current.info is not None
                and current.info.accessor == accessor)


@dataclass(frozen=True)
class IntentScan:
    """What `_resolve_intents` found."""

    resolved: frozenset[str]
    """Nonces accounted for (adopted from a file, or searched for in a complete scan)."""
    strays: Mapping[str, PendingRevoke]
    """By accessor: live tokens carrying an outstanding nonce, in nobody's file (to revoke)."""
    cut_short: str = ""
    """Why the scan stopped before its end (see ObservedVault.scan_cut_short)."""


class ScanCutShort(Exception):
    """Raised by `scan_tokens` when its `give_up` says the scan's budget is spent."""


def _resolve_intents(vault: Vault, intents: Mapping[str, str], tokens: Mapping[str, ObservedToken], *,
                     admin: bool, budget: float, clock: Callable[[], float] = time.monotonic) -> IntentScan:
    """Account for the mints interrupted runs asked for.

    An intent whose user's file holds a token carrying its nonce is adopted
    without any scan. Only the token itself knows its nonce, so the others
    (admin runs only) cost a look-up of every accessor in Vault. That scan has
    its own `budget` of seconds, well inside the run's Vault deadline: when it
    runs out, or a request of it fails, the intents stay outstanding (the
    caller prints one WARN line) and the run goes on with everyone's changes;
    without a budget a big or slow Vault would fail every admin run as
    unreachable and never clear them. Strays found before the cut are still
    revoked.
    """
    adopted = {nonce for nonce, user in intents.items()
               if (token := tokens.get(user)) is not None and token.info is not None
               and token.info.meta.get(NONCE_META) == nonce}
    outstanding = set(intents) - adopted
    if not outstanding or not admin:
        return IntentScan(frozenset(adopted), {})
    strays: dict[str, PendingRevoke] = {}
    started = clock()
    looked = 0
    try:
        accessors = vault.list_accessors()
        for accessor, info in scan_tokens(vault, accessors, give_up=lambda: clock() - started > budget,
                                          decides=lambda info: info.meta.get(NONCE_META) in outstanding):
            looked += 1
            if info.meta.get(NONCE_META) in outstanding:
                strays[accessor] = PendingRevoke(accessor, checked=True, info=info, interrupted=True)
    except VaultDenied:  # the intents stay; each of their users gets a problem line (ObservedVault)
        return IntentScan(frozenset(adopted), {})
    except ScanCutShort:
        return IntentScan(frozenset(adopted), strays,
                          f"looking up every token in Vault ran out of its {budget:g} s budget "
                          f"({retry.SCAN_BUDGET_ENV}) after {looked:,} of {len(accessors):,}")
    except VaultError as exc:
        return IntentScan(frozenset(adopted), strays, f"looking up every token in Vault failed ({exc})")
    return IntentScan(frozenset(intents), strays)


SCAN_CHUNK = 256
"""Accessors looked up per pipelined exchange in a scan: `give_up` is asked before each chunk."""


def scan_tokens(vault: Vault, accessors: Iterable[str], give_up: Callable[[], bool] = lambda: False,
                decides: Callable[[TokenInfo], bool] = lambda info: False) -> Iterator[tuple[str, TokenInfo]]:
    """Each live token behind `accessors` (from `list_accessors`), looked up SCAN_CHUNK at a time
    pipelined (Vault.lookup_accessors_pipelined); any lookup not answered plainly is asked again
    the ordinary way (Vault.lookup_accessor: the active node decides "gone").

    Skipped: an accessor that is gone, and one the active node answers 403
    for. A leader killed while minting can leave an accessor whose token
    entry was never written (seen on OpenBao 2.7.2 after SIGKILL of the
    leader during mints); no token can be used or revoked through it, and it
    must not stop a scan of every other token. Raises ScanCutShort when
    `give_up()` says so before a chunk or an ordinary lookup.

    A pipelined answer that `decides` something (the caller will revoke that
    token) is not taken on its own word: that token is asked again the
    ordinary way, one request on its own, and that answer is yielded.
    """
    pending = list(accessors)
    for start in range(0, len(pending), SCAN_CHUNK):
        if give_up():
            raise ScanCutShort()
        chunk = pending[start:start + SCAN_CHUNK]
        for accessor, info in zip(chunk, vault.lookup_accessors_pipelined(chunk)):
            if info is not None and decides(info):
                info = None
            if info is None:
                if give_up():
                    raise ScanCutShort()
                try:
                    info = vault.lookup_accessor(accessor)
                except VaultDenied:
                    continue
            if info is not None:
                yield accessor, info


def observe_vault(vault: Vault, desired: DesiredVault, *, admin: bool, records: Mapping[str, str],
                  read_token: TokenReader, token_users: Iterable[str],
                  pending_revoke: Iterable[str] = (), intents: Mapping[str, str] | None = None,
                  collect_garbage: bool = False, scan_budget: float | None = None) -> ObservedVault:
    """Read what Vault holds.

    With `admin`, `vault` holds the admin token: policies are read, tokens are
    looked up through the admin API and recorded accessors (and the replaced
    ones still to revoke, `pending_revoke`) are checked. Without it, `vault`
    should hold no token: each token looks itself up, and neither policies nor
    accessors can be read. `intents` (nonce -> user) are the mints the state
    file says were asked for and not accounted for: see `_resolve_intents` (its scan gets
    `scan_budget` seconds; None: retry.scan_budget(), from the environment).

    With `collect_garbage` (admin `--prune` runs), every accessor in Vault is
    listed and looked up (one request per token in Vault, see
    `observe_garbage`) to find the tokens this host minted that nothing references.
    """
    # The policy list is one big answer the server takes a while to build: it is asked on a
    # connection of its own while the token files are read and the tokens looked up.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vault-policies") as background:
        listing = background.submit(_observe_policies, vault.twin(), desired.policy_prefix) if admin else None
        tokens = _observe_tokens(vault, list(token_users), read_token, admin=admin)
        policies = listing.result() if listing is not None else None
    recorded: dict[str, RecordedToken] = {}
    for user, accessor in sorted(records.items()):
        if admin and _needs_accessor_check(user, accessor, desired, tokens):
            recorded[user] = RecordedToken(user, accessor, checked=True, info=vault.lookup_accessor(accessor))
        else:
            recorded[user] = RecordedToken(user, accessor)
    pending = {accessor: PendingRevoke(accessor, checked=True, info=vault.lookup_accessor(accessor)) if admin
               else PendingRevoke(accessor) for accessor in sorted(set(pending_revoke))}
    scan = _resolve_intents(vault, intents or {}, tokens, admin=admin,
                            budget=retry.scan_budget() if scan_budget is None else scan_budget)
    for accessor, stray in scan.strays.items():
        pending.setdefault(accessor, stray)
    unresolved = ({nonce: user for nonce, user in (intents or {}).items() if nonce not in scan.resolved}
                  if admin else {})
    observed = ObservedVault(admin=admin, policies=None if policies is None else MappingProxyType(policies),
                             tokens=MappingProxyType(tokens), recorded=MappingProxyType(recorded),
                             pending=MappingProxyType(pending), resolved_intents=scan.resolved,
                             unresolved_intents=MappingProxyType(unresolved), scan_cut_short=scan.cut_short)
    if admin and collect_garbage:
        observed = replace(observed, garbage=MappingProxyType(observe_garbage(vault, desired, observed)))
    return observed


def is_garbage_candidate(info: TokenInfo, desired: DesiredVault) -> bool:
    """A token this tool minted on this host for a user under this roster's policy prefix."""
    user = minted_for_whom(info)
    return (user is not None and is_minted_here(info, desired.host)
            and info.policies == (f"{desired.policy_prefix}{user}",))


def observe_garbage(vault: Vault, desired: DesiredVault, observed: ObservedVault) -> dict[str, TokenInfo]:
    """Live tokens this host minted (for this roster's prefix) that no token file, record or pending
    revocation of this host references.

    Vault lists accessors only, so each one costs a lookup: a run pays one
    request per token in the whole Vault (about 1 ms each on loopback). Hence
    only `apply --prune`/`plan --prune` (admin) collect garbage, never the hourly run.
    Another host's tokens are never candidates: in a shared home the token
    in use may have been minted elsewhere, and only its minter revokes it.
    """
    referenced = _in_use(observed) | set(observed.pending)
    unreferenced = [accessor for accessor in vault.list_accessors() if accessor not in referenced]
    candidate: Callable[[TokenInfo], bool] = lambda info: is_garbage_candidate(info, desired)
    return {accessor: info for accessor, info in scan_tokens(vault, unreferenced, decides=candidate)
            if candidate(info)}


# --- plan (pure) --------------------------------------------------------------------


@dataclass(frozen=True)
class MintOrder:
    """What the executor needs to (re-)mint one user's token."""

    token: DesiredToken
    revoke: tuple[str, ...]
    """Accessors to revoke once the new token is in the file: only tokens minted for this user."""


@dataclass(frozen=True)
class RevokeOrder:
    user: str
    accessor: str


def token_drift(want: DesiredToken, info: TokenInfo) -> list[str]:
    """Why a live token is not the desired one (empty: it is)."""
    reasons = []
    if not info.orphan:
        reasons.append("not an orphan token")
    if info.policies != (want.policy,):
        reasons.append(f"policies are [{', '.join(info.policies)}], want [{want.policy}]")
    if info.display_name.lower() != want.vault_display_name.lower():
        reasons.append(f"display name is {info.display_name or '(none)'}, want {want.vault_display_name}")
    if info.period_seconds != want.period_seconds:
        have = format_duration(info.period_seconds) if info.period_seconds else "none"
        reasons.append(f"period is {have}, want {format_duration(want.period_seconds)}")
    return reasons


def needs_renewal(want: DesiredToken, info: TokenInfo) -> bool:
    return info.ttl_seconds * 2 < want.period_seconds


def _replaced_accessors(user: str, current: ObservedToken, record: RecordedToken | None) -> tuple[str, ...]:
    accessors: list[str] = []
    if current.state is TokenState.VALID and current.info is not None and is_minted_for(current.info, user):
        accessors.append(current.info.accessor)
    if (record is not None and record.checked and record.info is not None
            and is_minted_for(record.info, user) and record.accessor not in accessors):
        accessors.append(record.accessor)
    return tuple(accessors)


def _token_problem(current: ObservedToken) -> str:
    return {
        TokenState.NO_FILE: "token file is missing",
        TokenState.UNREADABLE: f"token file is unreadable ({current.detail})",
        TokenState.DEAD: "token is expired, revoked or unknown",
        TokenState.REFUSED: "token refused its own lookup-self (expired, revoked, or its policy changed)",
    }.get(current.state, "token differs")


def _superseded_record(want: DesiredToken, current: ObservedToken, record: RecordedToken | None,
                       host: str) -> str | None:
    """The recorded accessor a valid, wanted token in the file has replaced, when it still lives and
    this host minted it for the user; else None.

    A re-mint killed after writing the new token but before its record leaves
    the old one recorded: revoking it in the same run the file is found good
    lets that run converge, instead of moving it to `pending_revoke` first.
    """
    if record is None or not record.checked or record.info is None or current.info is None:
        return None
    if record.accessor == current.info.accessor:
        return None
    if not (is_minted_for(record.info, want.user) and is_minted_here(record.info, host)):
        return None
    return record.accessor


def plan_token(want: DesiredToken, current: ObservedToken, record: RecordedToken | None,
               host: str = "") -> list[Change]:
    """The changes that bring one user's token to the desired state: at most one for the token
    itself, and the revocation of a superseded record (`_superseded_record`)."""
    mint = MintOrder(token=want, revoke=_replaced_accessors(want.user, current, record))
    if current.state is TokenState.VALID and current.info is not None:
        drift = token_drift(want, current.info)
        if drift:
            return [Change(Action.UPDATE, Kind.TOKEN, want.display_name, "; ".join(drift) + "; re-mint",
                           user=want.user, needs_admin=True, desired=mint, observed=current)]
        changes: list[Change] = []
        superseded = _superseded_record(want, current, record, host)
        if superseded is not None:
            changes.append(Change(Action.DELETE, Kind.TOKEN, want.display_name, PENDING_REASON,
                                  user=want.user, needs_admin=True, desired=RevokeOrder(want.user, superseded)))
        if needs_renewal(want, current.info):
            reason = (f"TTL {format_duration(current.info.ttl_seconds)} is below half the period "
                      f"({format_duration(want.period_seconds)}); renew")
            changes.append(Change(Action.UPDATE, Kind.TOKEN_RENEWAL, want.display_name, reason,
                                  user=want.user, needs_admin=False, desired=want, observed=current))
        return changes
    record_gone = record is None or (record.checked and record.info is None)
    if current.state is TokenState.NO_FILE and record_gone:
        return [Change(Action.CREATE, Kind.TOKEN, want.display_name, "no token yet; mint",
                       user=want.user, needs_admin=True, desired=mint, observed=current)]
    return [Change(Action.UPDATE, Kind.TOKEN, want.display_name, _token_problem(current) + "; re-mint",
                   user=want.user, needs_admin=True, desired=mint, observed=current)]


def plan_policies(desired: DesiredVault, policies: Mapping[str, str], *, prune: bool) -> list[Change]:
    """Create or update each user's policy; this tool's policies of users not in the roster are orphaned.

    A policy under the prefix named for a roster user is brought to the template
    whoever wrote it; one for anybody else is orphaned only when this tool wrote
    it (`is_tool_policy`), so a hand-made policy under the prefix is never deleted.
    """
    changes: list[Change] = []
    for name, want in desired.policies.items():
        have = policies.get(name)
        if have is None:
            changes.append(Change(Action.CREATE, Kind.POLICY, name, f"no policy yet for user {want.user}",
                                  user=want.user, needs_admin=True, desired=want, after_text=want.text))
        elif have != want.text:
            changes.append(Change(Action.UPDATE, Kind.POLICY, name, "text differs from the template",
                                  user=want.user, needs_admin=True, desired=want,
                                  before_text=have, after_text=want.text))
    managed = {name for name, text in policies.items() if is_tool_policy(name, text, desired.policy_prefix)}
    for name in sorted(managed - set(desired.policies)):
        user = name[len(desired.policy_prefix):]
        changes.append(_orphan(Kind.POLICY, name, user, prune, desired.users,
                               payload=name, before_text=policies[name]))
    return changes


def plan_tokens(desired: DesiredVault, observed: ObservedVault, *, prune: bool) -> list[Change]:
    """Mint, re-mint or renew each user's token; revoke recorded tokens no longer wanted."""
    changes: list[Change] = []
    for user, want in desired.tokens.items():
        current = observed.tokens.get(user)
        if current is not None and current.state is not TokenState.FAILED:  # else: a problem, reported
            changes.extend(plan_token(want, current, observed.recorded.get(user), desired.host))
    for user, record in observed.recorded.items():
        if user in desired.tokens:
            continue
        if record.checked and (record.info is None or not is_ours_to_revoke(record.info, user, desired)):
            continue  # already gone, or not ours: bookkeeping forgets it
        changes.append(_orphan(Kind.TOKEN, token_display_name(user), user, prune, desired.users,
                               payload=RevokeOrder(user, record.accessor), host=desired.host,
                               here=desired.is_here(user)))
    return changes


PENDING_REASON = "replaced token still alive; revoke"
INTERRUPTED_REASON = "minted by an interrupted run and in nobody's file; revoke"


def _in_use(observed: ObservedVault) -> set[str]:
    """Accessors of the tokens now in the users' files and of the records: never revoked as replaced."""
    live = {token.info.accessor for token in observed.tokens.values() if token.info is not None}
    return live | {record.accessor for record in observed.recorded.values()}


def plan_pending(observed: ObservedVault) -> list[Change]:
    """Revoke each replaced token the state file remembers that still lives and that this tool minted.

    Only the admin lookup tells whether it lives: without one nothing is planned
    and the accessors stay in the state file for the next admin run.
    """
    changes: list[Change] = []
    in_use = _in_use(observed)
    for accessor, pending in sorted(observed.pending.items()):
        if not pending.checked or pending.info is None or accessor in in_use:
            continue
        user = minted_for_whom(pending.info)
        if user is None:
            continue  # not ours: never revoked, bookkeeping forgets it
        current = observed.tokens.get(user)
        if current is not None and current.state is TokenState.FAILED:
            continue  # the user's file could not be checked: it might hold this very token
        reason = INTERRUPTED_REASON if pending.interrupted else PENDING_REASON
        changes.append(Change(Action.DELETE, Kind.TOKEN, token_display_name(user), reason,
                              user=user, needs_admin=True, desired=RevokeOrder(user, accessor)))
    return changes


GARBAGE_REASON = "minted here, referenced by nothing; revoked by apply --prune"
ACCESSOR_SHOWN = 8
"""Characters of a garbage token's accessor shown in its change name (never the token itself)."""


def garbage_name(accessor: str, user: str, host: str) -> str:
    """`<accessor prefix>… (user alice, host h1)`: enough to find the token with the root token."""
    return f"{accessor[:ACCESSOR_SHOWN]}… (user {user}, host {host})"


def plan_garbage(desired: DesiredVault, observed: ObservedVault) -> list[Change]:
    """One `!` change (Action.COLLECT) per token of `observed.garbage` (see observe_garbage).

    Garbage is observed only in `--prune` runs, so the `apply --prune` that
    lists it also revokes it; the plain and hourly runs never see it.
    """
    changes: list[Change] = []
    for accessor, info in sorted(observed.garbage.items()):
        user = minted_for_whom(info)
        if user is None:
            continue
        changes.append(Change(Action.COLLECT, Kind.TOKEN, garbage_name(accessor, user, desired.host),
                              GARBAGE_REASON, user=user, needs_admin=True, desired=RevokeOrder(user, accessor)))
    return changes


def plan_vault(desired: DesiredVault, observed: ObservedVault, *, prune: bool) -> list[Change]:
    """Every Vault change, unsorted. Orphans become deletions only with `prune`.

    Without an admin token the policies are unknown (None) and not planned.
    """
    changes: list[Change] = []
    if observed.policies is not None:
        changes.extend(plan_policies(desired, observed.policies, prune=prune))
    changes.extend(plan_tokens(desired, observed, prune=prune))
    changes.extend(plan_pending(observed))
    changes.extend(plan_garbage(desired, observed))
    return changes


def _orphan(kind: Kind, name: str, user: str, prune: bool, roster_users: frozenset[str], *,
            payload: object, before_text: str | None = None, host: str = "", here: bool = True) -> Change:
    what = "policy" if kind is Kind.POLICY else "token"
    if user in roster_users and not here:  # the roster's `hosts` leaves this host out: as if removed here
        if prune:
            return Change(Action.DELETE, kind, name, f"user {user} is not assigned to host {host}; revoke",
                          user=user, needs_admin=True, desired=payload, before_text=before_text)
        return Change(Action.ORPHANED, kind, name,
                      f"user {user} is not assigned to host {host} (apply --prune revokes the {what})",
                      user=user, needs_admin=True, desired=payload, before_text=before_text)
    if user in roster_users:  # a token of a user whose claude_auth is false
        return Change(Action.DELETE, kind, name, f"claude_auth is false for user {user}; revoke",
                      user=user, needs_admin=True, desired=payload, before_text=before_text)
    if prune:
        verb = "delete" if kind is Kind.POLICY else "revoke"
        return Change(Action.DELETE, kind, name, f"user {user} is not in the roster; {verb}",
                      user=user, needs_admin=True, desired=payload, before_text=before_text)
    return Change(Action.ORPHANED, kind, name,
                  f"user {user} is not in the roster (apply --prune removes the {what})",
                  user=user, needs_admin=True, desired=payload, before_text=before_text)


# --- apply: handlers the executor calls ------------------------------------------------------


def mint_users(plan: Iterable[Change]) -> list[str]:
    """The users the plan mints a token for (each mint's intent is written ahead: statefile.Journal)."""
    return [change.desired.token.user for change in plan
            if change.kind is Kind.TOKEN and isinstance(change.desired, MintOrder)
            and change.action is not Action.ORPHANED]


TokenWriter = Callable[[str, bytes, bool], None]
"""Writes a user's token file (0600, owner the user, no link followed); raises on failure."""


@dataclass
class TokenOutcomes:
    """What the executor did to tokens this run, for the state file."""

    minted: dict[str, str] = field(default_factory=dict)
    """user -> accessor of the token now in the user's file."""
    revoked: set[str] = field(default_factory=set)
    """Accessors revoked."""
    unrevoked: set[str] = field(default_factory=set)
    """Accessors of replaced tokens whose revocation failed after a mint: kept to retry."""


MintLock = Callable[[str], ContextManager[None]]
"""Holds a user's mint lock (homelock.MINT_LOCK_FILE) for the `with` block; raises when it cannot."""


class MintLog(Protocol):
    """The write-ahead log of mints (reconcile.local.statefile.Journal)."""

    def intend(self, user: str) -> str:
        """A nonce for a mint for `user`, on disk before this returns; raises when it cannot be."""

    def settle(self, nonce: str, user: str | None = None, accessor: str | None = None,
               replaced: Iterable[str] = ()) -> None:
        """The mint is accounted for: `user`'s token is now `accessor` (replacing `replaced`, still to
        revoke), or no token exists."""


@dataclass
class VaultContext:
    vault: Vault
    """The admin client (admin runs), else a client without a token."""
    admin: bool
    write_token: TokenWriter
    outcomes: TokenOutcomes = field(default_factory=TokenOutcomes)
    mint_log: MintLog | None = None
    """Where each mint is written ahead; None only in tests of pure handlers."""
    read_token: TokenReader | None = None
    """Re-reads a user's token file under the mint lock (None: no lock, no re-read)."""
    mint_lock: MintLock | None = None


class TokenFileWriteFailed(Exception):
    def __init__(self, message: str, *, revoked: bool) -> None:
        super().__init__(message)
        self.revoked = revoked
        """Whether the new token was revoked again (else it may live: its intent stays)."""


def apply_policy(change: Change, ctx: VaultContext) -> str:
    if change.action is Action.DELETE:
        ctx.vault.delete_policy(change.name)
        return "deleted"
    want = change.desired
    assert isinstance(want, DesiredPolicy)
    ctx.vault.write_policy(want.name, want.text)
    return "created" if change.action is Action.CREATE else "updated"


def apply_policies_pipelined(changes: Sequence[Change], ctx: VaultContext) -> list[str | None]:
    """apply_policy's outcome for each policy write, sent pipelined (Vault.write_policies_pipelined);
    None for every change that is not a write or was not answered with success: apply_policy runs it.

    Policy writes set a whole text, so one sent again (after a lost answer) is harmless.
    """
    writes = [(index, change.desired) for index, change in enumerate(changes)
              if change.kind is Kind.POLICY and change.action in (Action.CREATE, Action.UPDATE)
              and isinstance(change.desired, DesiredPolicy)]
    done = ctx.vault.write_policies_pipelined([(want.name, want.text) for _, want in writes])
    outcomes: list[str | None] = [None] * len(changes)
    for (index, _), written in zip(writes, done):
        if written:
            outcomes[index] = "created" if changes[index].action is Action.CREATE else "updated"
    return outcomes


def apply_token(change: Change, ctx: VaultContext) -> str:
    if change.action in (Action.DELETE, Action.COLLECT):
        order = change.desired
        assert isinstance(order, RevokeOrder)
        ctx.vault.revoke_accessor(order.accessor)
        ctx.outcomes.revoked.add(order.accessor)
        return "revoked"
    mint = change.desired
    assert isinstance(mint, MintOrder)
    if ctx.mint_lock is None:
        return _mint(mint, ctx)
    with ctx.mint_lock(mint.token.user):
        adopted = _adoptable(mint.token, ctx)
        if adopted is not None:
            ctx.outcomes.minted[mint.token.user] = adopted.accessor
            return "adopted the valid token another host just wrote (shared home)"
        return _mint(mint, ctx)


def _adoptable(want: DesiredToken, ctx: VaultContext) -> TokenInfo | None:
    """The token now in the user's file, when it is one this tool minted for them with no drift.

    Read under the mint lock: where hosts share a home, another host may have
    minted and written one since this run observed the file; every host then
    uses that one token instead of minting its own (docs/design.md, "Fleet").
    """
    if ctx.read_token is None:
        return None
    try:
        raw = ctx.read_token(want.user)
    except TokenFileUnreadable:
        return None
    secret = parse_token_file(raw) if raw is not None else None
    if secret is None:
        return None
    info = ctx.vault.lookup_token(secret)
    if info is None or not is_minted_for(info, want.user) or token_drift(want, info):
        return None
    return info


def _mint(mint: MintOrder, ctx: VaultContext) -> str:
    want = mint.token
    meta = dict(want.meta)
    nonce = ctx.mint_log.intend(want.user) if ctx.mint_log is not None else None
    if nonce is not None:
        meta[NONCE_META] = nonce
    sent = ctx.vault.requests["POST"]
    try:
        minted = ctx.vault.create_orphan_token(policies=[want.policy], period=want.period,
                                               display_name=want.display_name, meta=meta)
    except (VaultDenied, VaultInvalid):
        if nonce is not None and ctx.mint_log is not None:
            ctx.mint_log.settle(nonce)  # refused outright: no token exists
        raise
    # Any other failure may have minted a token: the intent stays for the next run to resolve.
    # Only a file that replaces a token about to be revoked must be on disk before
    # the revocation; first mints are flushed together at the end of the run.
    try:
        _write_or_revoke(ctx, want.user, minted, durable=bool(mint.revoke))
    except TokenFileWriteFailed as exc:
        if exc.revoked and nonce is not None and ctx.mint_log is not None:
            ctx.mint_log.settle(nonce)
        raise
    if nonce is not None and ctx.mint_log is not None:
        ctx.mint_log.settle(nonce, want.user, minted.accessor, mint.revoke)
    ctx.outcomes.minted[want.user] = minted.accessor
    if nonce is not None and ctx.vault.requests["POST"] - sent > 1:
        _revoke_twins(ctx, nonce, minted.accessor)
    failed: VaultError | None = None
    for accessor in mint.revoke:
        try:
            ctx.vault.revoke_accessor(accessor)
        except VaultError as exc:
            ctx.outcomes.unrevoked.add(accessor)  # the state file keeps it; the next admin run retries
            failed = failed or exc
        else:
            ctx.outcomes.revoked.add(accessor)
    if failed is not None:
        raise VaultError(f"minted and written, but revoking the replaced token failed ({failed}); "
                         "the next admin run retries") from None
    if mint.revoke:
        return "minted, written, replaced token revoked"
    return "minted and written"


def _revoke_twins(ctx: VaultContext, nonce: str, keep: str) -> None:
    """Revoke every token but `keep` that carries this mint's nonce.

    Only for a mint that was sent more than once. During a leader election a
    standby that forwarded the mint and lost the leader's answer replies 307,
    which the retry policy counts as "not done" and sends again; but the
    leader may have committed the first one. Both carry the same nonce, and
    the intent is settled by the second, so nothing else would find the first.
    Costs one lookup per token in Vault, only on this rare path.
    """
    try:
        others = [accessor for accessor in ctx.vault.list_accessors() if accessor != keep]
        for accessor, info in scan_tokens(ctx.vault, others, decides=lambda info: info.meta.get(NONCE_META) == nonce):
            if info.meta.get(NONCE_META) == nonce:
                ctx.vault.revoke_accessor(accessor)
                ctx.outcomes.revoked.add(accessor)
    except VaultError as exc:
        raise VaultError(f"minted and written after a retried request, but the search for a first copy "
                         f"of it failed ({exc}); `apply --prune` finds it") from None


def _write_or_revoke(ctx: VaultContext, user: str, minted: MintedToken, *, durable: bool) -> None:
    """Write the new token into the user's file; when that fails, revoke it (and settle its intent)."""
    try:
        ctx.write_token(user, minted.token.reveal().encode("ascii"), durable)
    except Exception as exc:  # the file write failed: the new token must not outlive it
        detail = str(exc) or type(exc).__name__
        try:
            ctx.vault.revoke_accessor(minted.accessor)
        except VaultError as revoke_exc:  # its intent stays: the next admin run finds and revokes it
            raise TokenFileWriteFailed(
                f"writing the token file failed ({detail}); revoking the new token failed too: {revoke_exc}",
                revoked=False) from None
        raise TokenFileWriteFailed(f"writing the token file failed ({detail}); the new token was revoked",
                                   revoked=True) from None


def apply_renewal(change: Change, ctx: VaultContext) -> str:
    current = change.observed
    assert isinstance(current, ObservedToken) and current.token is not None
    renewed = ctx.vault.with_token(current.token).renew_self()
    return f"renewed (TTL {format_duration(renewed.ttl_seconds)})"


HANDLERS: Mapping[tuple[Kind, Action], Callable[[Change, VaultContext], str]] = MappingProxyType({
    (Kind.POLICY, Action.CREATE): apply_policy,
    (Kind.POLICY, Action.UPDATE): apply_policy,
    (Kind.POLICY, Action.DELETE): apply_policy,
    (Kind.TOKEN, Action.CREATE): apply_token,
    (Kind.TOKEN, Action.UPDATE): apply_token,
    (Kind.TOKEN, Action.DELETE): apply_token,
    (Kind.TOKEN, Action.COLLECT): apply_token,
    (Kind.TOKEN_RENEWAL, Action.UPDATE): apply_renewal,
})


# --- bookkeeping (pure) ---------------------------------------------------------------------


def next_records(records: Mapping[str, str], desired: DesiredVault, observed: ObservedVault,
                 outcomes: TokenOutcomes) -> dict[str, str]:
    """The token accessors the state file should hold after this run.

    A user's record is the accessor of the token now in their file when this
    tool minted it for them (this run or before); records of tokens revoked
    this run, gone, or not ours are dropped; any other record is kept, so an
    offboarded user's token can still be found by `apply --prune`.
    """
    result = dict(records)
    for user, want in desired.tokens.items():
        current = observed.tokens.get(user)
        if user in outcomes.minted:
            result[user] = outcomes.minted[user]
        elif (current is not None and current.state is TokenState.VALID and current.info is not None
              and is_minted_for(current.info, user) and not token_drift(want, current.info)):
            result[user] = current.info.accessor
    for user, accessor in list(result.items()):
        record = observed.recorded.get(user)
        if accessor in outcomes.revoked:
            del result[user]
        elif (record is not None and record.accessor == accessor and record.checked
              and (record.info is None or not is_ours_to_revoke(record.info, user, desired))):
            del result[user]
    return dict(sorted(result.items()))


def next_pending(pending: Iterable[str], records: Mapping[str, str], new_records: Mapping[str, str],
                 observed: ObservedVault, outcomes: TokenOutcomes) -> tuple[str, ...]:
    """The replaced tokens' accessors the state file should keep for the next admin run to revoke.

    Added: a replaced token whose revocation failed this run, and a recorded
    accessor replaced by another one unless it is known gone, not ours or
    revoked. Dropped: revoked this run, looked up and gone (or not ours), or in
    use again as a record.
    """
    result = set(pending) | outcomes.unrevoked
    for user, old in records.items():
        new = new_records.get(user)
        if new is None or new == old or old in outcomes.revoked:
            continue
        record = observed.recorded.get(user)
        if record is not None and record.checked and (record.info is None or not is_minted_for(record.info, user)):
            continue
        result.add(old)
    kept = []
    in_use = set(new_records.values())
    for accessor in sorted(result):
        seen = observed.pending.get(accessor)
        if accessor in outcomes.revoked or accessor in in_use:
            continue
        if seen is not None and seen.checked and (seen.info is None or minted_for_whom(seen.info) is None):
            continue
        kept.append(accessor)
    return tuple(kept)
