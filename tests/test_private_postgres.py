"""The private PostgreSQL server the database-crash tests use: a SIGKILL of it loses nothing committed."""

from __future__ import annotations

import pytest

from tests.harness.private_postgres import PostgresError, PrivatePostgres


def test_a_private_server_killed_with_sigkill_restarts_with_every_committed_row() -> None:
    server = PrivatePostgres()
    try:
        server.start()
        postmaster = server.pid
        server.create_database("harness")
        server.psql("CREATE TABLE t (n integer PRIMARY KEY)", "harness")
        server.psql("INSERT INTO t SELECT generate_series(1, 1000)", "harness")
        assert server.psql("SHOW synchronous_commit", "harness") == "on"

        server.kill()
        with pytest.raises(PostgresError, match=r"Connection refused|could not connect"):
            server.psql("SELECT 1")
        server.start()

        assert server.pid != postmaster
        assert server.psql("SELECT count(*), sum(n) FROM t", "harness") == "1000|500500"
        assert server.url("harness") == f"postgresql://postgres@127.0.0.1:{server.port}/harness"
    finally:
        server.stop()
    assert not server.root.exists()
