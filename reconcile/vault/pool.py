"""A small bounded pool of Vault connections for requests that do not depend on each other.

A no-op run is one token lookup per person, each a loopback round trip that
mostly waits on the server; sent one after another, the run can never beat
that sequential floor. `ordered_map` keeps a few of them in flight at once,
each worker thread on its own client (`Vault.twin`: its own connection,
sharing the run's retry policy, deadline, request count and "Vault is down"
flag), and hands the results back in the input's order, so nothing that is
printed changes. One setting sizes the pool: CONNECTIONS_ENV (default
CONNECTIONS; 1 sends everything on the calling thread, as before).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

from reconcile.vault.client import Vault
from reconcile.vault.pipeline import CONNECTIONS, CONNECTIONS_ENV, MAX_CONNECTIONS, connections

__all__ = ["CONNECTIONS", "CONNECTIONS_ENV", "MAX_CONNECTIONS", "connections", "ordered_map"]

T = TypeVar("T")
R = TypeVar("R")

def ordered_map(vault: Vault, fn: Callable[[Vault, T], R], items: Iterable[T], *, size: int | None = None) -> list[R]:
    """[fn(client, item) for item in items], up to `size` at once (None: `connections()`), in order.

    Each worker thread makes its client once (`vault.twin()`). An exception
    of one call is raised here as the sequential loop would raise it: the
    first in input order (once every call has ended; after a VaultUnreachable
    the shared "down" flag makes the others end at once, unsent).
    """
    work = list(items)
    size = connections() if size is None else size
    if size <= 1 or len(work) <= 1:
        return [fn(vault, item) for item in work]
    local = threading.local()

    def run(item: T) -> R:
        client: Vault | None = getattr(local, "client", None)
        if client is None:
            client = local.client = vault.twin()
        return fn(client, item)

    with ThreadPoolExecutor(max_workers=min(size, len(work)), thread_name_prefix="vault") as pool:
        futures = [pool.submit(run, item) for item in work]
    return [future.result() for future in futures]
