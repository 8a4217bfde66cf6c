"""A throwaway PostgreSQL database per test session on the machine's server, and a fresh schema per test."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

# The server the tests use: trust authentication for user postgres (the machine's, and .ci/run's).
ADMIN_URL = os.environ.get("EVENTAGG_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


class PostgresUnavailable(RuntimeError):
    pass


def with_database(url: str, database: str, query: str = "") -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}", query=query))


async def _admin(*statements: str) -> None:
    try:
        conn = await asyncpg.connect(ADMIN_URL, timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise PostgresUnavailable(f"cannot connect to {ADMIN_URL}: {type(exc).__name__}: {exc}") from exc
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@contextmanager
def session_database() -> Iterator[str]:
    """CREATE DATABASE with a unique name; DROP it (closing what is still connected) afterwards."""
    name = f"eventagg_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(ADMIN_URL, name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def fresh_schema(database_url: str) -> str:
    """A new, empty schema in the session's database; the URL selects it by search_path."""
    schema = f"t_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(database_url, timeout=5)
        try:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        finally:
            await conn.close()

    asyncio.run(create())
    parts = urlsplit(database_url)
    return with_database(database_url, parts.path.lstrip("/"), f"search_path={schema}")
