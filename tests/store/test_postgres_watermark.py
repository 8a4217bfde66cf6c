"""The PostgreSQL reader's watermark: the 64-bit id of a running writer from the 32-bit one it shows."""

from __future__ import annotations

from store.postgres.reader import full_xid

EPOCH = 1 << 32


def test_a_writer_older_than_the_last_finished_transaction_is_in_the_same_epoch() -> None:
    assert full_xid(5 * EPOCH + 1000, 990) == 5 * EPOCH + 990


def test_a_writer_newer_than_the_last_finished_transaction_is_in_the_same_epoch_too() -> None:
    # Snapshot xmax is one past the newest finished transaction: a running writer may be above it.
    assert full_xid(5 * EPOCH + 1000, 1003) == 5 * EPOCH + 1003


def test_around_a_wraparound_the_nearest_epoch_is_taken() -> None:
    assert full_xid(5 * EPOCH + 5, EPOCH - 10) == 5 * EPOCH - 10
    assert full_xid(5 * EPOCH - 5, 3) == 5 * EPOCH + 3
