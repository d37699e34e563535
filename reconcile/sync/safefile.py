"""Opening the files a sync run uses in the person's own home, without trusting what they are.

A sync runs as the person, on files the person (or a process of theirs that
went wrong) controls: `~/.claude/.credentials.json`, the Vault token file,
the state folder's `lock` and `sync.log`. Any of them may turn out to be a
FIFO (an open would block forever, holding the sync lock), a link to
/dev/zero (a read would never end), or hundreds of megabytes. So every open
here is non-blocking (O_NONBLOCK, O_NOCTTY), is checked with fstat after the
open (a regular file only: what was opened is what is checked), and every
read is capped; the size is checked before anything is read, so a refused
file costs no memory.

Symbolic links: the person owns their `.credentials.json`, and a dotfile
manager may well make it a link to a regular file elsewhere, so that one
link is followed (and the target must still be a regular file; /dev/zero
is refused). Nothing else the sync opens is ever a link for a good reason
(root's `apply` writes the token file, the sync itself the state folder),
so those are opened with O_NOFOLLOW.

Every refusal is an UnsafeFile whose text is `<file>: <why>`, naming the
file as people know it (`~/.claude/.credentials.json`), never its content.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

KIB = 1024
MIB = 1024 * KIB
CREDENTIALS_LIMIT = 1 * MIB
"""`.credentials.json` cap: a login is about 1 KiB; with MCP logins a few KiB."""
TOKEN_FILE_LIMIT = 64 * KIB
"""The Vault token file cap (a token is about 100 bytes); the same cap `plan` and `status` read it with."""


class UnsafeFile(Exception):
    """A file the sync needs is not a regular file it can read safely; the text is `<file>: <why>`."""

    def __init__(self, shown: str, why: str) -> None:
        super().__init__(f"{shown}: {why}")
        self.shown = shown
        self.why = why


@dataclass(frozen=True)
class RegularFile:
    data: bytes
    mode: int
    """st_mode of the file read (from fstat, so of the file whose bytes these are)."""


def describe(mode: int) -> str:
    """What kind of file `mode` is, for people."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))
    for is_kind, name in kinds:
        if is_kind(mode):
            return name
    return "a special file"


def _size_text(size: int) -> str:
    return f"{size / MIB:.1f} MiB" if size >= MIB else f"{size} bytes"


def _limit_text(limit: int) -> str:
    if limit % MIB == 0:
        return f"{limit // MIB} MiB"
    return f"{limit // KIB} KiB" if limit % KIB == 0 else f"{limit} bytes"


def open_checked(path: Path, flags: int, shown: str, *, follow_symlinks: bool, mode: int = 0o600) -> int | None:
    """An fd of `path` opened with `flags` (non-blocking), a regular file; None when it does not exist.

    Raises UnsafeFile for a link (unless `follow_symlinks`), a FIFO, a device,
    a socket or a folder, and for any other failure to open it.
    """
    flags |= os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, mode)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise UnsafeFile(shown, "is a symbolic link; refusing to follow it") from None
        if exc.errno in (errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP):
            # A FIFO without a reader (write opens) or a socket: special files either way.
            raise UnsafeFile(shown, "is a FIFO, socket or device, not a regular file; refusing to use it") from None
        raise UnsafeFile(shown, f"cannot open it: {exc.strerror or type(exc).__name__}") from None
    try:
        st_mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(st_mode):
            raise UnsafeFile(shown, f"is {describe(st_mode)}, not a regular file; refusing to use it")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_capped(path: Path, limit: int, shown: str, *, follow_symlinks: bool = False) -> RegularFile | None:
    """The bytes of the regular file `path` (at most `limit`), or None when it does not exist.

    A file larger than `limit` is refused from its size, before a byte is
    read; one that grows past it while being read is refused too.
    """
    fd = open_checked(path, os.O_RDONLY, shown, follow_symlinks=follow_symlinks)
    if fd is None:
        return None
    try:
        info = os.fstat(fd)
        if info.st_size > limit:
            raise UnsafeFile(shown, f"is {_size_text(info.st_size)}, larger than the {_limit_text(limit)} cap; "
                                    "refusing to read it")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise UnsafeFile(shown, f"grew past the {_limit_text(limit)} cap while it was read; refusing to read it")
        return RegularFile(data=b"".join(chunks), mode=info.st_mode)
    except OSError as exc:
        raise UnsafeFile(shown, f"cannot read it: {exc.strerror or type(exc).__name__}") from None
    finally:
        os.close(fd)
