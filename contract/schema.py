"""What every deployable names about the store: its counters and where the consumer reports its state.

The DDL, migrations and pragmas belong to the store backends (store/sqlite.py, store/postgres.py).
"""

from __future__ import annotations

from pathlib import Path

COUNTERS = ("received", "unique_processed", "duplicate_dropped", "invalid", "conflicts")


def consumer_status_path(db_path: Path) -> Path:
    """Where the consumer reports its state (consuming, store_failing, stopped) for the api's health."""
    return db_path.with_name(db_path.name + ".consumer.json")
