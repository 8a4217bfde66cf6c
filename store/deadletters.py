"""Dead letters, backend-neutral: an invalid message as the consumer hands it over (Rejected), and as the
store keeps and reads it back (DeadLetter, its pages and counts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
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


def looked_up(rejected: Sequence[Rejected]) -> list[Identity]:
    """The identities a batch looks for among the dead letters already kept: every invalid message's (poison
    is rare, and a first delivery may be of a message another consumer kept already: see not_kept_yet)."""
    return list(dict.fromkeys(item.identity() for item in rejected))


# The advisory locks of dead letters' identities on PostgreSQL (store/postgres/batch.py): one of LOCKS keys
# from DEAD_LETTER_LOCK on, so that a batch of many invalid messages takes a bounded number of locks.
DEAD_LETTER_LOCK = 0x65766167_00010000
LOCKS = 256


def identity_lock(identity: Identity) -> int:
    """The key of the advisory lock that a PostgreSQL batch takes before it looks for `identity`."""
    routing_key, size, body, message_id = identity
    digest = blake2b(digest_size=8, person=b"dead-letter")
    for part in (routing_key.encode(), str(size).encode(), body, (message_id or "").encode()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return DEAD_LETTER_LOCK + int.from_bytes(digest.digest(), "big") % LOCKS


@dataclass(frozen=True, slots=True)
class Kept:
    """The dead letters kept of one identity: all of them, and those kept from a redelivery that no first
    delivery has claimed yet."""

    all: int
    unclaimed: int


@dataclass(slots=True)
class Verdict:
    """What a batch does with its rejected messages: keeps and counts `fresh` (each kept from a redelivery
    is kept unclaimed), and claims `claimed` unclaimed dead letters of each identity."""

    fresh: list[Rejected]
    claimed: dict[Identity, int]


def not_kept_yet(rejected: Sequence[Rejected], kept: Mapping[Identity, Kept]) -> Verdict:
    """The batch's rejected messages to keep as dead letters and count, and the dead letters they claim.
    Every message is rejected to the dead-letter queue either way; one taken for a message kept already is
    neither kept nor counted (`received`, `invalid`) a second time. An invalid message has no dedup key, so
    a message is known again by routing key, size, stored body and AMQP message id:

    - A redelivered one matching a kept dead letter is that message: an earlier commit kept it and its
      reject never reached the broker (its channel closed, or the consumer died in between).
    - One with a message id matching a kept dead letter is that message, flagged redelivered or not.
    - A first delivery without a message id is that message only when a matching dead letter was kept from
      a redelivery and no first delivery has claimed it yet. That is a first delivery the broker gave to
      another consumer meanwhile: one held past the heartbeat timeout (stopped, starved) with the message
      already in its socket's buffer, or still committing when its channel closed. It reads its first
      delivery and commits it before it learns that its channel is gone, after the other kept the
      redelivery. It claims that dead letter instead of keeping another.

    Without a message id nothing tells two sends of the same garbage apart, so a wrong guess is possible:
    the second of two identical sends goes uncounted when it is redelivered (first rule), or when the first
    send's first delivery was never committed (third rule). Without this, each such poison message was
    counted twice. Each kept dead letter stands for at most one message per batch.
    """
    left = {identity: [found.all, found.unclaimed] for identity, found in kept.items()}
    fresh: list[Rejected] = []
    claimed: dict[Identity, int] = {}
    for item in rejected:
        identity = item.identity()
        counts = left.get(identity, [0, 0])
        if item.redelivered or item.message_id is not None:
            known = counts[0] > 0
        else:
            known = counts[1] > 0
        if not known:
            fresh.append(item)
            continue
        counts[0] -= 1
        if (
            not item.redelivered and counts[1] > 0
        ):  # a first delivery: the redelivery's dead letter is its own
            counts[1] -= 1
            claimed[identity] = claimed.get(identity, 0) + 1
    return Verdict(fresh, claimed)


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
