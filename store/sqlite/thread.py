"""aiosqlite's private names, in one place: a whole transaction in one call on the connection's thread.

Verified on aiosqlite 0.20-0.22 (`Connection._execute(fn, *args)` queues `fn` on the connection's thread and
`Connection._conn` is its sqlite3 connection). Each `await conn.execute` is a round trip between threads,
and a batch took ~10: one hop saved about 10% of the apply's CPU and wall time per event (bench/README.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import aiosqlite

T = TypeVar("T")


async def on_thread(conn: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(sqlite3_connection, *args)` on aiosqlite's own thread, after whatever is queued there."""
    raw = cast(Any, conn)
    return cast(T, await raw._execute(fn, raw._conn, *args))
