"""The SQLite backend through aiosqlite: schema and migrations, the consumer's writer, the api's reader."""

from store.sqlite.reader import SqliteReader
from store.sqlite.schema import SCHEMA_VERSION, SchemaError, lock_path, open_reader
from store.sqlite.writer import SqliteWriter

__all__ = ["SCHEMA_VERSION", "SchemaError", "SqliteReader", "SqliteWriter", "lock_path", "open_reader"]
