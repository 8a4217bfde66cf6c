"""Commit notices: what a consumer tells every api after a commit, and on which exchange.

After a batch's transaction recorded receipts, the consumer publishes a notice on a fanout exchange next to
the events exchange; each api instance binds an exclusive, auto-delete queue of its own to it. So any number
of consumers reach any number of api replicas, on either store backend, with one subscription per api.

A notice is a hint, never the truth: it is transient, unconfirmed and lost with a connection. The store's
receipts table stays the source of truth; a notice only tells an api which receipts to read now.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from contract.topology import Topology

# Its own exchange (not the events exchange): nothing bound to the events queue ever sees a notice.
SUFFIX = ".commits"


def exchange_name(topology: Topology) -> str:
    return f"{topology.exchange}{SUFFIX}"


@dataclass(frozen=True, slots=True)
class Notice:
    """One committed batch: the receipts it recorded and how many events it stored."""

    receipts: tuple[str, ...]
    stored: int


def encode(receipts: list[str], stored: int) -> bytes:
    return json.dumps({"receipts": receipts, "stored": stored}, separators=(",", ":")).encode()


def decode(body: bytes) -> Notice | None:
    """The notice in `body`, or None when it is not one (a stray publish on the exchange)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    receipts, stored = data.get("receipts"), data.get("stored")
    if not isinstance(receipts, list) or not all(isinstance(r, str) for r in receipts):
        return None
    if not isinstance(stored, int):
        return None
    return Notice(tuple(receipts), stored)
