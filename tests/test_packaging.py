"""The built package carries templates/ and schema/, its console scripts, and works outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_ships_templates_schema_and_console_scripts(tmp_path: Path) -> None:
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                            str(REPO)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("claude_auth-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
        archive.extractall(tmp_path / "site")
    for template in ("policy.hcl.j2", "claude-auth-sync@.service.j2", "claude-auth-sync@.timer.j2",
                     "claude-auth-reconcile.service.j2", "claude-auth-reconcile.timer.j2"):
        assert f"reconcile/templates/{template}" in names
    assert "reconcile/schema/roster.schema.json" in names
    for script in ("claude-auth = reconcile.cli:main", "t3-provision-users = reconcile.cli:main_apply",
                   "claude-auth-sync = reconcile.cli:main_sync"):
        assert script in entry_points

    # From the unpacked wheel, far from the checkout: the schema validates and a unit renders.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "PYTHONSAFEPATH": "1"}
    code = ("import reconcile.common.resources as r, reconcile.common.templating as t;"
            "assert str(r.schema_file()).startswith(%r);"
            "print(t.render('claude-auth-sync@.timer.j2', interval='6h', randomized_delay='10m', boot_delay='5min'))"
            % str(tmp_path / "site"))
    rendered = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    assert "OnUnitActiveSec=6h" in rendered.stdout
    validate = subprocess.run([sys.executable, "-m", "reconcile", "validate", "--roster",
                               str(REPO / "roster.example.yaml")], cwd=elsewhere, env=env,
                              capture_output=True, text=True)
    assert validate.returncode == 0, validate.stderr
