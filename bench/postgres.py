"""The bench's PostgreSQL: a throwaway database per repetition, its counters, and the backends serving it.

The server is `BENCH_POSTGRES_URL` (default: the machine's, postgresql://postgres@127.0.0.1:5432/postgres),
which must let that role create databases. Nothing else on it is touched: each repetition creates a database
with a fresh name and drops it (closing whatever is still connected) when the repetition ends.
"""

from __future__ import annotations

import os
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.broker import BenchError
from contract.config import redact

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CONNECT_TIMEOUT = 10.0


def server_url() -> str:
    return os.environ.get("BENCH_POSTGRES_URL") or DEFAULT_URL


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


class ThrowawayDatabase:
    """`async with ThrowawayDatabase() as db`: db.url names an empty database that is dropped afterwards."""

    def __init__(self, admin_url: str | None = None, template: str | None = None) -> None:
        self.admin_url = admin_url or server_url()
        self.template = template  # a database to start from, copied file by file
        self.name = f"eventagg_bench_{uuid.uuid4().hex[:12]}"
        self.url = _with_database(self.admin_url, self.name)
        self._conn: Any = None  # the bench's own connection to the database: counters, backend pids

    async def __aenter__(self) -> ThrowawayDatabase:
        copied = f' TEMPLATE "{self.template}" STRATEGY FILE_COPY' if self.template else ""
        await self._admin(f'CREATE DATABASE "{self.name}"{copied}')
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.terminate()
        await self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    async def _admin(self, statement: str) -> None:
        try:
            conn = await asyncpg.connect(self.admin_url, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise BenchError(
                f"no PostgreSQL for the bench at {redact(self.admin_url)} (BENCH_POSTGRES_URL): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    async def _connection(self) -> Any:
        if self._conn is None:
            self._conn = await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT)
        return self._conn

    async def counters(self) -> dict[str, int]:
        """The store's counters, or {} before the consumer created its tables."""
        conn = await self._connection()
        try:
            # One row per counter and writer slot (store/postgres/); the sum is the counter.
            rows = await conn.fetch("SELECT name, SUM(value) FROM counter_slots GROUP BY name")
        except asyncpg.UndefinedTableError:
            return {}
        return {str(r[0]): int(r[1]) for r in rows}

    async def backend_pids(self) -> list[int]:
        """The server processes serving this database's other clients (the consumers), not the bench."""
        conn = await self._connection()
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", self.name
        )
        return [int(r[0]) for r in rows]

    async def server_version(self) -> str:
        conn = await self._connection()
        return str(await conn.fetchval("SHOW server_version"))
