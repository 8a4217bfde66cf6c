"""The load generator's exact shape and reproducibility, and the NDJSON line parser."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contract.event import EncodedEvent, Event, Limits, decode, encode
from publisher.files import BadLine, parse_line
from publisher.load import EncodedStream, Stream, generate, topic_names

LIMITS = Limits()


# --- generate ----------------------------------------------------------------------------------------------


def test_a_load_has_exactly_the_requested_unique_and_duplicate_counts() -> None:
    load = generate(5000, 0.2, 4, seed=1)

    assert len(load.events) == 5000
    assert load.unique == 4000
    assert load.duplicates == 1000
    assert len({e.key() for e in load.events}) == 4000


@pytest.mark.parametrize(("count", "share", "unique"), [(0, 0.0, 0), (1, 0.0, 1), (10, 0.5, 5), (7, 0.3, 5)])
def test_small_loads_round_the_duplicate_count(count: int, share: float, unique: int) -> None:
    load = generate(count, share, 2, seed=3)

    assert len(load.events) == count
    assert load.unique == unique
    assert len({e.key() for e in load.events}) == unique


def test_every_duplicate_comes_after_its_original_and_repeats_it_verbatim() -> None:
    load = generate(2000, 0.3, 5, seed=2)

    first: dict[tuple[str, str], Event] = {}
    for item in load.events:
        original = first.setdefault(item.key(), item)
        assert item == original
        assert item.content_hash() == original.content_hash()
    # Originals are sent in generation order: each key's first appearance carries the next sequence number.
    assert [e.payload["seq"] for e in first.values()] == list(range(load.unique))


def test_the_same_seed_gives_identical_events() -> None:
    assert generate(500, 0.2, 3, seed=42) == generate(500, 0.2, 3, seed=42)


def test_a_bigger_load_of_a_seed_begins_with_a_smaller_ones_originals() -> None:
    # --check of a bigger workload than was sent relies on it (tests/test_pipeline.py).
    assert generate(101, 0.0, 8, seed=3).events[:100] == generate(100, 0.0, 8, seed=3).events
    originals = [e for e in generate(500, 0.2, 8, seed=3).events if e.payload["seq"] < 100]
    first = {e.key(): e for e in originals}
    assert list(first.values()) == generate(100, 0.0, 8, seed=3).events


def test_the_stream_gives_the_load_one_event_at_a_time_and_counts_as_it_goes() -> None:
    stream = Stream(50, 0.2, 3, seed=9)
    taken = [next(stream) for _ in range(10)]
    assert stream.unique + stream.duplicates == 10
    assert taken + list(stream) == generate(50, 0.2, 3, seed=9).events
    assert (stream.unique, stream.duplicates) == (40, 10)


def test_a_different_seed_gives_different_event_ids() -> None:
    first = {e.event_id for e in generate(500, 0.2, 3, seed=1).events}
    second = {e.event_id for e in generate(500, 0.2, 3, seed=2).events}

    assert first.isdisjoint(second)


@pytest.mark.parametrize("topics", [1, 3, 8, 12])
def test_only_the_named_topics_are_used(topics: int) -> None:
    load = generate(1000, 0.1, topics, seed=5)

    used = {e.topic for e in load.events}
    assert used <= set(topic_names(topics, "demo"))
    assert len(used) == topics


def test_topic_names_are_distinct_valid_and_prefixed() -> None:
    names = topic_names(12, "bench")

    assert len(set(names)) == 12
    assert all(name.startswith("bench.") for name in names)
    assert names[:2] == ["bench.orders", "bench.payments"]
    assert names[8:10] == ["bench.topic8", "bench.topic9"]


# --- the encoded stream (what the CLI sends) ----------------------------------------------------------------

# The first events of seed 1 as the load generator has always made them: a confirmed log written by an earlier
# release is checked (--check) against the load this one rebuilds from the same seed.
SEED_1 = [
    b'{"topic":"demo.payments","event_id":"cd613e30-d8f1-4adf-91b7-584a2265b1f5",'
    b'"timestamp":"2026-01-01T00:00:00Z","source":"loadgen-2","payload":{"seq":0,"level":"debug",'
    b'"message":"generated event 0","latency_ms":1015}}',
    b'{"topic":"demo.inventory","event_id":"a6cecc1b-78e5-4061-b311-d8a3c2ce6f44",'
    b'"timestamp":"2026-01-01T00:00:00.007000Z","source":"loadgen-1","payload":{"seq":1,"level":"debug",'
    b'"message":"generated event 1","latency_ms":1000}}',
    b'{"topic":"demo.inventory","event_id":"63ca828d-d5f4-43b2-a4b0-6ce60741c7a8",'
    b'"timestamp":"2026-01-01T00:00:00.014000Z","source":"loadgen-0","payload":{"seq":2,"level":"error",'
    b'"message":"generated event 2","latency_ms":913}}',
]


def test_a_seed_gives_the_events_it_always_gave() -> None:
    stream = EncodedStream(6, 0.5, 8, seed=1)
    bodies = [item.body for item in stream]

    assert bodies == [SEED_1[0], SEED_1[0], SEED_1[1], SEED_1[1], SEED_1[1], SEED_1[2]]
    assert [e.model_dump_json().encode() for e in generate(6, 0.5, 8, seed=1).events] == bodies


@pytest.mark.parametrize(("count", "duplicates", "topics", "seed"), [(3000, 0.2, 8, 7), (500, 0.5, 12, 2)])
def test_each_encoded_event_is_byte_for_byte_what_its_model_serialises(
    count: int, duplicates: float, topics: int, seed: int
) -> None:
    encoded = list(EncodedStream(count, duplicates, topics, seed, prefix="bench"))
    models = generate(count, duplicates, topics, seed, prefix="bench").events

    assert len(encoded) == len(models) == count
    for item, model in zip(encoded, models, strict=True):
        assert item.body == model.model_dump_json().encode()
        assert item.key() == model.key() == (item.topic, item.event_id)
        assert item.event() == model
    # The consumer decodes them as the events they are, alone and in envelopes of any mix.
    assert decode(encode(encoded[:1]), LIMITS) == models[:1]
    assert decode(encode(encoded[:100]), LIMITS) == models[:100]
    assert encode(encoded[:100]) == encode(models[:100])
    mixed: list[EncodedEvent | Event] = [encoded[0], models[1], encoded[2]]
    assert encode(mixed) == encode(models[:3])


def test_a_re_send_is_the_very_object_of_its_original() -> None:
    stream = EncodedStream(2000, 0.3, 5, seed=4)
    first: dict[tuple[str, str], EncodedEvent] = {}
    for item in stream:
        assert first.setdefault(item.key(), item) is item
        assert stream.position == json.loads(item.body)["payload"]["seq"]
    assert (stream.unique, stream.duplicates) == (1400, 600)


@pytest.mark.parametrize(
    "milliseconds",
    [0, 7, 999, 1_000, 1_001, 59_999, 60_000, 86_399_999, 86_400_000, 86_400_007, 31_535_999_993],
)
def test_generated_timestamps_are_what_the_model_normalises_them_to(milliseconds: int) -> None:
    # Event i is stamped 2026-01-01T00:00:00Z plus 7 ms x i; a day's boundary needs 12 million events, so the
    # formatting is checked at the boundaries directly.
    expected = (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(milliseconds=milliseconds)).isoformat()
    stream = EncodedStream(1, 0.0, 1, seed=0)

    made = stream._timestamp(milliseconds)

    assert made == expected.replace("+00:00", "Z")
    event = Event(topic="t", event_id="i", timestamp=made, source="s")
    assert event.timestamp == made


@pytest.mark.parametrize("prefix", ["no spaces", "x" * 250, "ümlaut", "a/b"])
def test_a_prefix_that_makes_invalid_topic_names_is_refused_before_any_event(prefix: str) -> None:
    with pytest.raises(ValueError, match="invalid topic names"):
        EncodedStream(10, 0.0, 3, seed=1, prefix=prefix)


@pytest.mark.parametrize(
    ("count", "duplicates", "topics"),
    [(-1, 0.0, 1), (10, 1.0, 1), (10, -0.1, 1), (10, 0.2, 0)],
)
def test_impossible_loads_are_refused(count: int, duplicates: float, topics: int) -> None:
    with pytest.raises(ValueError, match="count must be"):
        generate(count, duplicates, topics, seed=0)


# --- parse_line --------------------------------------------------------------------------------------------


def line(**overrides: Any) -> bytes:
    item: dict[str, Any] = {
        "topic": "orders",
        "event_id": "a/1",
        "timestamp": "2026-11-22T10:15:00+01:00",
        "source": "file",
        "payload": {"n": 1},
    }
    item.update(overrides)
    return json.dumps({k: v for k, v in item.items() if v is not ...}).encode() + b"\n"


def test_a_good_line_is_an_event() -> None:
    parsed = parse_line(1, line(), LIMITS)

    assert parsed == Event(
        topic="orders", event_id="a/1", timestamp="2026-11-22T09:15:00Z", source="file", payload={"n": 1}
    )


def test_a_line_with_surrounding_whitespace_is_an_event() -> None:
    parsed = parse_line(1, b"  \t" + line() + b"\r\n", LIMITS)

    assert isinstance(parsed, Event)


@pytest.mark.parametrize("blank", [b"", b"\n", b"   \n", b"\r\n", b"\t"])
def test_a_blank_line_is_skipped(blank: bytes) -> None:
    assert parse_line(3, blank, LIMITS) is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(b"{not json\n", "not valid JSON", id="bad-json"),
        pytest.param(b"\xff\xfe\n", "not valid JSON", id="not-utf8"),
        pytest.param(b'[{"topic": "orders"}]\n', "expected one JSON object per line, got list", id="array"),
        pytest.param(b"42\n", "got int", id="number"),
        pytest.param(line(source=...), "source", id="missing-field"),
        pytest.param(line(topic="a b"), "topic", id="bad-topic"),
        pytest.param(line(payload={"x": "a" * 300}), "over the limit", id="payload-too-large"),
    ],
)
def test_a_bad_line_is_reported_with_its_number(raw: bytes, reason: str) -> None:
    parsed = parse_line(17, raw, Limits(max_payload_bytes=256))

    assert isinstance(parsed, BadLine)
    assert parsed.number == 17
    assert str(parsed).startswith("line 17: ")
    assert reason in str(parsed)


def test_a_line_nested_deeper_than_the_parser_allows_is_a_bad_line() -> None:
    line = b'{"payload": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

    parsed = parse_line(9, line, Limits())

    assert isinstance(parsed, BadLine)
    assert str(parsed).startswith("line 9: not valid JSON")
