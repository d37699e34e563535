"""Command line: parses arguments, dispatches, maps outcomes to exit codes.

Subcommand modules are imported lazily so `claude-auth sync` does not pay for
jsonschema or jinja2 at start-up.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, NoReturn, Sequence

from reconcile.exitcodes import Exit


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


def _default_roster() -> str:
    return os.environ.get("CLAUDE_AUTH_ROSTER", DEFAULT_ROSTER_PATH)


def _add_roster(p: argparse.ArgumentParser) -> None:
    p.add_argument("--roster", default=None, metavar="PATH",
                   help=f"roster file (default: $CLAUDE_AUTH_ROSTER, else {DEFAULT_ROSTER_PATH})")


def _add_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default="/", metavar="DIR",
                   help="root folder for every local path and for systemctl --root (default: /)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="claude-auth", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("validate", help="check the roster only")
    _add_roster(p)
    p.add_argument("--json", action="store_true", help="print errors as JSON")

    for name, help_text in (("plan", "print every change apply would make; change nothing"),
                            ("apply", "make the changes, printing each as it goes")):
        p = sub.add_parser(name, help=help_text)
        _add_roster(p)
        _add_root(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--diff", action="store_true", help="unified diffs of policy and unit text")
        p.add_argument("--prune", action="store_true",
                       help="also remove what is managed for users no longer in the roster")

    p = sub.add_parser("sync", help="as the user: check the login, back it up, recover it")
    p.add_argument("--user", default=None, metavar="NAME", help="user name (default: the current OS user)")

    p = sub.add_parser("setup-token",
                       help="store a long-lived token from `claude setup-token` (read from stdin) for setup-token mode")
    p.add_argument("--user", default=None, metavar="NAME", help="user name (default: the current OS user; root must name one)")
    p.add_argument("--expires-at", default=None, metavar="DATE",
                   help="the token's expiry as an ISO date (default: now + 365 days)")
    _add_roster(p)

    p = sub.add_parser("status", help="one row per user: policy, token, timer, last sync, backup")
    _add_roster(p)
    _add_root(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--prometheus", default=None, metavar="FILE",
                   help="also write a node_exporter textfile (atomically)")
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
    return flow.main(user=args.user)


def _run_setup_token(args: argparse.Namespace) -> int:
    from reconcile.commands import setup_token_cmd
    return setup_token_cmd.run(args.user, args.expires_at, roster_path=args.roster, default_roster=_default_roster())


def _run_status(args: argparse.Namespace) -> int:
    from reconcile.commands import status_cmd
    return status_cmd.run(args, args.roster or _default_roster())


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "validate": _run_validate,
    "plan": _run_plan,
    "apply": _run_apply,
    "sync": _run_sync,
    "status": _run_status,
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
