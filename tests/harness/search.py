"""The meaning of search written again, from the docstring of store/search.py, as the tests' reference
filter; and events whose payloads exercise it (words, phrases, nested strings, scalar fields of each type)."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from contract.event import Event

_WORD = re.compile(r"[^\W_]+")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [text for item in items for text in _texts(item)]


def _has_phrase(e: Event, phrase: list[str]) -> bool:
    for value in [e.source, *_texts(e.payload)]:
        found = _words(value)
        if any(found[i : i + len(phrase)] == phrase for i in range(len(found))):
            return True
    return False


def _field_equals(payload: dict[str, Any], name: str, wanted: str) -> bool:
    if name not in payload:
        return False
    value = payload[name]
    if isinstance(value, str):
        return value == wanted
    if isinstance(value, bool) or value is None:
        return json.dumps(value) == wanted
    if isinstance(value, int | float) and _NUMBER.fullmatch(wanted):
        return Decimal(repr(value)) == Decimal(wanted)
    return False


def _q_phrases(q: str) -> list[list[str]]:
    parts = q.split('"')  # odd parts are quoted; a quote left open runs to the end
    phrases: list[list[str]] = []
    for n, part in enumerate(parts):
        if n % 2:
            phrases.append(_words(part))
        else:
            phrases += [[w] for w in _words(part)]
    return [p for p in phrases if p]


def expected(
    events: list[Event], q: str | None, pairs: list[tuple[str, str]], topic: str | None, source: str | None
) -> list[str]:
    return [
        e.event_id
        for e in events
        if (topic is None or e.topic == topic)
        and (source is None or e.source == source)
        and (q is None or all(_has_phrase(e, p) for p in _q_phrases(q)))
        and all(_field_equals(e.payload, name, value) for name, value in pairs)
    ]


MESSAGES = [
    "Disk full on db1",
    "disk_full: retrying on DB2",
    "full disk? no: timeout on db2",
    "Ünïcode Straße 日本語 ok",
    "user 42 logged in",
    "Timeout, then disk FULL",
    "nul\u0000byte: JSON holds it, PostgreSQL's jsonb would not",
]


def sent(batch: int) -> list[Event]:
    events = []
    for i in range(12):
        n = batch * 12 + i
        payload: dict[str, Any] = {
            "message": MESSAGES[n % len(MESSAGES)],
            "status": ["failed", "ok", "500", "true"][n % 4],
            "code": [500, 500.0, 200, "500", 404.5][n % 5],
            "details": {"host": f"db{n % 3}", "notes": ["disk", "cold full"] if n % 2 else []},
        }
        if n % 3 == 0:
            payload["ok"] = n % 2 == 0
        if n % 7 == 0:
            payload["gone"] = None
        if n % 5 == 0:
            payload["tags"] = ["x", "failed"]
        topic = "orders" if n % 2 else "auth"
        events.append(
            Event(
                topic=topic,
                event_id=f"e{n}",
                timestamp="2026-11-22T10:15:00Z",
                source=["web-1", "api", "db1 worker"][n % 3],
                payload=payload,
            )
        )
    return events


SEARCHES: list[tuple[str | None, list[tuple[str, str]]]] = [
    ("disk", []),
    ("DISK full", []),
    ('"disk full"', []),
    ('"full disk"', []),
    ('"on db2" timeout', []),
    ("db1", []),  # in the source of some, in the message of others
    ('"db1 worker"', []),
    ('"web 1"', []),
    ('"cold full"', []),
    ('"disk cold"', []),  # two strings of one list: no phrase across them
    ("straße 日本語", []),
    ("ünïcode", []),
    ("unicode", []),
    ("42", []),
    ('"timeout then', []),
    ("nowhere", []),
    ('"nul byte" jsonb', []),
    (None, [("status", "failed")]),
    (None, [("code", "500")]),
    (None, [("code", "5e2")]),
    (None, [("code", "404.50")]),
    (None, [("ok", "true")]),
    (None, [("status", "true")]),
    (None, [("gone", "null")]),
    (None, [("tags", "x")]),  # arrays never match
    (None, [("host", "db1")]),  # not top level
    (None, [("status", "failed"), ("code", "500")]),
    ("disk", [("status", "ok")]),
    ('"disk full"', [("code", "500"), ("ok", "false")]),
]
