"""A SQLite connection and the one thread it runs on, with public APIs only (sqlite3, concurrent.futures).

Every statement of the store runs on the connection's own thread, so a commit's fsync never blocks the event
loop; `run(fn, *args)` calls `fn(sqlite3_connection, *args)` there, after whatever was queued before it, and
a whole transaction is one such call: each statement awaited on its own would be a round trip between
threads, and a batch took about 10 (one hop saved about 10% of the apply's CPU and wall time per event,
bench/README.md). This replaces aiosqlite, whose private `_execute` and `_conn` that one call needed.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class SqliteThread:
    """One sqlite3 connection, used only from its thread: calls run one at a time, in the order made."""

    def __init__(self, conn: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        self._conn = conn
        self._executor = executor

    @classmethod
    async def connect(cls, database: str | Path, **kwargs: Any) -> SqliteThread:
        """`sqlite3.connect(database, **kwargs)` on a new thread of its own (sqlite3's errors as raised)."""
        executor = ThreadPoolExecutor(1, thread_name_prefix="eventagg-sqlite")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(
                executor, partial(sqlite3.connect, database, **kwargs)
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(conn, executor)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(connection, *args)` on the connection's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self._conn, *args)

    async def fetchall(self, sql: str, params: Any = ()) -> list[Any]:
        return await self.run(_fetchall, sql, params)

    async def execute(self, sql: str, params: Any = ()) -> None:
        await self.run(_execute, sql, params)

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    async def close(self) -> None:
        try:
            await self.run(sqlite3.Connection.close)
        finally:
            self._executor.shutdown(wait=False)


def _fetchall(conn: sqlite3.Connection, sql: str, params: Any) -> list[Any]:
    return conn.execute(sql, params).fetchall()


def _execute(conn: sqlite3.Connection, sql: str, params: Any) -> None:
    conn.execute(sql, params)


async def on_thread(conn: SqliteThread, fn: Callable[..., T], *args: Any) -> T:
    """`fn(sqlite3_connection, *args)` on the connection's thread (store/sqlite/retention.py's hook)."""
    return await conn.run(fn, *args)
