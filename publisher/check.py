"""`--confirmed-log` and `--check`: record what the broker confirmed, later compare it with the store.

In the spirit of Jepsen's queue checks. A run with `--confirmed-log PATH` appends every event to PATH as
soon as the broker confirmed its message (the file survives the publisher being killed). A later run with
`--check` and the same workload options reads that file and the store (through the api) and reports:

- attempted: the workload's unique events (what the publisher may have sent);
- confirmed: the unique events the log says were confirmed;
- stored: the events the store holds in the workload's topics;
- lost: confirmed but not stored (the product promises this is 0);
- unexpected: stored in those topics but never part of the workload;
- altered: stored with other content than the workload's first copy of that key;
- counters consistent: received == unique + duplicates + invalid, unique == the per-topic counts, and each
  workload topic's count equals the events paged from it.

A key that was sent but never confirmed may or may not be stored: it is the publisher's to re-send.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

from contract.event import AnyEvent, Event, content_hash
from contract.schema import COUNTERS

Key = tuple[str, str]
PAGE = 1000
SHOWN = 20


class CheckError(Exception):
    """The check could not be run (log unreadable, api unreachable); says nothing about the store."""


class ConfirmedLog:
    """Appends one JSON line `[topic, event_id]` per confirmed event, flushed per confirm."""

    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("a", encoding="utf-8")
        if self._file.tell() and not path.read_bytes().endswith(b"\n"):
            self._file.write("\n")  # an earlier writer was killed mid-line; keep its fragment apart

    def record(self, events: list[AnyEvent]) -> None:
        self._file.write("".join(json.dumps([e.topic, e.event_id]) + "\n" for e in events))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_confirmed(path: Path) -> set[Key]:
    """The keys in a confirmed log. Torn lines (a writer killed mid-line) are skipped: what they named is
    then merely not known to be confirmed, which can hide a loss from the check but never invent one."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise CheckError(f"cannot read the confirmed log {path}: {exc}") from exc
    keys: set[Key] = set()
    torn = 0
    for line in lines:
        try:
            topic, event_id = json.loads(line)
        except (ValueError, TypeError):
            torn += 1
            continue
        keys.add((str(topic), str(event_id)))
    if torn and not keys:
        raise CheckError(f"{path} is not a confirmed log: no line is a [topic, event_id] pair")
    return keys


@dataclass
class CheckResult:
    attempted: int = 0
    confirmed: int = 0
    stored: int = 0
    expired: list[Key] = field(default_factory=list)  # confirmed, not listed, and answering 410 (RETENTION)
    lost: list[Key] = field(default_factory=list)
    unexpected: list[Key] = field(default_factory=list)
    altered: list[Key] = field(default_factory=list)
    stored_twice: list[Key] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    counter_errors: list[str] = field(default_factory=list)

    @property
    def counters_consistent(self) -> bool:
        return not self.counter_errors

    @property
    def ok(self) -> bool:
        return not (self.lost or self.unexpected or self.altered or self.stored_twice or self.counter_errors)

    def as_dict(self) -> dict[str, Any]:
        def shown(keys: list[Key]) -> list[list[str]]:
            return [list(key) for key in sorted(keys)[:SHOWN]]

        return {
            "ok": self.ok,
            "attempted": self.attempted,
            "confirmed": self.confirmed,
            "stored": self.stored,
            "expired": len(self.expired),
            "lost": len(self.lost),
            "unexpected": len(self.unexpected),
            "altered": len(self.altered),
            "stored_twice": len(self.stored_twice),
            "counters_consistent": self.counters_consistent,
            "counters": self.counters,
            "counter_errors": self.counter_errors,
            "lost_keys": shown(self.lost),
            "unexpected_keys": shown(self.unexpected),
            "altered_keys": shown(self.altered),
        }

    def text(self) -> str:
        lines = [
            f"attempted   {self.attempted}",
            f"confirmed   {self.confirmed}",
            f"stored      {self.stored}",
            *([f"expired     {len(self.expired)}"] if self.expired else []),
            f"lost        {len(self.lost)}",
            f"unexpected  {len(self.unexpected)}",
            f"altered     {len(self.altered)}",
            f"counters    {'consistent' if self.counters_consistent else 'INCONSISTENT'}",
        ]
        for label, keys in (("lost", self.lost), ("unexpected", self.unexpected), ("altered", self.altered)):
            for topic, event_id in sorted(keys)[:SHOWN]:
                lines.append(f"  {label}: {topic} {event_id}")
        lines += [f"  {error}" for error in self.counter_errors]
        lines.append("check       " + ("ok" if self.ok else "FAILED"))
        return "\n".join(lines)


def compare(
    workload: Iterable[Event],
    confirmed: set[Key],
    stored: list[dict[str, Any]],
    stats: dict[str, Any],
) -> CheckResult:
    """The pure comparison; `stored` is every event the store holds in the workload's topics."""
    first: dict[Key, Event] = {}
    for item in workload:
        first.setdefault(item.key(), item)
    topics = {topic for topic, _ in first}
    result = CheckResult(attempted=len(first), confirmed=len(confirmed & first.keys()))
    # A confirmed key outside the workload means the log and the workload options do not match.
    foreign = confirmed - first.keys()
    if foreign:
        raise CheckError(
            f"{len(foreign)} confirmed event(s) are not in this workload (e.g. {sorted(foreign)[0]}); "
            "run --check with the options the publisher ran with"
        )
    seen: Counter[Key] = Counter()
    for row in stored:
        key = (row["topic"], row["event_id"])
        seen[key] += 1
        original = first.get(key)
        if original is None:
            result.unexpected.append(key)
        elif content_hash(row["timestamp"], row["source"], row["payload"]) != original.content_hash():
            result.altered.append(key)
    result.stored = len(seen)
    result.stored_twice = [key for key, n in seen.items() if n > 1]
    result.lost = sorted(confirmed - seen.keys())
    result.counters = {name: int(stats[name]) for name in COUNTERS}
    c = result.counters
    if c["received"] != c["unique_processed"] + c["duplicate_dropped"] + c["invalid"]:
        result.counter_errors.append(
            f"received {c['received']} != unique {c['unique_processed']} + duplicates "
            f"{c['duplicate_dropped']} + invalid {c['invalid']}"
        )
    topic_counts: dict[str, int] = stats["topic_counts"]
    if sum(topic_counts.values()) != c["unique_processed"]:
        result.counter_errors.append(
            f"unique {c['unique_processed']} != {sum(topic_counts.values())} counted per topic"
        )
    paged = Counter(row["topic"] for row in stored)
    expired = int(stats.get("expired_events") or 0)
    if expired:
        # Under RETENTION the topics count every event ever stored, /events only those not expired yet. One
        # /stats snapshot is exact; the pages were read before it, so an event that expired in between is
        # both listed and counted expired, and none can be in neither.
        held = int(stats.get("stored_events") or 0)
        if held + expired != c["unique_processed"]:
            result.counter_errors.append(
                f"unique {c['unique_processed']} != {held} stored + {expired} expired in one /stats"
            )
        if sum(paged.values()) + expired < c["unique_processed"]:
            result.counter_errors.append(
                f"unique {c['unique_processed']} > {sum(paged.values())} readable + {expired} expired"
            )
        return result
    for topic in sorted(topics):
        if topic_counts.get(topic, 0) != paged[topic]:
            result.counter_errors.append(
                f"topic {topic}: counted {topic_counts.get(topic, 0)}, stored {paged[topic]}"
            )
    return result


async def fetch_store(
    client: httpx.AsyncClient, topics: Iterable[str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every stored event of `topics` (following the Link headers), then the stats read after them."""
    rows: list[dict[str, Any]] = []
    for topic in sorted(set(topics)):
        url: str | None = f"/events?topic={quote(topic, safe='')}&limit={PAGE}"
        while url is not None:
            response = await client.get(url)
            response.raise_for_status()
            rows.extend(response.json())
            url = response.links.get("next", {}).get("url")
    response = await client.get("/stats")
    response.raise_for_status()
    stats: dict[str, Any] = response.json()
    return rows, stats


async def run_check(
    api_url: str, api_key: str | None, workload: list[Event], confirmed_log: Path
) -> CheckResult:
    confirmed = read_confirmed(confirmed_log)
    headers = {"x-api-key": api_key} if api_key else {}
    try:
        async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=30) as client:
            stored, stats = await fetch_store(client, {item.topic for item in workload})
            result = compare(workload, confirmed, stored, stats)
            if result.lost and stats.get("expired_events"):
                await _separate_expired(client, result)
    except httpx.HTTPError as exc:
        raise CheckError(f"cannot read the store through {api_url}: {exc}") from exc
    return result


async def _separate_expired(client: httpx.AsyncClient, result: CheckResult) -> None:
    """A confirmed key /events no longer lists is expired, not lost, when the store answers 410 for it: it
    was stored, and its key is still known (a re-send of it is a duplicate)."""
    limit = asyncio.Semaphore(16)

    async def gone(key: Key) -> bool:
        async with limit:
            response = await client.get(f"/events/{quote(key[0], safe='')}/{quote(key[1], safe='/')}")
        return response.status_code == 410

    answers = await asyncio.gather(*(gone(key) for key in result.lost))
    result.expired = [key for key, was in zip(result.lost, answers, strict=True) if was]
    result.lost = [key for key, was in zip(result.lost, answers, strict=True) if not was]
