"""A loopback TCP proxy in front of a real server, for fault tests.

It forwards bytes both ways on 127.0.0.1 and can misbehave on command:

- `pass`: forward everything (the default);
- `refuse`: close the listening socket, so connecting is refused (ECONNREFUSED);
- `hang`: accept connections and never answer (TCP open, no reply);
- hold back the reply to a matching request (`hold(match)`): the request
  reaches the server, its answer is kept until `release()`;
- drop the connection after forwarding a matching request (`drop_after(match)`,
  optionally only the Nth such request): the server acts, the client gets no
  answer;
- redirect (`redirect(location)`): answer every request with a 307 naming
  `location` without forwarding it, as a standby does during a leader election.

A matching request is one whose first line and headers contain the `match`
bytes (for example b"POST /v1/auth/token/create-orphan"). The proxy counts
requests per match (those of `count` too) in `seen`. Hooks let a test act at a
precise moment, each called with the request head and its number:
`on_request` before the request is forwarded, `on_reply` once the server's
answer is in but before the client gets it, `after_reply` once the client has
it. `on_request` and `on_reply` returning False drop the connection instead
(the request never reaches the server; the answer never reaches the client),
so a test can kill a process when the Nth mint is on the wire.

The proxy understands HTTP/1.1 just enough for that: it reads a request head
and its Content-Length body before forwarding, one request at a time per
connection; requests a client pipelines wait their turn (and are counted in
`pipelined`). Threads only; stop() closes everything.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

Hook = Callable[[bytes, int], "bool | None"]


@dataclass
class FaultProxy:
    upstream_port: int
    port: int = 0
    mode: str = "pass"
    """pass | refuse | hang | redirect"""
    hold_match: bytes | None = None
    drop_match: bytes | None = None
    drop_nth: int | None = None
    redirect_to: str = ""
    on_request: Hook | None = None
    on_reply: Hook | None = None
    after_reply: Hook | None = None
    seen: dict[bytes, int] = field(default_factory=dict)
    """Requests that matched `hold_match` or `drop_match`, or a key of `count`, by match."""
    count: tuple[bytes, ...] = ()
    pipelined: int = 0
    """Requests that had already arrived, behind an earlier one, before its answer was sent."""
    _released: threading.Event = field(default_factory=threading.Event)
    _listener: socket.socket | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sockets: set[socket.socket] = field(default_factory=set)
    _stopped: bool = False

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- control ---------------------------------------------------------------------

    def start(self) -> "FaultProxy":
        self._listen()
        return self

    def stop(self) -> None:
        self._stopped = True
        self._released.set()
        self._close_listener()
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            _close(sock)

    def passthrough(self) -> None:
        self.hold_match = self.drop_match = None
        self._released.set()
        self._set_mode("pass")

    def refuse(self) -> None:
        """Connections are refused; open ones are cut."""
        self._set_mode("refuse")
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            _close(sock)

    def hang(self) -> None:
        self._set_mode("hang")

    def redirect(self, location: str) -> None:
        self.redirect_to = location
        self._set_mode("redirect")

    def hold(self, match: bytes) -> None:
        self._released.clear()
        self.hold_match = match

    def release(self) -> None:
        self._released.set()

    def drop_after(self, match: bytes, nth: int | None = None) -> None:
        """Drop the connection after forwarding each matching request (only the `nth` one, if given)."""
        self.drop_match = match
        self.drop_nth = nth

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- machinery -------------------------------------------------------------------

    def _set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode == "refuse":
            self._close_listener()
        elif self._listener is None and not self._stopped:
            self._listen()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        self.port = listener.getsockname()[1]
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            _close(listener)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            # As Go's servers do: without it a pipelining client's delayed ACK holds each small
            # answer back behind Nagle's algorithm (40 ms a batch), which no real Vault does.
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        pending = bytearray()
        try:
            while not self._stopped:
                ahead = bool(pending)
                request = _read_request(client, pending)
                if request is None:
                    return
                if ahead:
                    with self._lock:
                        self.pipelined += 1
                if self.mode == "hang":
                    while not self._stopped and self.mode == "hang":
                        time.sleep(0.05)
                    return  # never answered: the client has given up by now
                if self.mode == "redirect":
                    client.sendall(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: " + self.redirect_to.encode()
                                   + request.split(b" ", 2)[1] + b"\r\nContent-Length: 0\r\n\r\n")
                    continue
                head = request.split(b"\r\n\r\n", 1)[0]
                number = self._note(head)
                if self.on_request is not None and self.on_request(head, number) is False:
                    return
                if upstream is None:
                    upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
                    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self._track(upstream)
                upstream.sendall(request)
                if (self.drop_match is not None and self.drop_match in head
                        and self.drop_nth in (None, number)):  # this request's number, not a later count
                    _read_reply(upstream)  # the server has acted; its answer goes nowhere
                    return
                reply = _read_reply(upstream)
                if reply is None:
                    return
                if self.hold_match is not None and self.hold_match in head:
                    self._released.wait()
                    if self._stopped:
                        return
                if self.on_reply is not None and self.on_reply(head, number) is False:
                    return
                client.sendall(reply)
                if self.after_reply is not None:
                    self.after_reply(head, number)
        except OSError:
            return
        finally:
            _close(client)
            if upstream is not None:
                _close(upstream)

    def _note(self, head: bytes) -> int:
        number = 0
        for match in {m for m in (self.hold_match, self.drop_match, *self.count) if m}:
            if match in head:
                with self._lock:
                    self.seen[match] = self.seen.get(match, 0) + 1
                    number = max(number, self.seen[match])
        return number


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _read_head(sock: socket.socket, buffer: bytearray) -> bytes | None:
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer.extend(chunk)
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    del buffer[:end]
    return head


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None


def _read_exactly(sock: socket.socket, buffer: bytearray, size: int) -> bytes | None:
    while len(buffer) < size:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer.extend(chunk)
    body = bytes(buffer[:size])
    del buffer[:size]
    return body


def _read_request(sock: socket.socket, buffer: bytearray) -> bytes | None:
    """One request; what the client sent beyond it (pipelined requests) stays in `buffer`."""
    head = _read_head(sock, buffer)
    if head is None:
        return None
    body = _read_exactly(sock, buffer, _content_length(head) or 0)
    return None if body is None else head + body


def _read_reply(sock: socket.socket) -> bytes | None:
    """One reply: a Content-Length body, or a chunked one read to its last chunk."""
    buffer = bytearray()
    head = _read_head(sock, buffer)
    if head is None:
        return None
    length = _content_length(head)
    if length is not None:
        body = _read_exactly(sock, buffer, length)
        return None if body is None else head + body
    if b"chunked" not in head.lower():
        return head
    body = bytearray()
    while True:
        while b"\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            buffer.extend(chunk)
        line_end = buffer.index(b"\r\n")
        size = int(bytes(buffer[:line_end]).split(b";")[0], 16)
        data = _read_exactly(sock, buffer, line_end + 2 + size + 2)
        if data is None:
            return None
        body.extend(data)
        if size == 0:
            return head + bytes(body)
