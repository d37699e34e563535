"""The user database under --root: who each roster user is on this machine.

Owns turning a user name into an Account (uid, gid, and the home folder as a
real path on this machine). With root `/` the system database answers
(`pwd`, so NSS sources count too); with any other root, `DIR/etc/passwd` is
parsed here and the home folder is joined under DIR. The home folder path
itself is trusted (root chose it in the user database); everything below it
is not, and only reconcile.local.homefs touches it.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from reconcile.common.model import UserProblem


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: Path
    """The home folder as a real path on this machine (already under --root)."""
    passwd_home: str = field(default="", compare=False)
    """The home folder as the user database names it (what the running system sees; under
    --root DIR, `home` is DIR joined with it)."""

    @property
    def system_home(self) -> str:
        return self.passwd_home or str(self.home)


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str
    """As written in the database (absolute, not yet under --root)."""


def is_system_root(root: Path) -> bool:
    return Path(os.path.realpath(root)) == Path("/")


def passwd_file(root: Path) -> Path:
    return Path(root) / "etc" / "passwd"


def parse_passwd(text: str) -> dict[str, PasswdEntry]:
    """Entries of a passwd(5) text by name; malformed lines and comments are skipped.

    The first entry of a name wins, as getpwnam(3) does with files.
    """
    entries: dict[str, PasswdEntry] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) != 7:
            continue
        name, _password, uid, gid, _gecos, home, _shell = fields
        if not name or not uid.isdigit() or not gid.isdigit():
            continue
        entries.setdefault(name, PasswdEntry(name, int(uid), int(gid), home))
    return entries


class UserDatabaseUnreadable(Exception):
    """DIR/etc/passwd exists but cannot be read (a folder, no permission...); the message names it."""


def _read_passwd(root: Path) -> dict[str, PasswdEntry]:
    """The entries of DIR/etc/passwd; none when it does not exist.

    Raises UserDatabaseUnreadable when it exists but cannot be read: the
    commands turn that into one `ERROR: ...` line rather than guess who is who.
    """
    path = passwd_file(root)
    try:
        return parse_passwd(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserDatabaseUnreadable(f"cannot read the user database {path}: {reason}") from None


def _system_entry(name: str) -> PasswdEntry | None:
    try:
        record = pwd.getpwnam(name)
    except KeyError:
        return None
    return PasswdEntry(record.pw_name, record.pw_uid, record.pw_gid, record.pw_dir)


_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EBADF)
"""What Path.exists() reads as "not there"."""


def home_under_root(root: Path, home: str, *, system: bool | None = None) -> Path:
    """The real path of a database home folder (`/home/alice`) under `root`.

    `system`: whether `root` is `/`, when the caller already knows (a realpath per person adds up).
    """
    if is_system_root(root) if system is None else system:
        return Path(home)
    return Path(root) / home.lstrip("/")


def lookup_accounts(root: Path, names: Iterable[str]) -> dict[str, Account | UserProblem]:
    """An Account per name, or a UserProblem saying why that user has none.

    A UserProblem's message does not repeat the user name (render it as
    `<user>: <message>`).
    """
    root = Path(root)
    system = is_system_root(root)
    table = {} if system else _read_passwd(root)
    where = "the system user database" if system else str(passwd_file(root))
    result: dict[str, Account | UserProblem] = {}
    homes: dict[tuple[int, int], list[str]] = {}
    for name in dict.fromkeys(names):
        entry = _system_entry(name) if system else table.get(name)
        if entry is None:
            result[name] = UserProblem(name, f"no such account in {where}")
            continue
        if not entry.home.startswith("/"):
            result[name] = UserProblem(name, f"home folder {entry.home!r} in {where} is not an absolute path")
            continue
        home = home_under_root(root, entry.home, system=system)
        try:
            st = os.stat(home)  # one stat, not exists() then is_dir()
            is_folder = stat.S_ISDIR(st.st_mode)
        except OSError as exc:
            if exc.errno not in _MISSING:
                raise
            result[name] = UserProblem(name, f"home folder {home} does not exist")
            continue
        if not is_folder:
            result[name] = UserProblem(name, f"home folder {home} is not a folder")
            continue
        result[name] = Account(entry.name, entry.uid, entry.gid, home, entry.home)
        homes.setdefault((st.st_dev, st.st_ino), []).append(name)
    return _refuse_shared_homes(result, homes)


def _refuse_shared_homes(result: dict[str, Account | UserProblem],
                         homes: dict[tuple[int, int], list[str]]) -> dict[str, Account | UserProblem]:
    """Two roster people whose homes are one folder (the same path, or two paths to it) would hand
    each other's token file back and forth: both are refused. One person's home shared by several
    hosts is another matter (one account, one name) and stays supported."""
    for sharers in homes.values():
        if len(sharers) < 2:
            continue
        for name in sharers:
            account = result[name]
            assert isinstance(account, Account)
            others = ", ".join(other for other in sharers if other != name)
            result[name] = UserProblem(name, f"home folder {account.home} is also the home of {others}; "
                                             "refusing to manage either (one person's token file would be "
                                             "handed to the other): give each account a home of its own")
    return result


def names_by_uid(root: Path, uids: Iterable[int]) -> dict[int, str]:
    """Account names for the given uids, for people to read (unknown uids are left out)."""
    wanted = set(uids)
    if not wanted:
        return {}
    if is_system_root(root):
        found: dict[int, str] = {}
        for uid in wanted:
            try:
                found[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                pass
        return found
    found = {}
    for entry in _read_passwd(Path(root)).values():
        if entry.uid in wanted and entry.uid not in found:
            found[entry.uid] = entry.name
    return found
