"""The Vault side's hands in the homes: reading, writing and locking a person's token file.

The Vault domain (reconcile.vault.observe, apply) takes these as plain
callables (TokenReader, TokenWriter, MintLock) and never imports the local side;
here they are made from the person's Account, through reconcile.local.homefs and
homelock (never following a planted link).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Mapping

from reconcile.local.accounts import Account
from reconcile.local.homefs import TOKEN_FILE, HomeFsError, read_private_file
from reconcile.vault.apply import MintLock, TokenWriter
from reconcile.vault.observe import TokenFileUnreadable, TokenReader


def token_reader(accounts: Mapping[str, Account]) -> TokenReader:
    """Reads a person's token file as root, never following a planted link (homefs)."""
    def read_token(user: str) -> bytes | None:
        try:
            return read_private_file(accounts[user], TOKEN_FILE)
        except HomeFsError as exc:
            raise TokenFileUnreadable(str(exc)) from None
    return read_token
