"""The only module that runs systemctl.

With a root other than `/` every call is `systemctl --root=DIR ...`, which
works on unit files and links only (no running systemd needed); starting,
stopping and reloading are only for the live root and callers check
is_live_root first. Failures raise SystemdError carrying the command and
its stderr.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Sequence

from reconcile.common import childenv


SYSTEMCTL = "systemctl"
TIMEOUT_SECONDS = 120

ENABLED_STATES = frozenset({"enabled", "enabled-runtime"})
"""is-enabled answers that mean: started at boot through an [Install] link."""

NOT_FOUND = "not-found"
"""is_enabled's answer for a unit whose unit file does not exist."""

_NO_UNIT_FILE = re.compile(r"^Failed to get unit file state for (?P<unit>\S+): No such file or directory$")


class SystemdError(Exception):
    """A systemctl command failed; the message holds the command and its stderr."""


def is_live_root(root: Path) -> bool:
    """Whether `root` is this machine's own root, where systemd runs."""
    return Path(os.path.realpath(root)) == Path("/")


def _root_args(root: Path) -> list[str]:
    return [] if is_live_root(root) else [f"--root={os.path.realpath(root)}"]


def _run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [SYSTEMCTL, *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
                                stdin=subprocess.DEVNULL, check=False, env=childenv.without_vault())
    except FileNotFoundError:
        raise SystemdError(f"{SYSTEMCTL} is not installed (needed for: {' '.join(command)})") from None
    except subprocess.TimeoutExpired:
        raise SystemdError(f"`{' '.join(command)}` did not finish within {TIMEOUT_SECONDS} s") from None
    if check and result.returncode != 0:
        raise SystemdError(_failure(command, result))
    return result


def _failure(command: Sequence[str], result: subprocess.CompletedProcess[str]) -> str:
    detail = result.stderr.strip() or result.stdout.strip() or "no output"
    return f"`{' '.join(command)}` failed with status {result.returncode}: {detail}"


def parse_is_enabled(units: Sequence[str], stdout: str, stderr: str) -> tuple[dict[str, str], list[str]]:
    """Read one `systemctl is-enabled u1 u2 ...` run: (states so far, units still to ask about).

    systemctl prints one state per unit, in order, and stops at the first
    unit without a unit file (reporting it on stderr). That unit is recorded
    as NOT_FOUND and the units after it are returned for another call.
    Raises SystemdError when the output cannot be matched to the units.
    """
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if len(lines) > len(units):
        raise SystemdError(f"systemctl is-enabled printed {len(lines)} states for {len(units)} units: {stdout!r}")
    states = dict(zip(units, lines))
    if len(lines) == len(units):
        return states, []
    failed = units[len(lines)]
    for line in stderr.splitlines():
        match = _NO_UNIT_FILE.match(line.strip())
        if match and match.group("unit") == failed:
            states[failed] = NOT_FOUND
            return states, list(units[len(lines) + 1:])
    raise SystemdError(f"systemctl is-enabled gave no state for {failed}: {stderr.strip() or 'no output'}")


def is_enabled(root: Path, units: Sequence[str]) -> dict[str, str]:
    """The is-enabled state of each unit ("enabled", "disabled", NOT_FOUND, ...), in one call.

    One `systemctl is-enabled` process answers for all units (it exits
    non-zero when any is not enabled; that is not an error). Only a unit
    without a unit file makes systemctl stop early; the rest are then asked
    in a further call.
    """
    remaining = list(units)
    states: dict[str, str] = {}
    while remaining:
        result = _run([*_root_args(root), "is-enabled", *remaining], check=False)
        found, remaining = parse_is_enabled(remaining, result.stdout, result.stderr)
        states.update(found)
    return states


def is_active(units: Sequence[str]) -> dict[str, str]:
    """The live active state of each unit ("active", "inactive", ...), in one call (live root only)."""
    if not units:
        return {}
    result = _run(["is-active", *units], check=False)
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if len(lines) != len(units):
        raise SystemdError(_failure([SYSTEMCTL, "is-active", *units], result))
    return dict(zip(units, lines))


def enable(root: Path, units: Sequence[str]) -> None:
    if units:
        _run([*_root_args(root), "enable", *units])


def disable(root: Path, units: Sequence[str]) -> None:
    if units:
        _run([*_root_args(root), "disable", *units])


def start(units: Sequence[str]) -> None:
    if units:
        _run(["start", *units])


def stop(units: Sequence[str]) -> None:
    if units:
        _run(["stop", *units])


def daemon_reload() -> None:
    _run(["daemon-reload"])
