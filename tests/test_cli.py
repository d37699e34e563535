"""The command line reads well: help written for the people who run it, and --version (issue 13)."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import reconcile
from reconcile import cli
from reconcile.cli import COMMAND_HELP, COMMANDS, main
from reconcile.common.exitcodes import Exit

REPO = Path(__file__).resolve().parents[1]


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main([*argv, "--help"]) == Exit.OK
    out, err = capsys.readouterr()
    assert err == ""
    return out


def test_top_level_help_says_what_the_tool_does(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys)
    assert "Keeps each person's Claude Code login on a shared Linux workstation valid" in text
    assert "--version" in text
    assert "exit status: 0 success; 1 an error" in text
    for name, (summary, _) in COMMAND_HELP.items():
        assert f"    {name}" in text and summary.split()[0] in text
    # Not the contributor's module docstring, which it used to show.
    assert "parses arguments, dispatches" not in text and (cli.__doc__ or "").splitlines()[0] not in text


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_has_help_for_its_users(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    summary, description = COMMAND_HELP[command]
    text = _help(capsys, command)
    assert text.startswith(f"usage: claude-auth {command} ")
    assert description.splitlines()[0] in text
    assert len(description.splitlines()) >= 4  # a paragraph, not a phrase
    for lines in (description, summary):
        assert "docstring" not in lines and "dispatch" not in lines


def test_every_command_is_described_and_every_description_is_a_command() -> None:
    assert set(COMMAND_HELP) == set(COMMANDS)


def test_plan_help_states_the_order_it_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert "People come in name order,\neach with all of their changes, then the units everyone shares." \
        in _help(capsys, "plan")


def test_version_comes_from_the_installed_package(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == Exit.OK
    assert capsys.readouterr().out == f"claude-auth {metadata.version('claude-auth')}\n"


def test_version_falls_back_to_the_package_when_not_installed(capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    monkeypatch.setattr(reconcile, "__version__", "9.8.7")
    assert main(["--version"]) == Exit.OK
    assert capsys.readouterr().out == "claude-auth 9.8.7\n"


def test_the_package_and_its_metadata_agree_on_the_version() -> None:
    assert reconcile.__version__ == metadata.version("claude-auth")


def test_version_from_the_installed_script() -> None:
    script = Path(sys.executable).parent / "claude-auth"
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"claude-auth {reconcile.__version__}\n", "")


def test_starting_sync_does_not_import_importlib_metadata() -> None:
    # `sync` runs on every timer tick: parsing its command line must not pay for --version.
    code = ("import sys; from reconcile.cli import build_parser; build_parser().parse_args(['sync']);"
            "sys.exit('importlib.metadata' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60, check=False).returncode == 0


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == Exit.USAGE
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err
