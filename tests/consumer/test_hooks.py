"""The consumer's hooks: one fan-out in order, the tallies they carry, the status file written on state
changes only."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from consumer.handler import Decoded
from consumer.hooks import Commit, Fanout, Hooks, Settlement
from consumer.service import Summary, _settlement
from consumer.status import StatusFile
from contract import status
from store import BatchResult, StoreError

COMMIT = Commit(1, 3, BatchResult(received=3, unique_processed=2, duplicate_dropped=1), 0.01, 1, 2.5)


class Recorder(Hooks):
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def on_commit(self, commit: Commit) -> None:
        self.calls.append(f"{self.name}:{commit.number}")


def test_a_fanout_calls_every_hook_in_order_and_the_base_does_nothing() -> None:
    calls: list[str] = []
    hooks = Fanout(Recorder("a", calls), Hooks(), Recorder("b", calls))

    hooks.on_commit(COMMIT)
    hooks.on_settle(Settlement(2, 1, 0))
    hooks.on_store_error(StoreError("disk I/O error"), 0.5)
    hooks.on_store_ok()

    assert calls == ["a:1", "b:1"]


def test_the_summary_tallies_commits_settlements_and_store_failures() -> None:
    summary = Summary()

    summary.on_store_error(StoreError("disk I/O error"), 0.5)
    assert (summary.commit_failures, summary.backoff) == (1, 0.5)
    summary.on_store_ok()
    summary.on_commit(COMMIT)
    summary.on_settle(Settlement(0, 0, 3))

    assert (summary.messages, summary.batches, summary.redelivered, summary.unsettled) == (3, 1, 1, 3)
    assert summary.backoff == 0
    assert "received=3 unique_processed=2 duplicate_dropped=1" in summary.line()


def test_the_status_file_keeps_when_a_state_began_and_rewrites_only_what_changed(tmp_path: Path) -> None:
    db_path = tmp_path / "events.db"
    hooks = StatusFile(db_path)

    hooks.on_store_error(StoreError("disk I/O error"), 0.5)
    first = status.read(db_path)
    hooks.on_store_error(StoreError("database or disk is full"), 1.0)
    second = status.read(db_path)
    hooks.on_store_ok()
    # The store works, but nothing is subscribed on the broker yet: not `consuming`.
    assert (status.read(db_path).state, status.read(db_path).detail) == (
        "connecting",
        "connecting to the broker",
    )
    hooks.broker(None)

    assert (first.state, first.detail) == ("store_failing", "disk I/O error")
    assert (second.since, second.detail) == (first.since, "database or disk is full")
    assert status.read(db_path).state == "consuming"


def test_the_status_file_says_connecting_with_the_reason_while_nothing_is_subscribed(tmp_path: Path) -> None:
    db_path = tmp_path / "events.db"
    hooks = StatusFile(db_path)
    hooks.on_store_ok()
    hooks.broker(None)
    assert status.read(db_path).state == "consuming"

    hooks.broker("not consuming: the channel closed; reconnecting")
    lost = status.read(db_path)
    hooks.on_store_ok()  # a batch in hand committed meanwhile: still not consuming
    assert status.read(db_path) == lost
    assert (lost.state, lost.detail) == ("connecting", "not consuming: the channel closed; reconnecting")
    # A failing store says more than a missing subscription; once it works, the subscription shows again.
    hooks.on_store_error(StoreError("disk full"), 1.0)
    assert status.read(db_path).state == "store_failing"
    hooks.on_store_ok()
    assert status.read(db_path).state == "connecting"
    hooks.broker(None)
    assert status.read(db_path).state == "consuming"


class Channel:
    def __init__(self, closed: bool) -> None:
        self.is_closed = closed


def delivered(tag: int, channel: Channel, valid: bool = True) -> Decoded:
    message = DeliveredMessage(
        Basic.Deliver("ctag", tag, False, "events", "t"),
        ContentHeader(0, 2, Basic.Properties()),
        b"{}",
        cast(AbstractChannel, channel),
    )
    return Decoded(message, [] if valid else None)


def test_a_settlement_counts_acks_and_rejects_and_only_what_reached_an_open_channel() -> None:
    open_, closed = Channel(False), Channel(True)
    batch = [delivered(1, open_), delivered(2, open_, valid=False), delivered(3, open_)]
    assert _settlement(batch, invalid=1, unsettled=0) == Settlement(2, 1, 0)
    # A reconnect mid-batch: the old channel's deliveries could not be settled, the new one's were.
    mixed = [delivered(7, closed), delivered(8, closed, valid=False), delivered(1, open_), *batch[1:2]]
    assert _settlement(mixed, invalid=2, unsettled=2) == Settlement(1, 1, 2)
