"""The host token's file, `<root>/etc/claude-auth/host-token`: one line, root's, 0600.

Root's own folder, but still read through a descriptor opened without following
links and checked after opening (regular, owned by root, no access for group or
others, at most a few KiB): a token file anyone else could have written is not
used. Written atomically (atomicfile: a temporary file made with O_EXCL and
O_NOFOLLOW, renamed over the target), so a reader sees the old token or the new
one. A folder this tool makes is 0700. One that exists (a package ships
`/etc/claude-auth` 0755, and every person's `setup-token` reads the roster in
it) is kept as it is, but it must be root's and writable by nobody else: then
nobody else can replace or remove the file, and the file's own mode keeps it
unread (docs/design.md, "The host token").
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from reconcile.common.atomicfile import make_folders, write_atomically
from reconcile.vault.values import Secret

HOST_TOKEN_FILE = Path("etc/claude-auth/host-token")
MAX_BYTES = 4096


class HostTokenFileError(Exception):
    """The host token file is unsafe or unreadable; the text names the path, never the token."""


def host_token_path(root: Path | str) -> Path:
    return Path(root) / HOST_TOKEN_FILE


def read_host_token(root: Path | str) -> Secret | None:
    """The host token, or None when there is no file. Raises HostTokenFileError."""
    path = host_token_path(root)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HostTokenFileError(f"host token file {path} cannot be opened: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise HostTokenFileError(f"host token file {path} is not a regular file")
        if info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise HostTokenFileError(f"host token file {path} must be owned by root with mode 0600 "
                                     f"(it is uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o}); "
                                     "an admin `claude-auth apply` writes a new one")
        raw = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    text = raw.decode("ascii", "replace").strip()
    if len(raw) > MAX_BYTES or not text or any(ch.isspace() or not ch.isprintable() for ch in text):
        raise HostTokenFileError(f"host token file {path} holds no token")
    return Secret(text)


def write_host_token(root: Path | str, token: Secret) -> None:
    """Replace the host token file (durably). Raises HostTokenFileError."""
    path = host_token_path(root)
    try:
        make_folders(path.parent, 0o700)
        folder = os.lstat(path.parent)
        if not stat.S_ISDIR(folder.st_mode) or folder.st_uid != os.geteuid() or folder.st_mode & 0o022:
            raise HostTokenFileError(f"{path.parent} must be a folder of root's that nobody else may write "
                                     "to; the host token is not written there")
        write_atomically(path, (token.reveal() + "\n").encode("ascii"), 0o600, durable=True)
    except OSError as exc:
        raise HostTokenFileError(f"host token file {path} cannot be written: {exc.strerror or exc}") from None
