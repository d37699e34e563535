"""Whether a person can run the program a unit's ExecStart= names.

Units get `ExecStart=` set to the `claude-auth` that ran `apply`. Installed
below a folder a person cannot enter (a venv under /root, mode 0700), every
sync of that person fails with 203/EXEC and nothing says why. So `plan` and
`apply` check it first, for every person with a sync timer.

In the observe / decide shape:

- `observe_program(path)`: impure; walks the path as the kernel does, one
  component at a time, following symbolic links (relative and absolute, up to
  40), and records every access executing it needs: search (x) on each folder
  on the way, execute on the file, and for a `#!` script also read on it (the
  interpreter opens it) and the same for its interpreter, recursively (up to
  4 levels, as Linux). The walk is the same for everyone, so it is done once.
- `denial(program, person)`: pure; the first access the person's uid and
  groups do not grant, as a sentence, or None. The permission bits are
  computed here (owner, else group, else other), never by switching uid.
- `people(root, accounts)`: each person's uid and groups, from the user
  database under --root (DIR/etc/group), or the system's (NSS) on `/`.

POSIX ACLs and capabilities are not read: a path that only an ACL opens is
reported as denied (an administrator can use plain modes for the install).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from reconcile.local.accounts import Account, is_system_root


MAX_SYMLINKS = 40
"""Linux's limit on links followed in one path lookup (MAXSYMLINKS)."""
MAX_INTERPRETERS = 4
"""Linux's limit on nested `#!` interpreters."""
SHEBANG_BYTES = 256
"""The kernel reads this much of a script for its `#!` line (BINPRM_BUF_SIZE)."""

SEARCH = "search"
EXECUTE = "execute"
READ = "read"
_BITS = {SEARCH: 1, EXECUTE: 1, READ: 4}


@dataclass(frozen=True)
class Access:
    path: str
    need: str
    """SEARCH (a folder on the way), EXECUTE or READ (the file)."""
    mode: int
    uid: int
    gid: int
    role: str = "program"
    """"program", or "interpreter" for a `#!` interpreter: for people."""


@dataclass(frozen=True)
class Program:
    path: str
    accesses: tuple[Access, ...]
    broken: str | None = None
    """Why nobody can run it (missing, not a regular file, a link loop), else None."""


@dataclass(frozen=True)
class Person:
    name: str
    uid: int
    groups: frozenset[int]
    """Primary and supplementary group ids."""


# --- observe ----------------------------------------------------------------------------


class _Broken(Exception):
    pass


def _walk(path: str, accesses: list[Access], role: str, links: list[int]) -> str:
    """Resolve `path` (absolute) component by component, recording folder searches; the final real path."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    current = "/"
    while parts:
        part = parts.pop(0)
        info = os.stat(current)
        accesses.append(Access(current, SEARCH, info.st_mode, info.st_uid, info.st_gid, role))
        if part == "..":
            current = os.path.dirname(current.rstrip("/")) or "/"
            continue
        candidate = os.path.join(current, part)
        try:
            found = os.lstat(candidate)
        except FileNotFoundError:
            raise _Broken(f"{candidate} does not exist") from None
        except NotADirectoryError:
            raise _Broken(f"{current} is not a folder") from None
        if stat.S_ISLNK(found.st_mode):
            links[0] += 1
            if links[0] > MAX_SYMLINKS:
                raise _Broken(f"too many symbolic links at {candidate}")
            target = os.readlink(candidate)
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            if target.startswith("/"):
                current = "/"
            continue
        if parts and not stat.S_ISDIR(found.st_mode):
            raise _Broken(f"{candidate} is not a folder")
        current = candidate
    return current


def _shebang(path: str) -> str | None:
    """The interpreter of a `#!` script, or None for a binary. Reads at most SHEBANG_BYTES, never blocks."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        head = os.read(fd, SHEBANG_BYTES)
    finally:
        os.close(fd)
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].strip()
    words = line.split(None, 1)
    if not words:
        raise _Broken(f"{path} has an empty #! line")
    return os.fsdecode(words[0])


def observe_program(path: str) -> Program:
    """Every access running `path` needs (see the module docstring); read as root, once for everyone."""
    accesses: list[Access] = []
    current, role = path, "program"
    try:
        for _ in range(MAX_INTERPRETERS + 1):
            if not current.startswith("/"):
                raise _Broken(f"{current} is not an absolute path")
            real = _walk(current, accesses, role, [0])
            info = os.stat(real)
            if not stat.S_ISREG(info.st_mode):
                raise _Broken(f"{real} is not a regular file")
            accesses.append(Access(real, EXECUTE, info.st_mode, info.st_uid, info.st_gid, role))
            interpreter = _shebang(real)
            if interpreter is None:
                return Program(path, tuple(accesses))
            # The interpreter opens the script by its path to read it.
            accesses.append(Access(real, READ, info.st_mode, info.st_uid, info.st_gid, role))
            current, role = interpreter, "interpreter"
        raise _Broken(f"more than {MAX_INTERPRETERS} nested #! interpreters")
    except _Broken as exc:
        return Program(path, tuple(accesses), str(exc))
    except OSError as exc:
        where = exc.filename or path
        return Program(path, tuple(accesses), f"{where}: {exc.strerror or type(exc).__name__}")


def people(root: Path, accounts: Sequence[Account]) -> dict[str, Person]:
    """Each account's uid and groups: its primary gid plus the groups that list it as a member.

    On `/` the system answers (NSS included); under any other root DIR/etc/group
    is read, once for everyone.
    """
    if is_system_root(root):
        found = {}
        for account in accounts:
            try:
                groups = frozenset(os.getgrouplist(account.name, account.gid))
            except OSError:
                groups = frozenset({account.gid})
            found[account.name] = Person(account.name, account.uid, groups)
        return found
    try:
        text = (Path(root) / "etc" / "group").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    member_of: dict[str, set[int]] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) == 4 and fields[2].isdigit():
            for name in fields[3].split(","):
                member_of.setdefault(name.strip(), set()).add(int(fields[2]))
    return {account.name: Person(account.name, account.uid,
                                 frozenset({account.gid} | member_of.get(account.name, set())))
            for account in accounts}


# --- decide -----------------------------------------------------------------------------


def is_granted(access: Access, person: Person) -> bool:
    """The kernel's check (generic_permission) from the mode bits, ACLs aside."""
    want = _BITS[access.need]
    if person.uid == 0:
        # Root may search and read anything, and execute a file with any x bit.
        return access.need != EXECUTE or bool(access.mode & 0o111)
    if person.uid == access.uid:
        bits = (access.mode >> 6) & 7
    elif access.gid in person.groups:
        bits = (access.mode >> 3) & 7
    else:
        bits = access.mode & 7
    return bits & want == want


def denial(program: Program, person: Person) -> str | None:
    """Why `person` cannot run `program` (one sentence naming the path), or None when they can."""
    for access in program.accesses:
        if not is_granted(access, person):
            what = {SEARCH: "cannot enter the folder", EXECUTE: "cannot execute",
                    READ: "cannot read"}[access.need]
            detail = f"mode {stat.S_IMODE(access.mode):04o}, owner uid {access.uid}, group gid {access.gid}"
            via = f" (the {access.role} of {program.path})" if access.role != "program" else ""
            return f"cannot run {program.path}: {what} {access.path}{via} ({detail})"
    if program.broken is not None:
        return f"cannot run {program.path}: {program.broken}"
    return None
