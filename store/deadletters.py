"""Dead letters, backend-neutral: an invalid message as the consumer hands it over (Rejected), and as the
store keeps and reads it back (DeadLetter, its pages and counts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    redelivered: bool = False  # the delivery's AMQP redelivered flag: see not_kept_yet()
    message_id: str | None = None  # the AMQP property, when the publisher set one

    def stored_body(self) -> tuple[bytes, bool]:
        return self.body[:DEAD_LETTER_BODY_BYTES], len(self.body) > DEAD_LETTER_BODY_BYTES

    def identity(self) -> Identity:
        """What a dead letter keeps of the message to know it again: routing key, size, stored body and
        message id."""
        return self.routing_key, len(self.body), self.stored_body()[0], self.message_id


Identity = tuple[str, int, bytes, str | None]


def looked_for(item: Rejected) -> bool:
    """Whether `item` may be a message already kept (not_kept_yet): redelivered, or carrying a message id."""
    return item.redelivered or item.message_id is not None


def looked_up(rejected: Sequence[Rejected]) -> list[Identity]:
    """The identities a batch must look for among the dead letters already kept: only its redelivered ones
    and those with a message id, so a batch of first deliveries without one costs nothing more."""
    return list(dict.fromkeys(item.identity() for item in rejected if looked_for(item)))


def not_kept_yet(rejected: Sequence[Rejected], kept: Mapping[Identity, int]) -> list[Rejected]:
    """The batch's rejected messages to keep as dead letters and count: all but the redelivered ones whose
    dead letter an earlier commit kept (`kept`: how many dead letters each looked-up identity has). Those
    come back because that commit's reject never reached the broker (its channel closed, or the consumer
    died between the commit and the reject); they are rejected again, so the dead-letter queue gets each
    message once, but neither kept nor counted (`received`, `invalid`) a second time.

    An invalid message has no dedup key, and without a message id nothing tells two sends of the same
    garbage (same routing key, same body) apart. So a first delivery without a message id is always kept,
    and a redelivered one matching a kept dead letter is taken for that message, each kept dead letter
    standing for at most one redelivery per batch. A wrong guess needs the same garbage sent twice and the
    second send redelivered: it then goes uncounted, where without this every redelivered poison message was
    counted twice.

    A message with a message id is looked up whether flagged redelivered or not: with competing consumers a
    copy can come back without the flag. A consumer held past the broker's heartbeat timeout (stopped,
    starved) with the message in its socket's buffer loses its connection; the broker delivers the message
    to another consumer, which keeps it, and the first then reads its buffered first delivery and commits
    it before it learns that its channel is gone. The same message id, routing key and body is that message.
    """
    left = dict(kept)
    fresh = []
    for item in rejected:
        if looked_for(item):
            identity = item.identity()
            if left.get(identity, 0) > 0:
                left[identity] -= 1
                continue
        fresh.append(item)
    return fresh


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
