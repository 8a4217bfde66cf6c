"""The SQLite backend: schema and migrations, the consumer's writer, the api's reader, each connection on a
thread of its own (thread.py).

The writer is imported on first use: it needs numpy (its key filters), which the api never loads.
"""

from typing import TYPE_CHECKING, Any

from store.sqlite.reader import SqliteReader
from store.sqlite.schema import SCHEMA_VERSION, SchemaError, lock_path, open_reader

if TYPE_CHECKING:
    from store.sqlite.writer import SqliteWriter

__all__ = ["SCHEMA_VERSION", "SchemaError", "SqliteReader", "SqliteWriter", "lock_path", "open_reader"]


def __getattr__(name: str) -> Any:
    if name == "SqliteWriter":
        from store.sqlite.writer import SqliteWriter

        return SqliteWriter
    raise AttributeError(name)
