"""Dead letters, backend-neutral: an invalid message as the consumer hands it over (Rejected), and as the
store keeps and reads it back (DeadLetter, its pages and counts)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from store.clock import utc_now

# Dead letters the store keeps (the oldest beyond are deleted and counted as dropped), and how much of each
# body: enough to see what was wrong and fix it, while 100,000 of them stay under 7 GB at worst.
DEAD_LETTERS_KEPT = 100_000
DEAD_LETTER_BODY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Rejected:
    """An invalid message: counted once in `invalid` and kept as a dead letter in the same transaction."""

    reason: str  # the text the consumer logs when it rejects the message
    kind: str  # a short class of the reason (not_json, schema, too_large) for counting
    routing_key: str
    body: bytes
    at: str = field(default_factory=lambda: utc_now())

    def stored_body(self) -> tuple[bytes, bool]:
        return self.body[:DEAD_LETTER_BODY_BYTES], len(self.body) > DEAD_LETTER_BODY_BYTES


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    at: str
    kind: str
    reason: str
    routing_key: str
    body: bytes  # at most DEAD_LETTER_BODY_BYTES
    size: int  # of the whole body as it arrived
    truncated: bool


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    letters: list[DeadLetter]  # newest first
    next_before: int | None  # the id to continue below, when older ones follow


@dataclass(frozen=True, slots=True)
class DeadLetterCounts:
    by_kind: dict[str, int]  # every dead letter ever recorded, by the class of its reason
    kept: int
    dropped: int  # deleted to keep DEAD_LETTERS_KEPT


DEAD_LETTER_COLUMNS = "id, at, kind, reason, routing_key, body, size, truncated"


def dead_letter(row: Sequence[Any]) -> DeadLetter:
    id_, at, kind, reason, routing_key, body, size, truncated = row
    return DeadLetter(
        int(id_), str(at), str(kind), str(reason), str(routing_key), bytes(body), int(size), bool(truncated)
    )
