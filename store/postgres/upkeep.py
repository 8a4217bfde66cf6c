"""Vacuum and analyze of the PostgreSQL store's tables by the consumer's sweeps, as autovacuum would.

The store turns rows over all the time: KEY_RETENTION deletes keys and a re-send of a forgotten key updates
its row, receipts expire, counters and slots are updated by every batch, and partitions and key buckets come
and go (rows of pg_class, pg_attribute, pg_depend, pg_type...). Dead rows only become free space after a
VACUUM, and new tables only get planner statistics from an ANALYZE. PostgreSQL does both by itself when
`autovacuum` is on, which is the default; a server run with it off (some test and CI setups do) had its
key bucket grow without bound under KEY_RETENTION (event_keys_b0: 117,000 live rows and 210,000 dead after
six minutes of the retention benchmark, and growing). So each sweep does the same for the store's own tables
and for the database's catalogs: a table whose counts (pg_stat_all_tables) pass autovacuum's own thresholds,
read from the server's settings, is vacuumed or analyzed. With autovacuum on, it has usually been there first
and the counts are low; when it is working on a table at that moment, SKIP_LOCKED passes it by.

VACUUM takes SHARE UPDATE EXCLUSIVE, which neither batches (ROW EXCLUSIVE) nor reads (ACCESS SHARE) wait
for; it runs outside any transaction, on the sweep's own connection, throttled by autovacuum's cost delay.
A catalog this role may not vacuum (it does not own the database) is skipped by the server with a warning.
"""

from __future__ import annotations

import logging
from typing import Any, Final

log = logging.getLogger(__name__)

# The store's tables (those of the schema `counter_slots` is in) and the database's own catalogs, with what
# autovacuum's thresholds say each needs: VACUUM for dead rows (or for rows inserted since the last one, which
# sets the visibility map and freezes), ANALYZE for rows changed since the last statistics.
_DUE: Final = """
    SELECT format('%I.%I', s.schemaname, s.relname),
        s.n_dead_tup > current_setting('autovacuum_vacuum_threshold')::float8
                + current_setting('autovacuum_vacuum_scale_factor')::float8 * s.n_live_tup
            OR s.n_ins_since_vacuum > current_setting('autovacuum_vacuum_insert_threshold')::float8
                + current_setting('autovacuum_vacuum_insert_scale_factor')::float8 * s.n_live_tup,
        s.n_mod_since_analyze > current_setting('autovacuum_analyze_threshold')::float8
                + current_setting('autovacuum_analyze_scale_factor')::float8 * s.n_live_tup
    FROM pg_stat_all_tables AS s JOIN pg_class AS c ON c.oid = s.relid
    WHERE c.relkind = 'r' AND NOT c.relisshared
      AND (c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'counter_slots'::regclass)
           OR c.relnamespace = 'pg_catalog'::regnamespace)
    ORDER BY s.n_dead_tup DESC
"""


async def tidy(conn: Any) -> list[str]:
    """Vacuum and analyze the tables that need it; their names. `conn` must not be in a transaction."""
    # This session's own deletes and drops count at once, not when its statistics are next flushed (before
    # PostgreSQL 15 a session's counts were sent at each transaction's end anyway).
    if conn.get_server_version().major >= 15:
        await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SET vacuum_cost_delay = '2ms'")  # autovacuum's default pace
    done = []
    for name, vacuum, analyze in await conn.fetch(_DUE):
        if vacuum:
            await conn.execute(f"VACUUM (SKIP_LOCKED{', ANALYZE' if analyze else ''}) {name}")
        elif analyze:
            await conn.execute(f"ANALYZE (SKIP_LOCKED) {name}")
        else:
            continue
        done.append(str(name))
    if done:
        log.debug("vacuumed or analyzed %s", ", ".join(done))
    return done
