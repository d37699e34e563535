"""The owner record Claude Code 2.1.332 keeps beside its refresh lock, written and judged as Claude does.

Read from the 2.1.332 binary (docs/claude-cli.md): after taking `~/.claude/.oauth_refresh.lock`
Claude writes `~/.claude/.oauth_refresh.lock.owner`, JSON of at most 4 KiB:

    {"pid": 1234, "procStart": "<field 22 of /proc/1234/stat>",
     "pidDomain": "linux:<machine-id>:<readlink /proc/self/ns/pid>",
     "pidSpace": "<hostname>#<readlink /proc/self/ns/pid>",
     "lockBirthtimeMs": <the lock folder's birth time, ms>, "legacyLockBirthtimeMs": <...>}

A Claude that has waited out its retries on a lock whose mtime is still fresh takes it
over early when the record proves the holder gone: same pidDomain and pidSpace as its
own, the record's lockBirthtimeMs equal to the lock folder's birth time, and the pid not
alive (or alive with another start time). Writing the same record lets a Claude take
over the lock of a sync that was killed; judging one the same way lets a sync take over
the lock of a Claude that was killed, and never one whose holder may be alive.

Birth times come from statx(2) (Python 3.11's os.stat has none on Linux). Where the file
system has no birth time, nothing is written and nothing is taken over early: the 60 s
stale rule still holds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

from reconcile.common import boundedjson

OWNER_SUFFIX = ".owner"
RECORD_LIMIT = 4096
_STATX_BTIME = 0x800
_AT_SYMLINK_NOFOLLOW = 0x100
_STATX_SIZE = 256
_BTIME_OFFSET = 80  # struct statx: stx_btime follows 64 bytes of fixed fields and stx_atime


def _load_statx() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.statx
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    function.restype = ctypes.c_int
    return function


_statx = _load_statx()


def birthtime_ms(path: Path) -> float | None:
    """The birth time of `path` (not followed) in ms, computed as Bun computes birthtimeMs; None if unknown."""
    if _statx is None:
        return None
    buffer = ctypes.create_string_buffer(_STATX_SIZE)
    if _statx(-100, os.fsencode(path), _AT_SYMLINK_NOFOLLOW, _STATX_BTIME, buffer) != 0:
        return None
    mask = struct.unpack_from("<I", buffer.raw, 0)[0]
    if not mask & _STATX_BTIME:
        return None
    seconds, nanoseconds = struct.unpack_from("<qI", buffer.raw, _BTIME_OFFSET)
    value = seconds * 1000 + nanoseconds / 1_000_000
    return value if value > 0 else None


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _machine_id() -> str:
    try:
        return Path("/etc/machine-id").read_text().strip()
    except OSError:
        return ""


def pid_domain() -> str:
    return f"linux:{_machine_id()}:{_pid_namespace()}"


def pid_space() -> str:
    namespace = _pid_namespace()
    return socket.gethostname() + (f"#{namespace}" if namespace else "")


def process_start(pid: int) -> str | None:
    """Field 22 (starttime) of /proc/PID/stat, as Claude records it; None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split(" ")
    return fields[19] if len(fields) > 19 else None


def record_path(lock: Path) -> Path:
    return lock.with_name(lock.name + OWNER_SUFFIX)


def write(lock: Path, legacy: Path | None) -> float | None:
    """Write our record for the lock we just took; returns its lockBirthtimeMs (None: not written)."""
    born = birthtime_ms(lock)
    if born is None:
        return None
    record: dict[str, Any] = {"pid": os.getpid(), "pidDomain": pid_domain(), "pidSpace": pid_space(),
                              "lockBirthtimeMs": born}
    start = process_start(os.getpid())
    if start is not None:
        record["procStart"] = start
    legacy_born = birthtime_ms(legacy) if legacy is not None else None
    if legacy_born is not None:
        record["legacyLockBirthtimeMs"] = legacy_born
    target = record_path(lock)
    temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(record).encode())
        finally:
            os.close(fd)
        os.replace(temporary, target)
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        return None
    return born


def read(lock: Path) -> dict[str, Any] | None:
    """The record beside `lock`, when there is one of Claude's shape (at most 4 KiB, as Claude reads it)."""
    try:
        fd = os.open(record_path(lock), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, RECORD_LIMIT + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > RECORD_LIMIT:
        return None
    try:
        record = boundedjson.loads(data)  # the person's own file: no RecursionError from deep nesting
    except boundedjson.JsonProblem:
        return None
    if not isinstance(record, dict):
        return None
    pid, born = record.get("pid"), record.get("lockBirthtimeMs")
    if isinstance(pid, bool) or not isinstance(pid, int) or isinstance(born, bool) \
            or not isinstance(born, (int, float)) or born <= 0:
        return None
    if not all(isinstance(record.get(key), str) for key in ("pidDomain", "pidSpace")):
        return None
    return record


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def holder_gone(lock: Path) -> bool:
    """Whether the record beside `lock` proves its holder gone, by Claude's own rules (see above)."""
    record = read(lock)
    if record is None or record["pidDomain"] != pid_domain() or record["pidSpace"] != pid_space():
        return False
    if birthtime_ms(lock) != record["lockBirthtimeMs"]:
        return False  # the record is of an earlier lock, not this one
    pid = record["pid"]
    if not 1 < pid <= 2**31 - 1:
        return False
    if not _alive(pid):
        return True
    start = record.get("procStart")
    return isinstance(start, str) and process_start(pid) not in (None, start)


def remove_if_ours(lock: Path, born: float | None) -> None:
    """Remove the record beside `lock` if it is the one this process wrote for this lock."""
    record = read(lock)
    if record is None or record["pid"] != os.getpid() or record["lockBirthtimeMs"] != born:
        return
    remove(lock)


def remove(lock: Path) -> None:
    try:
        os.unlink(record_path(lock))
    except OSError:
        pass
