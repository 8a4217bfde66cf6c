"""Commit notices: what a consumer tells every api after a commit, and on which exchange.

After a batch's transaction recorded receipts, the consumer publishes a notice on a fanout exchange next to
the events exchange; each api instance binds an exclusive, auto-delete queue of its own to it. So any number
of consumers reach any number of api replicas, on either store backend, with one subscription per api. The
store's writer sends the same notice itself too, one hop shorter (`NOTIFY` on PostgreSQL, a datagram on
SQLite: store/*/notices.py), in parts of at most PART_LIMIT bytes (`parts`); an api answers on the first
copy it hears.

A notice is transient, unconfirmed and lost with a connection: the store's receipts table stays the source
of truth, and an api that hears no notice reads it. A notice names the receipts a commit recorded and, for
those it inserted (at most FIGURES_PER_NOTICE), the figures it wrote in the same transaction: (events of the
message stored, events of it already stored). A waiting api answers from those without reading the store; a
receipt named without figures (a consumer of an earlier release, a redelivered message whose receipt an
earlier commit stored, more than the cap) is read from the store. Either side ignores what it does not know,
so apis and consumers of both releases work together.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from contract.topology import Topology

# Its own exchange (not the events exchange): nothing bound to the events queue ever sees a notice.
SUFFIX = ".commits"
# Receipts with figures in one notice at most (about 45 bytes each): a notice stays a small message whatever
# the batch; the receipts beyond are named without figures, and their requests read the store.
FIGURES_PER_NOTICE = 1000
# A notice sent by the store itself (PostgreSQL's NOTIFY takes at most 8,000 bytes; a datagram to an api on
# the SQLite host) is at most this long: a commit whose notice would be longer sends several.
PART_LIMIT = 7_900
# A notice's fixed part, and a figure pair's most ("[n,d]" with two bigints), in bytes.
_FIXED = 64
_FIGURES = 48


def exchange_name(topology: Topology) -> str:
    return f"{topology.exchange}{SUFFIX}"


@dataclass(frozen=True, slots=True)
class Notice:
    """One committed batch: the receipts it recorded, how many events it stored, and the figures (new,
    duplicates) of the receipts it inserted, as the store holds them."""

    receipts: tuple[str, ...]
    stored: int
    figures: Mapping[str, tuple[int, int]] = field(default_factory=dict, hash=False)


def encode(receipts: list[str], stored: int, figures: Iterable[tuple[str, int, int]] = ()) -> bytes:
    """`figures`: (receipt, new, duplicates); only the first FIGURES_PER_NOTICE are sent."""
    data: dict[str, object] = {"receipts": receipts, "stored": stored}
    carried: dict[str, list[int]] = {}
    for receipt, new, duplicates in figures:
        if len(carried) >= FIGURES_PER_NOTICE:
            break
        carried[receipt] = [new, duplicates]
    if carried:
        data["figures"] = carried
    return json.dumps(data, separators=(",", ":")).encode()


def parts(receipts: Sequence[str], stored: int, figures: Sequence[tuple[str, int, int]]) -> list[bytes]:
    """One commit's notice in parts of at most PART_LIMIT bytes: its receipts in groups, the count of stored
    events in the first part. `figures`: (receipt, new, duplicates) of the receipts the commit inserted. None
    when there is nothing to tell."""
    if not receipts:
        return [encode([], stored)] if stored else []
    carried = {r: (n, d) for r, n, d in figures}
    groups: list[list[str]] = [[]]
    size = _FIXED
    for receipt in receipts:
        quoted = len(json.dumps(receipt).encode())  # a receipt: at most 255 characters (consumer/handler.py)
        cost = quoted + 1 + (quoted + 1 + _FIGURES if receipt in carried else 0)
        if groups[-1] and size + cost > PART_LIMIT:
            groups.append([])
            size = _FIXED
        groups[-1].append(receipt)
        size += cost
    return [
        encode(group, stored if n == 0 else 0, ((r, *carried[r]) for r in group if r in carried))
        for n, group in enumerate(groups)
    ]


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def decode(body: bytes) -> Notice | None:
    """The notice in `body`, or None when it is not one (a stray publish on the exchange). Figures that are
    not well formed are dropped, not the notice: its receipts are then read from the store."""
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
    raw = data.get("figures")
    figures: dict[str, tuple[int, int]] = {}
    if isinstance(raw, dict):
        for receipt, pair in raw.items():
            if not (isinstance(pair, list) and len(pair) == 2 and _count(pair[0]) and _count(pair[1])):
                figures = {}
                break
            figures[receipt] = (pair[0], pair[1])
    return Notice(tuple(receipts), stored, figures)
