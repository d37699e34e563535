"""The only module that reads or writes below a user's home folder as root (with
reconcile.local.homelock, the mint lock, built on this module's `walk`).

Everything below a home folder is controlled by its user, who may plant a
symbolic link (`~/.config -> /etc`) or a hard link (`vault-token` linked to a
root-owned file) to make root write where it should not. So every operation
here walks from the home folder one component at a time with openat
semantics: each folder is opened with O_NOFOLLOW|O_DIRECTORY relative to the
file descriptor of its parent, created with mkdir(dir_fd=...), and changed
with fchown/fchmod on a descriptor, never by path. A symbolic link anywhere
below the home folder, or a regular file with more than one hard link, is
refused with UnsafePath; nothing outside the home folder is ever touched.
Files are written atomically: a fresh temporary file (O_CREAT|O_EXCL|
O_NOFOLLOW) in the same folder, renamed over the old entry through folder
descriptors, so an existing link is replaced, never written through.

Root gives a person only what it has just created. An existing entry is
changed (mode, group) only when the descriptor root opened shows it already
belongs to that person; a root-owned file (or one of anyone else) that root
did not create in this very call is never chowned, never chmodded and never
read: a person can race a link to such a file into the name between root's
open and its checks, and the check that counts is the one made on the
descriptor after opening (docs/design.md, "The trust boundary"). The one
exception is what a killed run (or another host's run over a shared home,
between its mkdir and its chown) leaves half-made: an empty root-owned
folder of no more than 0700, or an empty root-owned file with one link and
no more than 0600.
Such an object holds nothing and has no other name (folders cannot be
hard-linked), so giving it to the person gives nothing away.

The home folder itself (from the user database) is trusted as chosen by root.
Paths are given relative to the home folder (`.config/claude-auth-sync`) and
shown to people as `~/.config/claude-auth-sync`.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from dataclasses import dataclass
from typing import Literal

from reconcile.local.accounts import Account


CONFIG_DIR = ".config/claude-auth-sync"
STATE_DIR = ".local/state/claude-auth-sync"
TOKEN_FILE = ".config/claude-auth-sync/vault-token"

INTERMEDIATE_MODE = 0o700
"""Mode of a missing intermediate folder (`~/.config`, `~/.local`, ...) created here."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a planted FIFO must not hang; O_NOCTTY: never acquire a terminal.
_LEAF_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class HomeFsError(Exception):
    """An operation below a home folder failed; the message names the path."""


class UnsafePath(HomeFsError):
    """A path below a home folder is not what root may safely act on (a planted link, a wrong type)."""


EntryKind = Literal["missing", "directory", "file", "symlink", "other"]


@dataclass(frozen=True)
class EntryState:
    kind: EntryKind
    mode: int
    """Permission bits (stat.S_IMODE), 0 when missing."""
    uid: int
    gid: int
    nlink: int
    size: int = 0


MISSING = EntryState(kind="missing", mode=0, uid=-1, gid=-1, nlink=0)


def shown(rel_path: str) -> str:
    """How people see a path below the home folder: `~/.config/claude-auth-sync`."""
    return f"~/{rel_path}"


def split_path(rel_path: str) -> list[str]:
    parts = rel_path.split("/")
    if rel_path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"not a plain relative path below a home folder: {rel_path!r}")
    return parts


def _state(st: os.stat_result) -> EntryState:
    if stat.S_ISDIR(st.st_mode):
        kind: EntryKind = "directory"
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
    elif stat.S_ISLNK(st.st_mode):
        kind = "symlink"
    else:
        kind = "other"
    return EntryState(kind=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid, nlink=st.st_nlink,
                      size=st.st_size if kind == "file" else 0)


def _describe_kind(kind: EntryKind) -> str:
    return {"directory": "a folder", "file": "a regular file", "symlink": "a symbolic link",
            "other": "a special file", "missing": "missing"}[kind]


def _open_home(account: Account) -> int:
    try:
        return os.open(account.home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise HomeFsError(f"home folder {account.home} does not exist") from None
    except NotADirectoryError:
        raise HomeFsError(f"home folder {account.home} is not a folder") from None
    except OSError as exc:
        raise HomeFsError(f"cannot open home folder {account.home}: {exc.strerror}") from None


def _unsafe_child(parent_fd: int, name: str, display: str) -> UnsafePath:
    """Why `name` could not be opened as a folder without following links."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except OSError:
        return UnsafePath(f"{display} changed while it was being checked; refusing to use it")
    if stat.S_ISLNK(st.st_mode):
        return UnsafePath(f"{display} is a symbolic link; refusing to follow it")
    return UnsafePath(f"{display} is {_describe_kind(_state(st).kind)}, not a folder; refusing to use it")


def _open_dir(parent_fd: int, name: str, display: str) -> int | None:
    """The folder `name` in `parent_fd`, opened without following a link; None when missing."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _unsafe_child(parent_fd, name, display) from None
        raise HomeFsError(f"cannot open {display}: {exc.strerror}") from None


def _make_dir(parent_fd: int, name: str, display: str, account: Account, mode: int) -> int:
    """Create the folder `name` owned by the user with `mode` (or open it if it appeared meanwhile)."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
        created = True
    except FileExistsError:
        created = False
    except OSError as exc:
        raise HomeFsError(f"cannot create {display}: {exc.strerror}") from None
    fd = _open_dir(parent_fd, name, display)
    if fd is None:
        raise UnsafePath(f"{display} disappeared while it was being created; refusing to continue")
    try:
        st = os.fstat(fd)
        made_here = created and st.st_uid == os.geteuid() and st.st_uid != account.uid
        if made_here or _half_made(fd, st):
            # The folder root made a moment ago (or a killed run half-made), unless it was swapped
            # meanwhile: a fresh one is empty.
            if st.st_nlink == 2 and not os.listdir(fd):
                os.fchown(fd, account.uid, account.gid)
                os.fchmod(fd, mode)
            elif os.fstat(fd).st_uid != account.uid:
                raise UnsafePath(f"{display} changed while it was being created; refusing to use it")
            # else: another run over this shared home adopted it meanwhile and has made things in
            # it: the person's folder now, used like any other of theirs.
        else:
            _require_owner(st, account, display, "use")
    except OSError as exc:
        os.close(fd)
        raise HomeFsError(f"cannot set owner and mode of {display}: {exc.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _adopt_if_half_made(fd: int, account: Account, display: str) -> None:
    """Finish an intermediate folder a killed run made but did not yet give to the person."""
    try:
        st = os.fstat(fd)
        if _half_made(fd, st):
            os.fchown(fd, account.uid, account.gid)
            os.fchmod(fd, INTERMEDIATE_MODE)
    except OSError as exc:
        os.close(fd)
        raise HomeFsError(f"cannot set owner and mode of {display}: {exc.strerror}") from None


def walk(account: Account, parts: list[str], *, create: bool) -> int | None:
    """A descriptor of the folder ~/parts[0]/.../parts[-1], or None when a component is missing.

    With `create`, missing folders are created owned by the user with
    INTERMEDIATE_MODE; existing ones are left as they are. A symbolic link
    or non-folder on the way raises UnsafePath. The caller closes the
    descriptor.
    """
    fd = _open_home(account)
    try:
        for index, name in enumerate(parts):
            display = shown("/".join(parts[: index + 1]))
            child = _open_dir(fd, name, display)
            if child is None:
                if not create:
                    os.close(fd)
                    return None
                child = _make_dir(fd, name, display, account, INTERMEDIATE_MODE)
            elif create:
                _adopt_if_half_made(child, account, display)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def inspect(account: Account, rel_path: str) -> EntryState:
    """What is at ~/rel_path, like lstat; a missing parent means missing.

    Raises UnsafePath when a parent folder is a symbolic link or not a folder
    (the final component is reported as kind "symlink"/"other", not raised).
    """
    parts = split_path(rel_path)
    parent = walk(account, parts[:-1], create=False)
    if parent is None:
        return MISSING
    try:
        st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return MISSING
    except OSError as exc:
        raise HomeFsError(f"cannot inspect {shown(rel_path)}: {exc.strerror}") from None
    finally:
        os.close(parent)
    return _state(st)


def _owner_text(uid: int) -> str:
    return "root" if uid == 0 else f"uid {uid}"


def _require_owner(st: os.stat_result, account: Account, display: str, verb: str) -> None:
    """Raise UnsafePath unless the opened object already belongs to the person."""
    if st.st_uid != account.uid:
        raise UnsafePath(f"{display} is owned by {_owner_text(st.st_uid)}, not by {account.name}; refusing to "
                         f"{verb} it (root gives a person only what it has just created: remove it, "
                         f"or chown it to {account.name} yourself)")


def is_half_made(state: EntryState) -> bool:
    """Whether an entry looks like what a run killed between create and chown leaves (see above).

    Decided from lstat-like facts; the descriptor check in _half_made is the one that counts."""
    if state.uid != 0 or os.geteuid() != 0:
        return False
    if state.kind == "directory":  # made 0700 (less under a umask), and nothing in it yet
        return state.nlink == 2 and not state.mode & 0o077
    return state.kind == "file" and state.nlink == 1 and not state.mode & 0o177 and state.size == 0


def _half_made(fd: int, st: os.stat_result) -> bool:
    """is_half_made, checked on the opened descriptor: an empty folder, or an empty plain file."""
    if not is_half_made(_state(st)):
        return False
    return not stat.S_ISDIR(st.st_mode) or not os.listdir(fd)


def fix_descriptor(fd: int, account: Account, mode: int, display: str) -> None:
    """Group and mode of an object the person already owns, or a half-made one of root's (on the descriptor)."""
    st = os.fstat(fd)
    if not _half_made(fd, st):
        _require_owner(st, account, display, "change")
    try:
        if (st.st_uid, st.st_gid) != (account.uid, account.gid):
            os.fchown(fd, account.uid, account.gid)
        # After fchown: changing the owner may clear set-id bits, so the mode is set last.
        if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
            os.fchmod(fd, mode)
    except OSError as exc:
        raise HomeFsError(f"cannot set owner and mode of {display}: {exc.strerror}") from None


def ensure_directory(account: Account, rel_path: str, mode: int = 0o700) -> None:
    """Make ~/rel_path a folder owned by the user with `mode`.

    Missing intermediate folders are created (owned by the user, 0700);
    existing intermediate folders keep their mode.
    """
    parts = split_path(rel_path)
    parent = walk(account, parts[:-1], create=True)
    assert parent is not None
    try:
        display = shown(rel_path)
        fd = _open_dir(parent, parts[-1], display)
        if fd is None:
            fd = _make_dir(parent, parts[-1], display, account, mode)
    finally:
        os.close(parent)
    try:
        fix_descriptor(fd, account, mode, display)
    finally:
        os.close(fd)


def write_private_file(account: Account, rel_path: str, data: bytes, mode: int = 0o600, *,
                       durable: bool = True) -> None:
    """Atomically make ~/rel_path a fresh regular file holding `data`, owned by the user.

    A new temporary file in the same folder (O_CREAT|O_EXCL|O_NOFOLLOW) gets
    owner, mode and data, is fsynced, and is renamed over the old entry via
    folder descriptors. With `durable=False` both fsyncs are left to the
    caller, who must flush later (one os.sync() for a whole batch of files). An existing symbolic or hard link at rel_path is
    replaced, never written through: whatever it points to stays untouched.
    Missing parent folders are created as in ensure_directory's intermediates.
    """
    parts = split_path(rel_path)
    display = shown(rel_path)
    parent = walk(account, parts[:-1], create=True)
    assert parent is not None
    leaf = parts[-1]
    temp = f".{leaf}.tmp-{secrets.token_hex(8)}"  # is_temp_of must match this
    try:
        try:
            existing = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise UnsafePath(f"{display} is a folder, not a file; refusing to replace it")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=parent)
        except OSError as exc:
            raise HomeFsError(f"cannot create a temporary file next to {display}: {exc.strerror}") from None
        try:
            try:
                os.fchown(fd, account.uid, account.gid)
                os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, leaf, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException as exc:
            try:
                os.unlink(temp, dir_fd=parent)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise HomeFsError(f"cannot write {display}: {exc.strerror}") from None
            raise
        if durable:
            os.fsync(parent)
    finally:
        os.close(parent)


_TEMP_SUFFIX = re.compile(r"\.tmp-[0-9a-f]{16}")


def is_temp_of(name: str, leaf: str) -> bool:
    """Whether `name` is one of write_private_file's temporary names for a file named `leaf`."""
    prefix = f".{leaf}"
    return name.startswith(prefix) and _TEMP_SUFFIX.fullmatch(name[len(prefix):]) is not None


def remove_stale_temps(account: Account, rel_path: str) -> int:
    """Remove the temporary files a killed write_private_file left next to ~/rel_path; return how many.

    A temporary token file holds a live token, so none may outlive the run
    that wrote it. Only our own names for this very file, only regular files,
    unlinked through the folder's descriptor (a name is removed, never
    followed). A folder that is missing or unsafe to open is left alone.
    """
    parts = split_path(rel_path)
    try:
        parent = walk(account, parts[:-1], create=False)
    except HomeFsError:
        return 0
    if parent is None:
        return 0
    removed = 0
    try:
        for name in os.listdir(parent):
            if not is_temp_of(name, parts[-1]):
                continue
            try:
                if stat.S_ISREG(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                    os.unlink(name, dir_fd=parent)
                    removed += 1
            except OSError:
                continue
    except OSError:
        return removed
    finally:
        os.close(parent)
    return removed


def _open_leaf(parent: int, leaf: str, display: str) -> int | None:
    """The entry `leaf` opened read-only without following a link; None when missing."""
    try:
        return os.open(leaf, _LEAF_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{display} is a symbolic link; refusing to follow it") from None
        if exc.errno in (errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP):
            raise UnsafePath(f"{display} is a special file; refusing to use it") from None
        raise HomeFsError(f"cannot open {display}: {exc.strerror}") from None


def _open_regular(account: Account, rel_path: str, verb: str) -> int | None:
    """An fd of ~/rel_path opened without following links, or None when it (or a parent) is missing.

    Raises UnsafePath when it is a symbolic link, not a regular file, or has
    more than one hard link (possibly a link to someone else's file).
    """
    parts = split_path(rel_path)
    display = shown(rel_path)
    parent = walk(account, parts[:-1], create=False)
    if parent is None:
        return None
    try:
        fd = _open_leaf(parent, parts[-1], display)
    finally:
        os.close(parent)
    if fd is None:
        return None
    try:
        require_plain_file(fd, account, display, verb)
    except BaseException:
        os.close(fd)
        raise
    return fd


def require_plain_file(fd: int, account: Account, display: str, verb: str, *,
                        half_made_ok: bool = False) -> os.stat_result:
    """Raise UnsafePath unless `fd` is a regular file of the person's with one link (a second may be
    planted). Checked on the descriptor, after opening: a name may point elsewhere by now."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(f"{display} is {_describe_kind(_state(st).kind)}, not a regular file; refusing to {verb} it")
    if st.st_nlink > 1:
        raise UnsafePath(f"{display} has {st.st_nlink} hard links (one may be planted); refusing to {verb} it")
    if not (half_made_ok and _half_made(fd, st)):
        _require_owner(st, account, display, verb)
    return st


def _read_to_end(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def read_private_file(account: Account, rel_path: str, max_bytes: int = 65536) -> bytes | None:
    """The bytes of ~/rel_path, or None when it (or a parent) is missing.

    Raises UnsafePath when it is a symbolic link, not a regular file, has
    more than one hard link (possibly a link to someone else's file), or
    holds more than `max_bytes`.
    """
    display = shown(rel_path)
    fd = _open_regular(account, rel_path, "read")
    if fd is None:
        return None
    try:
        data = _read_to_end(fd, max_bytes + 1)
        if len(data) > max_bytes:
            raise UnsafePath(f"{display} is larger than {max_bytes} bytes; refusing to read it")
        return data
    except OSError as exc:
        raise HomeFsError(f"cannot read {display}: {exc.strerror}") from None
    finally:
        os.close(fd)


def read_private_tail(account: Account, rel_path: str, max_bytes: int = 65536) -> bytes | None:
    """The last `max_bytes` of ~/rel_path (a log), read like read_private_file; None when missing."""
    display = shown(rel_path)
    fd = _open_regular(account, rel_path, "read")
    if fd is None:
        return None
    try:
        size = os.fstat(fd).st_size
        os.lseek(fd, max(0, size - max_bytes), os.SEEK_SET)
        return _read_to_end(fd, max_bytes)
    except OSError as exc:
        raise HomeFsError(f"cannot read {display}: {exc.strerror}") from None
    finally:
        os.close(fd)


def fix_owner_mode(account: Account, rel_path: str, mode: int) -> None:
    """Give the existing file or folder ~/rel_path, which the person owns, their group and `mode`.

    Acts through a descriptor opened without following links. A symbolic
    link, a special file, a regular file with more than one hard link, or
    anything the person does not own (checked on the descriptor) is refused
    with UnsafePath; a missing entry raises HomeFsError.
    """
    parts = split_path(rel_path)
    display = shown(rel_path)
    parent = walk(account, parts[:-1], create=False)
    if parent is None:
        raise HomeFsError(f"{display} does not exist")
    try:
        try:
            before = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            raise HomeFsError(f"{display} does not exist") from None
        kind = _state(before).kind
        if kind not in ("file", "directory"):
            raise UnsafePath(f"{display} is {_describe_kind(kind)}; refusing to change it")
        fd = _open_leaf(parent, parts[-1], display)
        if fd is None:
            raise HomeFsError(f"{display} disappeared while it was being changed")
    finally:
        os.close(parent)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise UnsafePath(f"{display} changed while it was being checked; refusing to change it")
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            raise UnsafePath(f"{display} has {st.st_nlink} hard links (one may be planted); refusing to change it")
        fix_descriptor(fd, account, mode, display)
    finally:
        os.close(fd)
