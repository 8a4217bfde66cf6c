"""The crash checker's comparison and its confirmed log, without a broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from contract.event import Event
from publisher.check import CheckError, ConfirmedLog, compare, read_confirmed
from publisher.load import generate

WORKLOAD = generate(50, 0.2, 3, seed=1).events
UNIQUE = list({e.key(): e for e in WORKLOAD}.values())


def row(item: Event, **changes: Any) -> dict[str, Any]:
    data = {
        "topic": item.topic,
        "event_id": item.event_id,
        "timestamp": item.timestamp,
        "source": item.source,
        "payload": item.payload,
        "received_at": "2026-01-01T00:00:00Z",
    }
    return {**data, **changes}


def stats_for(stored: list[dict[str, Any]], **counters: int) -> dict[str, Any]:
    topic_counts: dict[str, int] = {}
    for r in stored:
        topic_counts[r["topic"]] = topic_counts.get(r["topic"], 0) + 1
    unique = len(stored)
    base = {"received": unique + 10, "unique_processed": unique, "duplicate_dropped": 10, "invalid": 0}
    return {**base, "conflicts": 0, "topic_counts": topic_counts, **counters}


def test_everything_confirmed_and_stored_is_ok() -> None:
    stored = [row(e) for e in UNIQUE]
    result = compare(WORKLOAD, {e.key() for e in UNIQUE}, stored, stats_for(stored))
    assert result.ok
    assert (result.attempted, result.confirmed, result.stored) == (40, 40, 40)
    assert result.as_dict()["lost"] == 0


def test_a_confirmed_event_missing_from_the_store_is_lost() -> None:
    stored = [row(e) for e in UNIQUE[1:]]
    result = compare(WORKLOAD, {e.key() for e in UNIQUE}, stored, stats_for(stored))
    assert not result.ok
    assert result.lost == [UNIQUE[0].key()]
    assert "lost: " in result.text()


def test_an_unconfirmed_event_may_be_missing_or_stored() -> None:
    stored = [row(e) for e in UNIQUE[:30]]
    confirmed = {e.key() for e in UNIQUE[:20]}
    result = compare(WORKLOAD, confirmed, stored, stats_for(stored))
    assert result.ok
    assert (result.confirmed, result.stored) == (20, 30)


def test_a_stored_event_that_was_never_published_is_unexpected() -> None:
    stranger = row(UNIQUE[0], event_id="never-sent")
    stored = [row(e) for e in UNIQUE] + [stranger]
    result = compare(WORKLOAD, set(), stored, stats_for(stored))
    assert result.unexpected == [(UNIQUE[0].topic, "never-sent")]
    assert not result.ok


def test_a_stored_event_with_other_content_is_altered() -> None:
    stored = [row(e) for e in UNIQUE[1:]] + [row(UNIQUE[0], source="somebody-else")]
    result = compare(WORKLOAD, set(), stored, stats_for(stored))
    assert result.altered == [UNIQUE[0].key()]


def test_payload_key_order_does_not_alter_an_event() -> None:
    first = UNIQUE[0]
    reordered = dict(reversed(list(first.payload.items())))
    stored = [row(e) for e in UNIQUE[1:]] + [row(first, payload=reordered)]
    assert compare(WORKLOAD, set(), stored, stats_for(stored)).ok


@pytest.mark.parametrize(
    ("counters", "error"),
    [
        ({"received": 1}, "received 1 != unique 40"),
        ({"unique_processed": 41, "received": 51}, "unique 41 != 40 counted per topic"),
    ],
)
def test_inconsistent_counters_fail_the_check(counters: dict[str, int], error: str) -> None:
    stored = [row(e) for e in UNIQUE]
    result = compare(WORKLOAD, set(), stored, stats_for(stored, **counters))
    assert not result.counters_consistent
    assert any(error in e for e in result.counter_errors), result.counter_errors


def test_a_topic_count_that_disagrees_with_the_stored_rows_fails_the_check() -> None:
    stored = [row(e) for e in UNIQUE]
    stats = stats_for(stored)
    topic = UNIQUE[0].topic
    stats["topic_counts"] = {**stats["topic_counts"], topic: stats["topic_counts"][topic] - 1, "other": 1}
    result = compare(WORKLOAD, set(), stored, stats)
    assert result.counter_errors == [
        f"topic {topic}: counted {stats['topic_counts'][topic]}, stored {stats['topic_counts'][topic] + 1}"
    ]


def test_confirmed_keys_from_another_workload_are_a_usage_error() -> None:
    with pytest.raises(CheckError, match="not in this workload"):
        compare(WORKLOAD, {("demo.orders", "elsewhere")}, [], stats_for([]))


def test_the_confirmed_log_survives_a_writer_killed_mid_line(tmp_path: Path) -> None:
    path = tmp_path / "confirmed.jsonl"
    log = ConfirmedLog(path)
    log.record(UNIQUE[:2])
    log.close()
    with path.open("a") as out:
        out.write('["demo.orders", "torn')  # what a SIGKILL mid-write leaves
    log = ConfirmedLog(path)
    log.record(UNIQUE[2:3])
    log.close()
    assert read_confirmed(path) == {e.key() for e in UNIQUE[:3]}


def test_a_file_that_is_not_a_confirmed_log_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_text('{"topic": "a"}\n{"topic": "b"}\n')
    with pytest.raises(CheckError, match="not a confirmed log"):
        read_confirmed(path)
    with pytest.raises(CheckError, match="cannot read"):
        read_confirmed(tmp_path / "missing")
