"""claude-auth: keeps each person's Claude Code login valid, recoverable and isolated."""

__version__ = "0.1.0"
