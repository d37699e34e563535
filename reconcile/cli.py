"""Command line: parses arguments, dispatches, maps outcomes to exit codes.

Subcommand modules are imported lazily so `claude-auth sync` does not pay for
jsonschema or jinja2 at start-up (nor importlib.metadata: --version looks the
version up only when asked). The help text is written for the people who run
the tool (DESCRIPTION, EPILOG, COMMAND_HELP), not taken from docstrings.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, NoReturn, Sequence

from reconcile.common.exitcodes import Exit


# Here rather than in reconcile.roster: `sync` must not pay for importing the roster types.
DEFAULT_ROSTER_PATH = "/etc/claude-auth/roster.yaml"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; 2 means 'changes pending' here."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: error: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise SystemExit(Exit.USAGE if status else Exit.OK)


# What `claude-auth --help` tells a user; the module docstring above is for contributors.
DESCRIPTION = """\
Keeps each person's Claude Code login on a shared Linux workstation valid,
recoverable and isolated. An administrator lists the people in a roster;
`apply` gives each of them a Vault policy and a scoped Vault token, the
folders in their home and a timer; every few hours that timer runs `sync` as
the person, which proves their login works, backs it up to their own Vault
path and restores it when it breaks."""

EPILOG = """\
usual order: edit the roster, `claude-auth validate`, `claude-auth plan`, then
`claude-auth apply` as root with an admin Vault token (VAULT_TOKEN or
~/.vault-token), once per host: it enrolls the host. An hourly timer then runs
`apply` without one, minting with the host's own token; after a roster change
an admin runs `claude-auth apply --vault-only` once, from anywhere.

exit status: 0 success; 1 an error (invalid roster, Vault unreachable, a
failed change); 2 `plan` only: changes are pending; 64 a bad command line.

environment: VAULT_ADDR (or vault.address in the roster), VAULT_TOKEN,
VAULT_CACERT, CLAUDE_AUTH_ROSTER (the roster's path), CLAUDE_AUTH_NO_ADMIN=1
(run without an admin token, as the hourly timer does).

`claude-auth COMMAND --help` says more about each command."""

# (name, one line for the command list, what `claude-auth NAME --help` says)
COMMAND_HELP: dict[str, tuple[str, str]] = {
    "validate": (
        "check the roster and list every problem in it",
        "Check the roster file: its YAML, every field, user names and durations.\n"
        "Prints every problem with its file, line and field, or `valid, N users`.\n"
        "Reads nothing but the roster (no Vault, no homes); anyone may run it.\n"
        "Exit 0 when it is valid, 1 when it is not."),
    "plan": (
        "show what apply would change, changing nothing",
        "Compare the roster with Vault (policies, tokens), each person's home\n"
        "(folders, token file) and systemd (units, timers), and print every\n"
        "change `apply` would make: `+` add, `~` change, `-` remove, `!` left\n"
        "over from someone no longer in the roster. People come in name order,\n"
        "each with all of their changes, then the units everyone shares.\n"
        "Changes nothing. Exit 0: nothing to do; 2: changes are pending; 1: an error."),
    "apply": (
        "make the changes plan shows",
        "Make Vault, the homes and systemd match the roster, and print each change\n"
        "as it is made (in the order they must be made: policies, folders, tokens,\n"
        "token files, units, timers). Run as root. With an admin Vault token it\n"
        "also writes policies and mints tokens; without one (CLAUDE_AUTH_NO_ADMIN=1,\n"
        "as the hourly timer runs it) it renews tokens, repairs folders, units and\n"
        "timers, and prints a WARN line for each change only an admin can make.\n"
        "The first admin apply on a host enrolls it: a token role and a host token\n"
        "in /etc/claude-auth/host-token, with which the hourly run mints, re-mints\n"
        "and rotates its own people's tokens. --vault-only (admin, anywhere, no\n"
        "--root): only Vault, for the whole roster: policies and every enrolled\n"
        "host's role.\n"
        "Exit 0 when everything needed was done, 1 when a change failed."),
    "sync": (
        "check, back up and if needed restore your Claude login (your timer runs it)",
        "Run as the person, normally by their claude-auth-sync@USER.timer: prove\n"
        "the Claude login works with one tiny request, back it up to the person's\n"
        "own Vault path, and on an authentication failure restore the last backup\n"
        "and try again. Prints one line, OK, RECOVERED, SKIP or FAIL with the\n"
        "reason, also kept in ~/.local/state/claude-auth-sync/sync.log.\n"
        "In setup-token mode (the roster's claude_login) it installs the person's\n"
        "stored setup token instead, proves it, and leaves the OAuth backup alone.\n"
        "Exit 0 for OK, RECOVERED and SKIP; 1 for FAIL."),
    "setup-token": (
        "store your token from `claude setup-token` (setup-token mode)",
        "For people in setup-token mode (claude_login: setup-token in the roster),\n"
        "who run many Claude sessions at once. Run `claude setup-token`, then type\n"
        "its token, or all it printed, at the prompt (not shown), or pipe it in:\n"
        "`claude setup-token | claude-auth setup-token` (its 'valid for' sets the\n"
        "expiry). It is never taken from the command line. The token is checked (sk-ant-oat01-...),\n"
        "proven with one tiny request, and stored at the person's own Vault path\n"
        "with its expiry; the next sync installs it. Run it as the person (their\n"
        "own Vault token file), or as root with --user and an admin Vault token.\n"
        "Nothing is stored unless every check passes.\n"
        "Exit 0 when stored, 1 when not, 64 for a bad command line."),
    "whoami": (
        "your own login: its state, deadlines, last sync, backup, and the next step",
        "Run as yourself, no root and no roster needed: your login mode, when your\n"
        "access token expires and when you must log in again (when Claude says),\n"
        "your last sync and your backup's version, your Vault token's time left,\n"
        "whether your sync timer and backup-on-change unit are on, and the one\n"
        "command to run next when there is one. Nothing secret is shown.\n"
        "Vault is asked only for the backup and the token's TTL."),
    "status": (
        "one row per person: token, timer, last sync, backup",
        "Print one row per person in the roster: whether they are enabled, their\n"
        "policy, their token and its time left, their timer, the last sync result\n"
        "and the latest backup, and why a cell is empty; then the login mode of\n"
        "each person in setup-token mode and their stored token's expiry.\n"
        "--prometheus also writes the same figures for node_exporter's textfile\n"
        "collector."),
    "retire-host": (
        "take a host out of the fleet: revoke its host token, delete its role",
        "With an admin Vault token, from anywhere: revoke every host token this\n"
        "tool minted for HOST and delete HOST's token role and host policy, so\n"
        "nothing can mint with its identity any more. People's tokens minted there\n"
        "are left alone (in a shared home another host may use them); they lapse\n"
        "after token_period unless renewed. Run it again to see it is done.\n"
        "Exit 0 when done, 1 when it failed."),
}


class _Version(argparse.Action):
    """`--version`, looked up only when asked: `sync` starts on every timer run."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:  # noqa: A002 (argparse's name)
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(f"claude-auth {version()}")
        parser.exit()


def version() -> str:
    """The installed distribution's version; the package's own when it is not installed (a checkout)."""
    from importlib import metadata
    try:
        return metadata.version("claude-auth")
    except metadata.PackageNotFoundError:
        from reconcile import __version__
        return __version__


def _default_roster() -> str:
    return os.environ.get("CLAUDE_AUTH_ROSTER", DEFAULT_ROSTER_PATH)


def _add_roster(p: argparse.ArgumentParser) -> None:
    p.add_argument("--roster", default=None, metavar="PATH",
                   help=f"the roster file (default: $CLAUDE_AUTH_ROSTER, else {DEFAULT_ROSTER_PATH})")


def _add_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default="/", metavar="DIR",
                   help="treat DIR as / for every local file and run systemctl --root=DIR, which then "
                        "starts and stops nothing (for images and tests; default: /)")


def _add_command(sub: Any, name: str) -> argparse.ArgumentParser:
    summary, description = COMMAND_HELP[name]
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=description,
                                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="claude-auth", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND",
                                title="commands")

    p = _add_command(sub, "validate")
    _add_roster(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

    for name in ("plan", "apply"):
        p = _add_command(sub, name)
        _add_roster(p)
        _add_root(p)
        p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
        p.add_argument("--diff", action="store_true",
                       help="also show a unified diff of each policy and unit file text that changes")
        p.add_argument("--prune", action="store_true",
                       help="also revoke the token and remove the policy, drop-in and timer of people no "
                            "longer in the roster (their Vault data and home are kept)")
        p.add_argument("--vault-only", action="store_true",
                       help="only Vault, for the whole roster (an admin token, from anywhere): every "
                            "person's policy and every enrolled host's token role; nothing local")

    p = _add_command(sub, "retire-host")
    _add_roster(p)
    p.add_argument("host", metavar="HOST", help="the host's name (as its hourly run names itself)")

    p = _add_command(sub, "sync")
    p.add_argument("--user", default=None, metavar="NAME", help="whose login (default: the user running it)")
    p.add_argument("--backup-only", action="store_true",
                   help="no live check and no restore: back the login up if it is healthy, differs from the "
                        "backup and is not older than it (run by claude-auth-backup@USER.path on each rewrite)")

    p = _add_command(sub, "setup-token")
    p.add_argument("--user", default=None, metavar="NAME",
                   help="whose token (default: the user running it; root must name the person)")
    p.add_argument("--expires-at", default=None, metavar="DATE",
                   help="the token's expiry as an ISO date such as 2027-06-30 (default: 365 days from now)")
    _add_roster(p)

    p = _add_command(sub, "whoami")
    p.add_argument("--user", default=None, metavar="NAME", help="whose login (default: the user running it)")
    p.add_argument("--json", action="store_true", help="print it as JSON on stdout")

    p = _add_command(sub, "status")
    _add_roster(p)
    _add_root(p)
    p.add_argument("--json", action="store_true", help="print the rows as JSON on stdout")
    p.add_argument("--prometheus", default=None, metavar="FILE",
                   help="also write node_exporter textfile metrics to FILE (atomically)")
    return parser


def _run_validate(args: argparse.Namespace) -> int:
    from reconcile.commands import validate
    return validate.run(args.roster or _default_roster(), as_json=args.json)


def _run_plan(args: argparse.Namespace) -> int:
    from reconcile.commands import reconcile_cmd
    return reconcile_cmd.run_plan(args, args.roster or _default_roster())


def _run_apply(args: argparse.Namespace) -> int:
    from reconcile.commands import reconcile_cmd
    return reconcile_cmd.run_apply(args, args.roster or _default_roster())


def _run_sync(args: argparse.Namespace) -> int:
    from reconcile.sync import flow
    return flow.main(user=args.user, backup_only=args.backup_only)


def _run_setup_token(args: argparse.Namespace) -> int:
    from reconcile.commands import setup_token_cmd
    return setup_token_cmd.run(args.user, args.expires_at, roster_path=args.roster, default_roster=_default_roster())


def _run_whoami(args: argparse.Namespace) -> int:
    from reconcile.commands import whoami_cmd
    return whoami_cmd.run(args.user, as_json=args.json)


def _run_retire_host(args: argparse.Namespace) -> int:
    from reconcile.commands import retire_host_cmd
    return retire_host_cmd.run(args.host, args.roster or _default_roster())


def _run_status(args: argparse.Namespace) -> int:
    from reconcile.commands import status_cmd
    return status_cmd.run(args, args.roster or _default_roster())


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "validate": _run_validate,
    "plan": _run_plan,
    "apply": _run_apply,
    "sync": _run_sync,
    "status": _run_status,
    "retire-host": _run_retire_host,
    "whoami": _run_whoami,
    "setup-token": _run_setup_token,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return Exit.USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    return int(COMMANDS[args.command](args))


def main_apply() -> NoReturn:
    """`t3-provision-users`: the compatibility name for `claude-auth apply`."""
    sys.exit(main(["apply", *sys.argv[1:]]))


def main_sync() -> NoReturn:
    """`claude-auth-sync`: the compatibility name for `claude-auth sync`."""
    sys.exit(main(["sync", *sys.argv[1:]]))
