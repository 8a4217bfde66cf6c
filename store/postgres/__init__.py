"""The PostgreSQL backend through asyncpg: schema and migrations, writers (several at once), reader."""

from store.postgres.reader import PostgresReader
from store.postgres.schema import SCHEMA_VERSION, SLOTS, WRITER_APPLICATION
from store.postgres.writer import PostgresWriter

__all__ = ["SCHEMA_VERSION", "SLOTS", "WRITER_APPLICATION", "PostgresReader", "PostgresWriter"]
