"""Every exit status the command line uses, in one place (the README lists them)."""

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    """Success: valid roster, nothing to do, changes applied, sync OK/RECOVERED/SKIP."""
    ERROR = 1
    """Invalid roster, an error, a failed change, or sync FAIL."""
    CHANGES_PENDING = 2
    """`plan` only: apply would change something."""
    USAGE = 64
    """Bad command line (EX_USAGE from sysexits.h); argparse's own 2 would read as 'changes pending'."""
