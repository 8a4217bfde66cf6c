"""The load generator: a reproducible stream of events with a given share of re-sent duplicates."""

from __future__ import annotations

import random
import uuid
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


def generate(count: int, duplicates: float, topics: int, seed: int, prefix: str = "demo") -> Load:
    """`count` events of which `round(count * duplicates)` re-send an earlier event verbatim.

    Each re-send comes after its original, at a random later position, as a publisher retry would.
    The same arguments always give the same events, so a run can be repeated exactly.
    """
    if count < 0 or topics < 1 or not 0 <= duplicates < 1:
        raise ValueError("count must be >= 0, topics >= 1 and 0 <= duplicates < 1")
    rng = random.Random(seed)
    n_dup = round(count * duplicates)
    n_unique = count - n_dup
    if n_unique == 0 and n_dup:
        raise ValueError("a load needs at least one unique event to duplicate")
    names = topic_names(topics, prefix)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    originals = []
    for i in range(n_unique):
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        stamp = (start + timedelta(milliseconds=i * 7)).isoformat().replace("+00:00", "Z")
        originals.append(
            Event(
                topic=names[rng.randrange(topics)],
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
        )
    keyed: list[tuple[float, Event]] = [(float(i), item) for i, item in enumerate(originals)]
    for _ in range(n_dup):
        i = rng.randrange(n_unique)
        keyed.append((rng.uniform(i + 0.5, n_unique), originals[i]))
    keyed.sort(key=lambda pair: pair[0])
    return Load(events=[item for _, item in keyed], unique=n_unique)
