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
from reconcile.local.homefs import TOKEN_FILE, HomeFsError, read_private_file, write_private_file
from reconcile.local.homelock import MINT_LOCK_FILE, LockAllowance, lock_private_file
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


def token_writer(accounts: Mapping[str, Account]) -> TokenWriter:
    """Writes a person's token file (0600, owned by them; the rename replaces, never writes through)."""
    def write_token(user: str, data: bytes, durable: bool) -> None:
        write_private_file(accounts[user], TOKEN_FILE, data, mode=0o600, durable=durable)
    return write_token


MINT_LOCK_TIMEOUT = 20.0
"""Seconds to wait for another host's mint in a shared home (one mint takes milliseconds)."""


def mint_lock(accounts: Mapping[str, Account], allowance: LockAllowance) -> MintLock:
    """Holds a person's `mint.lock` for a `with` block, the wait drawn from the run's `allowance`."""
    @contextmanager
    def hold(user: str) -> Iterator[None]:
        fd = lock_private_file(accounts[user], MINT_LOCK_FILE, allowance=allowance, timeout=MINT_LOCK_TIMEOUT)
        try:
            yield
        finally:
            os.close(fd)
    return hold
