"""A real booted systemd for tests: Debian 12 in systemd-nspawn, without systemd on the host.

Three layers:

- The base root file system, built once with debootstrap and cached outside the
  checkout (CLAUDE_AUTH_TEST_CACHE, default /var/cache/claude-auth-test), under a
  name keyed by a hash of everything that shapes it (suite, mirror, package
  list). It is built in a temporary folder and renamed into place only when
  complete, so a killed build is never reused; builds are serialized by a lock
  file, so two test runs do not build it twice.
- Per test run, an overlayfs over the base (the cached tree is never written).
- The machine: `systemd-nspawn --register=no --keep-unit -b --private-network`
  (there is no machined on the host, hence no machinectl), entered with
  `nsenter -t <PID of its init> -a`. Stopped with SIGTERM to nspawn, which is a
  clean poweroff; `stop()` then checks no process of the container is left.

`run_once` runs a command in the (not booted) tree with the host's network,
for installing with pip before the boot.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "libpam-systemd", "python3", "python3-venv", "python3-pip",
            "ca-certificates", "make")
"""systemd and D-Bus to boot; Debian's python3 with venv and pip and make for `make install`."""

HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BUILD_PREFIX = ".build-"
MACHINE_NAME = f"claude-auth-test-{os.getpid()}"
"""Also the hostname inside; one per test process, so two runs do not collide."""
NSENTER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def cache_dir() -> Path:
    return Path(os.environ.get("CLAUDE_AUTH_TEST_CACHE", "/var/cache/claude-auth-test"))


def rootfs_key() -> str:
    """A hash of everything that shapes the base tree: a change of any gives a new cache entry."""
    recipe = json.dumps({"suite": SUITE, "mirror": MIRROR, "variant": VARIANT, "packages": sorted(PACKAGES)},
                        sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def missing_tools() -> list[str]:
    return [tool for tool in ("debootstrap", "systemd-nspawn", "nsenter") if shutil.which(tool) is None]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def base_rootfs(log: Path | None = None) -> Path:
    """The cached base tree, built first if it is not there yet (about 60-90 s)."""
    cache = cache_dir()
    final = cache / f"rootfs-{rootfs_key()}"
    if final.is_dir():
        return final
    with _locked(cache / ".lock"):
        if final.is_dir():  # another run built it while we waited
            return final
        for stale in cache.glob(f"{BUILD_PREFIX}*"):  # left by a killed build: never reused
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=BUILD_PREFIX, dir=cache))
        target = work / "rootfs"
        command = ["debootstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}", SUITE,
                   str(target), MIRROR]
        with open(log or os.devnull, "ab") as out:
            result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    timeout=1800, check=False)
        if result.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            raise RuntimeError(f"debootstrap failed with status {result.returncode}; see {log}")
        os.rename(target, final)  # atomic: the cache holds a complete tree or none
        shutil.rmtree(work, ignore_errors=True)
        return final


@dataclass
class Overlay:
    """A writable overlayfs over the read-only base tree, under `work`."""

    base: Path
    work: Path
    mounted: bool = False

    @property
    def root(self) -> Path:
        return self.work / "merged"

    def mount(self) -> "Overlay":
        for name in ("upper", "overlay-work", "merged"):
            (self.work / name).mkdir(parents=True, exist_ok=True)
        options = f"lowerdir={self.base},upperdir={self.work / 'upper'},workdir={self.work / 'overlay-work'}"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)], check=True,
                       capture_output=True, timeout=60)
        self.mounted = True
        return self

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.root)], check=True, capture_output=True, timeout=60)
            self.mounted = False


def _bind_args(binds: Mapping[str, str], read_only: Mapping[str, str]) -> list[str]:
    return ([f"--bind={host}:{inside}" for inside, host in binds.items()]
            + [f"--bind-ro={host}:{inside}" for inside, host in read_only.items()])


def run_once(root: Path, command: Sequence[str], *, binds: Mapping[str, str] | None = None,
             read_only: Mapping[str, str] | None = None, timeout: float = 600,
             env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run one command in the tree, not booted, sharing the host's network (pip needs PyPI)."""
    setenv = [f"--setenv={name}={value}" for name, value in (env or {}).items()]
    args = ["systemd-nspawn", "-q", "-D", str(root), f"--machine={MACHINE_NAME}", "--register=no", "--keep-unit",
            "--pipe",
            *_bind_args(binds or {}, read_only or {}), *setenv, "--", *command]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          check=False)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def processes_in_namespace(namespace: str) -> list[int]:
    """Every process on the host whose PID namespace is `namespace`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _pid_namespace(int(entry.name)) == namespace:
            found.append(int(entry.name))
    return found


@dataclass
class Machine:
    """A booted container over `root`; `sh` runs a command inside as root."""

    root: Path
    log_path: Path
    binds: Mapping[str, str] = field(default_factory=dict)
    read_only: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    leader: int | None = None
    """The host PID of the container's init (systemd, PID 1 inside)."""
    namespace: str | None = None

    def boot(self, timeout: float = 60) -> "Machine":
        """Start nspawn and wait until systemd inside reports the boot done; on any failure, power off."""
        args = ["systemd-nspawn", "-q", "-D", str(self.root), f"--machine={MACHINE_NAME}", "--register=no",
                "--keep-unit", "-b", "--private-network", *_bind_args(self.binds, self.read_only)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout
            self._find_leader(deadline)
            self._wait_booted(deadline)
        except BaseException:
            self.stop(check=False)
            raise
        return self

    def _find_leader(self, deadline: float) -> None:
        """The init is the first descendant of nspawn in a PID namespace of its own."""
        assert self.process is not None
        own = _pid_namespace(os.getpid())
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited with {self.process.returncode}; see {self.log_path}")
            pending = [self.process.pid]
            while pending:
                pid = pending.pop()
                namespace = _pid_namespace(pid)
                if namespace is not None and namespace != own:
                    self.leader, self.namespace = pid, namespace
                    return
                pending += _children(pid)
            time.sleep(0.05)
        raise RuntimeError(f"no container init appeared in time; see {self.log_path}")

    def _wait_booted(self, deadline: float) -> None:
        while True:
            # "offline" (or no answer) until systemd inside has its bus up; then --wait waits for the boot.
            state = self.sh(["systemctl", "is-system-running", "--wait"], check=False,
                            timeout=max(1.0, deadline - time.monotonic()))
            if state.stdout.strip() not in ("offline", "") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if state.stdout.strip() not in ("running", "degraded"):
            failed = self.sh(["systemctl", "--failed", "--no-pager"], check=False).stdout
            raise RuntimeError(f"the container did not boot: {state.stdout.strip()} {state.stderr.strip()}\n{failed}")

    def sh(self, command: Sequence[str], *, check: bool = True, timeout: float = 120,
           env: Mapping[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `command` in every namespace of the container. `env` is its whole environment (a secret
        goes there, never into the argument list)."""
        if self.leader is None:
            raise RuntimeError("the machine is not booted")
        environment = {"PATH": NSENTER_PATH, "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}
        result = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "--", *command], capture_output=True,
                                text=True, timeout=timeout, env=environment, input=input,
                                stdin=None if input is not None else subprocess.DEVNULL, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def stop(self, timeout: float = 60, *, check: bool = True) -> None:
        """Clean poweroff (SIGTERM to nspawn). With `check`, raises if the container does not go or leaves a
        process behind; without, only makes sure it is gone (cleanup after another failure)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
                if check:
                    raise RuntimeError(f"the container did not power off within {timeout} s; killed") from None
        self.process = None
        if self.namespace is not None:
            left = processes_in_namespace(self.namespace)
            if left and check:
                raise RuntimeError(f"processes left behind by the container: {left}")
