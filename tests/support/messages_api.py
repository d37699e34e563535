"""A loopback stand-in for the Anthropic Messages API, for the real `claude` CLI.

Answers `POST /v1/messages` by the request's bearer token: a token marked good
gets a reply whose text is AUTH_OK (as SSE when the client streams, JSON
otherwise), a token marked revoked gets a 401 authentication_error, and with
`outage` set every request gets a 500. Only SHA-256 digests of the bearer
tokens it saw are kept, so nothing secret sits in a test's output.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class MessagesApiStandIn:
    def __init__(self, reply_text: str = "AUTH_OK") -> None:
        self.reply_text = reply_text
        self.good_digests: set[str] = set()
        self.outage = False
        """When True every request gets HTTP 500 (an outage, not an auth failure)."""
        self.seen_digests: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def accept(self, token: str) -> None:
        self.good_digests.add(digest(token))

    def revoke(self, token: str) -> None:
        self.good_digests.discard(digest(token))

    def saw(self, token: str) -> bool:
        with self._lock:
            return digest(token) in self.seen_digests

    def start(self) -> "MessagesApiStandIn":
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "MessagesApiStandIn":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # keep test output clean

            def do_GET(self) -> None:  # noqa: N802
                self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": "not here"}})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                auth = self.headers.get("Authorization", "")
                token = auth[7:] if auth.lower().startswith("bearer ") else self.headers.get("x-api-key", "")
                with api._lock:
                    api.seen_digests.append(digest(token))
                if not self.path.startswith("/v1/messages"):
                    self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})
                elif api.outage:
                    self._json(500, {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}})
                elif digest(token) not in api.good_digests:
                    self._json(401, {"type": "error", "error": {"type": "authentication_error",
                                                                "message": "Invalid bearer token"}})
                elif body.get("stream"):
                    self._stream(str(body.get("model", "claude-haiku")))
                else:
                    self._json(200, self._message(str(body.get("model", "claude-haiku"))))

            def _message(self, model: str) -> dict[str, Any]:
                return {
                    "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                    "model": model, "content": [{"type": "text", "text": api.reply_text}],
                    "stop_reason": "end_turn", "stop_sequence": None,
                    "usage": {"input_tokens": 12, "output_tokens": 3},
                }

            def _stream(self, model: str) -> None:
                message = self._message(model)
                events = [
                    ("message_start", {"type": "message_start", "message": {**message, "content": [],
                                                                           "stop_reason": None}}),
                    ("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}}),
                    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": api.reply_text}}),
                    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                    ("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                       "usage": {"output_tokens": 3}}),
                    ("message_stop", {"type": "message_stop"}),
                ]
                payload = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _json(self, status: int, data: dict[str, Any]) -> None:
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler
