"""Reads the Vault side of the world into plain frozen records, through the Vault client only.

`observe_vault`: the managed policies and each user's token as Vault sees it
(the token files are read by a function the caller hands in, `read_token`).

Every mint is written ahead (reconcile.local.statefile's intents): a nonce goes
to the state file before the create call and into the token's metadata
(`mint_nonce`). `observe_vault` resolves the intents a crashed run left: a token
in the user's file that carries the nonce is adopted (it becomes the record as
usual); otherwise (admin runs only) every token accessor is listed and looked up
once to find tokens carrying an outstanding nonce, which are then revoked like
replaced tokens (reconcile.vault.plan.plan_pending). That scan runs only when an
intent is outstanding, within its own time budget (`_resolve_intents`).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType
from typing import Callable, Iterable, Iterator, Mapping

from reconcile.vault import retry
from reconcile.common.model import UserProblem
from reconcile.vault.pool import ordered_map
from reconcile.vault.client import Vault
from reconcile.vault.values import Secret, TokenInfo, VaultDenied, VaultError, VaultUnreachable
from reconcile.vault.desired import (NONCE_META, DesiredVault, is_managed_policy, is_minted_here,
                                     minted_for_whom)


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
    observed_at: float = 0.0
    """When Vault was read (seconds since the epoch): token ages are measured from it."""
    host_grants: Mapping[str, str | None] | None = None
    """The hourly run with a host token: for each person it would mint for, None when the host token may
    (reconcile.vault.hosts.host_grants), else why not. None: not a host-token run."""
    host_token_accessor: str = ""
    """The accessor of the host token in this host's file: in use, never revoked as a stray."""

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
    (reconcile.vault.pool), so each outcome is what the one-by-one loop gave.
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
    # A twin intent (`<nonce>.twin`, statefile.TWIN_SUFFIX) stands for a first copy of a mint that was
    # sent twice: it is searched for by its mint's nonce, and the copy in the file is in use, never a stray.
    outstanding = {nonce.split(".", 1)[0] for nonce in outstanding}
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
                             unresolved_intents=MappingProxyType(unresolved), scan_cut_short=scan.cut_short,
                             observed_at=time.time())
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
    referenced = in_use(observed) | set(observed.pending)
    unreferenced = [accessor for accessor in vault.list_accessors() if accessor not in referenced]
    candidate: Callable[[TokenInfo], bool] = lambda info: is_garbage_candidate(info, desired)
    return {accessor: info for accessor, info in scan_tokens(vault, unreferenced, decides=candidate)
            if candidate(info)}


def in_use(observed: ObservedVault) -> set[str]:
    """Accessors of the tokens now in the users' files and of the records: never revoked as replaced."""
    live = {token.info.accessor for token in observed.tokens.values() if token.info is not None}
    if observed.host_token_accessor:
        live.add(observed.host_token_accessor)
    return live | {record.accessor for record in observed.recorded.values()}

