"""The api's side of the store's answers: the opaque keyset cursor and pages as JSON."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

import store

log = logging.getLogger(__name__)


class BadCursor(ValueError):
    pass


# The largest 64-bit seq: a descending page with no cursor starts below it, i.e. at the newest event.
NEWEST = 2**63 - 1


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, seq = raw.partition(":")
        if version != "v1":
            raise ValueError(version)
        value = int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursor(f"not a cursor from this api: {cursor!r}") from None
    if not 0 <= value < 2**63:  # SQLite integers and PostgreSQL bigints are 64-bit signed
        raise BadCursor(f"not a cursor from this api: {cursor!r}")
    return value


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[store.Row]
    next_cursor: str | None

    @classmethod
    def of(cls, page: store.Page) -> Page:
        """The store's page with its continuation as this api's opaque cursor."""
        return cls(page.rows, None if page.next_after is None else encode_cursor(page.next_after))

    @property
    def events(self) -> list[dict[str, Any]]:
        return [_row(r) for r in self.rows]

    def json(self) -> bytes:
        """The page as the JSON array GET /events answers."""
        return ("[" + ",".join(row_json(r) for r in self.rows) + "]").encode()


def _row(row: store.Row) -> dict[str, Any]:
    return {
        "topic": row[1],
        "event_id": row[2],
        "timestamp": row[3],
        "source": row[4],
        "payload": json.loads(row[5]),
        "received_at": row[6],
    }


def row_json(row: store.Row) -> str:
    """One stored event as JSON text, its payload spliced in as stored.

    The payload column already holds compact JSON that the consumer serialised; parsing it and serialising
    it again (and validating a response model around it) was most of the cost of a page of events.
    `encode_basestring` is the json module's C string encoder, the same escaping as `ensure_ascii=False`.
    """
    e = encode_basestring
    return (
        f'{{"topic":{e(row[1])},"event_id":{e(row[2])},"timestamp":{e(row[3])},"source":{e(row[4])},'
        f'"payload":{row[5]},"received_at":{e(row[6])}}}'
    )
