"""The load generator: a reproducible stream of events with a given share of re-sent duplicates."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from contract.event import EncodedEvent, Event, is_valid_topic

_LEVELS = ("debug", "info", "info", "info", "warning", "error")
_NAMES = ("orders", "payments", "auth", "search", "billing", "shipping", "inventory", "email")
_START = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Load:
    events: list[Event]  # in sending order, duplicates included
    unique: int

    @property
    def duplicates(self) -> int:
        return len(self.events) - self.unique


def topic_names(count: int, prefix: str) -> list[str]:
    names = [f"{prefix}.{_NAMES[i]}" if i < len(_NAMES) else f"{prefix}.topic{i}" for i in range(count)]
    return names


def split(count: int, duplicates: float, topics: int) -> tuple[int, int]:
    """(unique events, re-sent duplicates) of a load: `round(count * duplicates)` re-sends."""
    if count < 0 or topics < 1 or not 0 <= duplicates < 1:
        raise ValueError("count must be >= 0, topics >= 1 and 0 <= duplicates < 1")
    n_dup = round(count * duplicates)
    n_unique = count - n_dup
    if n_unique == 0 and n_dup:
        raise ValueError("a load needs at least one unique event to duplicate")
    return n_unique, n_dup


def _uuid4_text(bits: int) -> str:
    """`str(uuid.UUID(int=bits, version=4))`, without building the UUID object."""
    h = ((bits & _UUID_CLEAR) | _UUID_SET).to_bytes(16, "big").hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# uuid.UUID(version=4): the variant (RFC 4122) in bits 62-63 and the version in bits 76-79.
_UUID_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))
_UUID_SET = (0x8000 << 48) | (4 << 76)


class EncodedStream:
    """The load one event at a time as `EncodedEvent`s: each original written straight to its wire JSON, the
    bytes `Event.model_dump_json()` gives for it, with no model and no second serialisation (what the CLI
    sends; `Stream` gives the same events as models). Made as it is asked for: a sender starts at once and a
    big load never waits to be generated in full. `unique` and `duplicates` count what it gave so far, and
    `position` is the index among the originals of the event just given.

    Each position holds a re-send with the share of re-sends still to come, never before the first
    original; a re-send repeats an original already given, chosen at random, verbatim. The same arguments
    always give the same events, so a run can be repeated exactly (and `--check` can rebuild it).
    """

    def __init__(self, count: int, duplicates: float, topics: int, seed: int, prefix: str = "demo") -> None:
        self._unique_left, self._dup_left = split(count, duplicates, topics)
        names = topic_names(topics, prefix)
        bad = [name for name in names if not is_valid_topic(name)]
        if bad:
            raise ValueError(f"topic prefix {prefix!r} makes invalid topic names, such as {bad[0]!r}")
        # The originals from one generator, where they fall and what is re-sent from another: the originals
        # of a seed are then the same whatever the count (a bigger load begins with a smaller one's events).
        self._rng = random.Random(seed)
        self._mix = random.Random(f"{seed}/re-sends")
        # `randrange(n)` draws what `randrange(1, n + 1) - 1` and `choice` draw from the same state: the
        # events have always been made with those, so a seed gives the same events as before.
        self._below: Callable[[int], int] = self._rng.randrange
        self._mix_below: Callable[[int], int] = self._mix.randrange
        self._topics = topics
        self._names = names
        # Topic names are JSON strings as they are (letters, digits and `._:-` only); so are the levels.
        self._heads = [f'{{"topic":"{name}","event_id":"' for name in names]
        self._originals: list[EncodedEvent] = []
        self._second = -1  # the whole second of the last timestamp made, and its text
        self._second_text = ""
        self.unique = 0
        self.duplicates = 0
        self.position = -1

    def __iter__(self) -> Iterator[EncodedEvent]:
        return self

    def __next__(self) -> EncodedEvent:
        originals = self._originals
        if not (self._unique_left or self._dup_left):
            raise StopIteration
        if originals and self._dup_left:
            below = self._mix_below
            if below(self._unique_left + self._dup_left) < self._dup_left:
                self._dup_left -= 1
                self.duplicates += 1
                self.position = below(len(originals))
                return originals[self.position]
        self._unique_left -= 1
        i = len(originals)
        # The same draws from the same generator, in the same order, as the events have always been made
        # with: getrandbits(128), randrange(topics), randrange(4), choice(_LEVELS), randrange(1, 2000)
        # (tests/publisher/test_load.py pins a seed's events).
        below = self._below
        event_id = _uuid4_text(self._rng.getrandbits(128))
        topic = below(self._topics)
        source = below(4)
        level = _LEVELS[below(len(_LEVELS))]
        latency = 1 + below(1999)
        body = (
            f'{self._heads[topic]}{event_id}","timestamp":"{self._timestamp(i * 7)}",'
            f'"source":"loadgen-{source}","payload":{{"seq":{i},"level":"{level}",'
            f'"message":"generated event {i}","latency_ms":{latency}}}}}'
        ).encode()
        original = EncodedEvent(self._names[topic], event_id, body)
        originals.append(original)
        self.unique += 1
        self.position = i
        return original

    def _timestamp(self, milliseconds: int) -> str:
        """2026-01-01T00:00:00Z plus `milliseconds`, as `Event` normalises it: whole seconds without a
        fraction, else six digits."""
        second, rest = divmod(milliseconds, 1000)
        if second != self._second:
            self._second = second
            self._second_text = (_START + timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._second_text}.{rest:03d}000Z" if rest else f"{self._second_text}Z"


class Stream:
    """The load of an `EncodedStream` as validated `Event` models, the same events in the same order (each
    original's model made once: a re-send is the very object of its original)."""

    def __init__(self, count: int, duplicates: float, topics: int, seed: int, prefix: str = "demo") -> None:
        self._encoded = EncodedStream(count, duplicates, topics, seed, prefix)
        self._originals: list[Event] = []

    @property
    def unique(self) -> int:
        return self._encoded.unique

    @property
    def duplicates(self) -> int:
        return self._encoded.duplicates

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        item = next(self._encoded)
        position = self._encoded.position
        if position < len(self._originals):
            return self._originals[position]
        original = item.event()
        self._originals.append(original)
        return original


def generate(count: int, duplicates: float, topics: int, seed: int, prefix: str = "demo") -> Load:
    """The whole of a Stream's load at once: `count` events of which `round(count * duplicates)` re-send
    an earlier event verbatim, each after its original."""
    n_unique, _ = split(count, duplicates, topics)
    return Load(events=list(Stream(count, duplicates, topics, seed, prefix)), unique=n_unique)
