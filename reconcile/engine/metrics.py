"""Prometheus node_exporter textfile: rendering (pure) and the atomic write.

Follows the text exposition format (HELP and TYPE lines, label values escaped)
and node_exporter's advice to write a temp file and rename it into place, so a
scrape never sees half a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reconcile.common.atomicfile import make_folders, write_atomically

SYNC_RESULTS = ("OK", "RECOVERED", "SKIP", "FAIL")

# (name, help) of every family written; tests and the alert rules check against this.
FAMILIES: tuple[tuple[str, str], ...] = (
    ("claude_auth_user_enabled",
     "1 when the roster user has claude_auth and is not parked (its sync should run), else 0."),
    ("claude_auth_sync_last_success_timestamp_seconds",
     "Time of the last sync that ended OK or RECOVERED."),
    ("claude_auth_sync_last_run_timestamp_seconds", "Time of the last sync run, whatever its result."),
    ("claude_auth_sync_last_result", "1 for the result of the last sync run, 0 for the other results."),
    ("claude_auth_token_ttl_seconds",
     "Seconds left on the user's scoped Vault token; 0 when it is dead, missing or unreadable."),
    ("claude_auth_backup_timestamp_seconds", "Time of the latest Claude login backup in Vault (backed_up_at)."),
    ("claude_auth_setup_token_expiry_timestamp_seconds",
     "setup-token mode: when the stored long-lived setup token expires (claude_setup_token_expires_at_ms)."),
    ("claude_auth_login_reauth_deadline_timestamp_seconds",
     "When the person must log in again at the latest: Claude's refreshTokenExpiresAt as their last sync "
     "read it, or the setup token's expiry; absent when unknown."),
    ("claude_auth_host_token_ttl_seconds",
     "Seconds left on this host's host token (what the hourly run mints with); 0 when it is dead or its "
     "file unreadable; absent when the host is not enrolled or Vault could not be asked."),
)
HOST_FAMILY = "claude_auth_host_token_ttl_seconds"


@dataclass(frozen=True)
class UserMetrics:
    user: str
    enabled: bool = False
    last_success: float | None = None
    last_run: float | None = None
    last_result: str | None = None
    token_ttl: float | None = None
    backup_time: float | None = None
    setup_token_expiry: float | None = None
    reauth_deadline: float | None = None


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample(name: str, labels: dict[str, str], value: float) -> str:
    rendered = ",".join(f'{key}="{escape_label_value(val)}"' for key, val in labels.items())
    return f"{name}{{{rendered}}} {value:.17g}"


@dataclass(frozen=True)
class HostMetrics:
    host: str
    host_token_ttl: float | None = None


def render_textfile(rows: list[UserMetrics], host: HostMetrics | None = None) -> str:
    """Every row gets claude_auth_user_enabled; other unknown values are left out rather
    than written as a fake 0."""
    lines: list[str] = []
    for name, help_text in FAMILIES:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        if name == HOST_FAMILY:
            if host is not None and host.host_token_ttl is not None:
                lines.append(_sample(name, {"host": host.host}, float(host.host_token_ttl)))
            continue
        for row in sorted(rows, key=lambda r: r.user):
            labels = {"user": row.user}
            if name == "claude_auth_sync_last_result":
                if row.last_result is not None:
                    for result in SYNC_RESULTS:
                        lines.append(_sample(name, {**labels, "result": result},
                                             1.0 if result == row.last_result else 0.0))
                continue
            value = {
                "claude_auth_user_enabled": 1.0 if row.enabled else 0.0,
                "claude_auth_sync_last_success_timestamp_seconds": row.last_success,
                "claude_auth_sync_last_run_timestamp_seconds": row.last_run,
                "claude_auth_token_ttl_seconds": row.token_ttl,
                "claude_auth_backup_timestamp_seconds": row.backup_time,
                "claude_auth_setup_token_expiry_timestamp_seconds": row.setup_token_expiry,
                "claude_auth_login_reauth_deadline_timestamp_seconds": row.reauth_deadline,
            }[name]
            if value is not None:
                lines.append(_sample(name, labels, float(value)))
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, text: str) -> None:
    """Temp file in the target folder, fsync, rename: a scrape sees the old or the new file."""
    make_folders(path.parent, 0o755)  # node_exporter reads it as another user
    write_atomically(path, text.encode(), 0o644)
