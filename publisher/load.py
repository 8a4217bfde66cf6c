"""The load generator: a reproducible stream of events with a given share of re-sent duplicates."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from contract.event import Event

_LEVELS = ("debug", "info", "info", "info", "warning", "error")
_NAMES = ("orders", "payments", "auth", "search", "billing", "shipping", "inventory", "email")


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


class Stream:
    """The load one event at a time, made as it is asked for: a sender starts at once and a big load never
    waits to be generated in full (400,000 events took about 10 s to make up front). `unique` and
    `duplicates` count what it gave so far.

    Each position holds a re-send with the share of re-sends still to come, never before the first
    original; a re-send repeats an original already given, chosen at random, verbatim. The same arguments
    always give the same events, so a run can be repeated exactly (and `--check` can rebuild it).
    """

    def __init__(self, count: int, duplicates: float, topics: int, seed: int, prefix: str = "demo") -> None:
        self._unique_left, self._dup_left = split(count, duplicates, topics)
        # The originals from one generator, where they fall and what is re-sent from another: the originals
        # of a seed are then the same whatever the count (a bigger load begins with a smaller one's events).
        self._rng = random.Random(seed)
        self._mix = random.Random(f"{seed}/re-sends")
        self._topics = topics
        self._names = topic_names(topics, prefix)
        self._start = datetime(2026, 1, 1, tzinfo=UTC)
        self._originals: list[Event] = []
        self.unique = 0
        self.duplicates = 0

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        rng, mix, originals = self._rng, self._mix, self._originals
        if not (self._unique_left or self._dup_left):
            raise StopIteration
        left = self._unique_left + self._dup_left
        if originals and self._dup_left and mix.randrange(left) < self._dup_left:
            self._dup_left -= 1
            self.duplicates += 1
            return originals[mix.randrange(len(originals))]
        self._unique_left -= 1
        i = len(originals)
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        stamp = (self._start + timedelta(milliseconds=i * 7)).isoformat().replace("+00:00", "Z")
        original = Event(
            topic=self._names[rng.randrange(self._topics)],
            event_id=event_id,
            timestamp=stamp,
            source=f"loadgen-{rng.randrange(4)}",
            payload={
                "seq": i,
                "level": rng.choice(_LEVELS),
                "message": f"generated event {i}",
                "latency_ms": rng.randrange(1, 2000),
            },
        )
        originals.append(original)
        self.unique += 1
        return original


def generate(count: int, duplicates: float, topics: int, seed: int, prefix: str = "demo") -> Load:
    """The whole of a Stream's load at once: `count` events of which `round(count * duplicates)` re-send
    an earlier event verbatim, each after its original."""
    n_unique, _ = split(count, duplicates, topics)
    return Load(events=list(Stream(count, duplicates, topics, seed, prefix)), unique=n_unique)
