"""Placeholder; see the next commit."""
