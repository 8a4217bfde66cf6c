"""What every deployable names about the store: its counters.

The DDL, migrations and pragmas belong to the store backends (store/sqlite/, store/postgres/); the
consumer's status file beside the store belongs to contract/status.py.
"""

from __future__ import annotations

COUNTERS = ("received", "unique_processed", "duplicate_dropped", "invalid", "conflicts")
