"""Many independent Vault requests, pipelined on a few keep-alive connections: a fast path only.

Why it exists: a token lookup sent through hvac, requests, urllib3 and
http.client costs about half a millisecond of Python, and threads cannot
share that work out (the GIL), so 10,000 lookups were bound to take several
seconds of client CPU whatever the pool (docs/design.md, "Pipelined
requests"). Written straight to a socket, `depth` requests at a time on each
of `connections` HTTP/1.1 connections, and read back with the C-level
buffered reader, a request costs a few tens of microseconds here and the
server is never idle waiting for the next one.

What it is not: a second Vault client with its own decisions. It only ever
carries requests the caller may send again (reads, and writes that set a
whole value, such as a policy's text), and it answers with what came back:
an `Answer` (status and body, read within `max_body`) or None where nothing
was read whole (refused, reset, timed out, closed, too large, unparsable). The
caller takes the answers it can use and sends every other request again the
ordinary way (reconcile.vault.connection.Connection._call), where the one retry policy decides
about redirects, elections, refusals and outages. No error leaves this
module: any failure of a connection only leaves its unanswered requests None.

Requests carry tokens (in a header or the body); nothing here prints, logs or
raises with a request or an answer in it.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Mapping, Sequence
from urllib.parse import urlsplit

CONNECTIONS_ENV = "CLAUDE_AUTH_VAULT_CONNECTIONS"
"""How many connections to Vault one run uses at once (the pipeline's, and the pool's for the ordinary path); default CONNECTIONS."""
CONNECTIONS = 4
"""A few: enough to keep a server on this 2-core class of machine busy, few enough not to load Vault."""
MAX_CONNECTIONS = 64


def connections(environ: Mapping[str, str] | None = None) -> int:
    """CONNECTIONS, or the environment's value when it is a whole number from 1 to MAX_CONNECTIONS."""
    env = os.environ if environ is None else environ
    text = (env.get(CONNECTIONS_ENV) or "").strip()
    if text.isdigit() and 1 <= int(text) <= MAX_CONNECTIONS:
        return int(text)
    return CONNECTIONS


DEPTH = 16
"""Requests written ahead on one connection before its answers are read."""
BATCH_BYTES = 64 * 1024
"""A batch stays far below a loopback socket's buffers, so writing it never waits on the server
(which may be writing answers nobody reads until the batch is out)."""
MAX_HEAD_LINE = 8 * 1024
MAX_HEAD_LINES = 100
_HEADER_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")
"""Visible ASCII (inner spaces allowed): never a line break that could end a header early."""
_NO_BODY = (204, 304)


@dataclass(frozen=True)
class Request:
    """One request: method, path (already quoted), headers and body (each may hold a token)."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    body: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = field(repr=False)


@dataclass(frozen=True)
class Exchange:
    answers: list[Answer | None] = field(repr=False)
    """One per request, in order: None where no whole answer was read."""
    sent: list[bool] = field(repr=False)
    """One per request: whether it was written to a connection (sent and unanswered, it may still
    have been carried out)."""

    @property
    def sent_count(self) -> int:
        return sum(self.sent)


def is_header_value(value: str) -> bool:
    return _HEADER_VALUE.fullmatch(value) is not None


def encode(request: Request, host: str) -> bytes | None:
    """The request's bytes on the wire; None when a header could not be written safely."""
    lines = [f"{request.method} {request.path} HTTP/1.1", f"Host: {host}"]
    for name, value in request.headers:
        if not is_header_value(value) or not is_header_value(name) or ":" in name:
            return None
        lines.append(f"{name}: {value}")
    if request.body or request.method not in ("GET", "HEAD"):
        lines.append(f"Content-Length: {len(request.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + request.body


def exchange(address: str, requests: Sequence[Request], *, connections: int, depth: int = DEPTH,
             timeout: float, until: float, max_body: int,
             ssl_context: ssl.SSLContext | None = None, server_name: str | None = None) -> Exchange:
    """Send every request on up to `connections` connections, `depth` at a time on each.

    `timeout` bounds each wait on a socket; `until` (time.monotonic()) ends the
    whole exchange: no batch starts after it, and no wait outlasts it.
    """
    parts = urlsplit(address)
    host_name, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.netloc.rpartition("@")[2]  # never a user:password part of the address
    wire = [encode(request, host) for request in requests]
    answers: list[Answer | None] = [None] * len(requests)
    work = _Work([index for index, data in enumerate(wire) if data is not None], depth, connections,
                 total=len(requests))

    def run() -> None:
        try:
            _connection(host_name, port, ssl_context, wire, answers, work, timeout, until, max_body,
                        server_name or host_name)
        except Exception:  # noqa: BLE001 - its requests stay unanswered: the caller asks again
            pass

    workers = [threading.Thread(target=run, name="vault-pipeline", daemon=True)
               for _ in range(max(1, min(connections, len(work.indexes))))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return Exchange(answers=answers, sent=work.sent)


class _Work:
    """The requests still to send, handed out a batch at a time to the connections."""

    def __init__(self, indexes: list[int], depth: int, connections: int, *, total: int) -> None:
        self.indexes = indexes
        self.depth = max(1, depth)
        self.connections = max(1, connections)
        self.next = 0
        self.sent = [False] * total
        self.lock = threading.Lock()

    def take(self, wire: list[bytes | None]) -> list[int]:
        with self.lock:
            # A few requests are shared out among the connections rather than all sent on the first.
            most = min(self.depth, -(-(len(self.indexes) - self.next) // self.connections))
            batch: list[int] = []
            size = 0
            while self.next < len(self.indexes) and len(batch) < most:
                index = self.indexes[self.next]
                data = wire[index]
                length = len(data) if data is not None else 0
                if batch and size + length > BATCH_BYTES:
                    break
                batch.append(index)
                size += length
                self.next += 1
            return batch

    def mark_sent(self, batch: list[int]) -> None:
        for index in batch:  # each index belongs to one batch: no two threads write one item
            self.sent[index] = True


def _connection(host: str, port: int, ssl_context: ssl.SSLContext | None, wire: list[bytes | None],
                answers: list[Answer | None], work: _Work, timeout: float, until: float, max_body: int,
                server_name: str) -> None:
    left = until - time.monotonic()
    if left <= 0:
        return
    sock = socket.create_connection((host, port), timeout=min(timeout, left))
    reader: BinaryIO | None = None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=server_name)
        stream: BinaryIO = sock.makefile("rb", buffering=64 * 1024)  # type: ignore[assignment]
        reader = stream
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return
            batch = work.take(wire)
            if not batch:
                return
            sock.settimeout(min(timeout, left))
            data = b"".join(wire[index] or b"" for index in batch)
            work.mark_sent(batch)
            sock.sendall(data)
            for index in batch:
                left = until - time.monotonic()
                if left <= 0:
                    return
                sock.settimeout(min(timeout, left))
                answer, keep_open = _read_answer(stream, max_body)
                answers[index] = answer
                if not keep_open:
                    return  # what was written after it is not answered on this connection
    finally:
        if reader is not None:
            reader.close()
        sock.close()


class _Unreadable(Exception):
    pass


def _read_answer(reader: BinaryIO, max_body: int) -> tuple[Answer, bool]:
    """One HTTP/1.1 answer, and whether the connection stays open after it."""
    status_line = _line(reader)
    pieces = status_line.split(b" ", 2)
    if len(pieces) < 2 or not pieces[0].startswith(b"HTTP/1.") or not pieces[1].isdigit():
        raise _Unreadable("not an HTTP/1.1 answer")
    status = int(pieces[1])
    length: int | None = None
    chunked = False
    keep_open = pieces[0] == b"HTTP/1.1"
    for _ in range(MAX_HEAD_LINES):
        line = _line(reader)
        if line == b"":
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"content-length":
            if not value.isdigit():
                raise _Unreadable("bad length")
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value == b"chunked"
            if not chunked:
                raise _Unreadable("unknown transfer encoding")
        elif name == b"connection":
            keep_open = keep_open and value != b"close"
    else:
        raise _Unreadable("too many header lines")
    if status in _NO_BODY or 100 <= status < 200:
        body = b""
    elif chunked:
        body = _read_chunked(reader, max_body)
    elif length is not None:
        if length > max_body:
            raise _Unreadable("too large")
        body = _read_exactly(reader, length)
    else:
        raise _Unreadable("an answer without a length ends with its connection")
    return Answer(status=status, body=body), keep_open


def _line(reader: BinaryIO) -> bytes:
    line = reader.readline(MAX_HEAD_LINE + 1)
    if not line.endswith(b"\n") or len(line) > MAX_HEAD_LINE:
        raise _Unreadable("cut short or too long")
    return line.rstrip(b"\r\n")


def _read_exactly(reader: BinaryIO, size: int) -> bytes:
    data = reader.read(size)
    if len(data) != size:
        raise _Unreadable("cut short")
    return data


def _read_chunked(reader: BinaryIO, max_body: int) -> bytes:
    body = bytearray()
    while True:
        size_text = _line(reader).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _Unreadable("bad chunk size") from None
        if size == 0:
            for _ in range(MAX_HEAD_LINES):  # trailers, then the blank line
                if _line(reader) == b"":
                    return bytes(body)
            raise _Unreadable("too many trailer lines")
        if size < 0 or len(body) + size > max_body:
            raise _Unreadable("too large")
        body += _read_exactly(reader, size)
        if _line(reader) != b"":
            raise _Unreadable("bad chunk end")
