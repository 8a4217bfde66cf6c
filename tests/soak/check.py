"""The soak's final check, once the traffic stopped and the queue drained.

Without retention: publisher/check.py's comparison (the crash checker's) over every event any source sent
and every key any of them saw confirmed: lost 0, unexpected 0, altered 0, none stored twice, the counters
consistent and each topic's count equal to the events paged from it; unique_processed equal to the events
stored; `invalid` and the dead-letter queue exactly the poison sent, and the store's dead-letter records
exactly their bodies.

With retention (`retention=True`) an event may have expired, and an expired event is neither lost nor
returned by /events. The listing then proves nothing about loss, so every key sent is looked up instead
(`GET /events/{topic}/{event_id}`): 200 (content compared), 410 Gone (expired: the key is still known) or
404 (never stored). Lost = confirmed keys answering 404; and unique_processed must equal the keys answering
200 or 410, which also shows nothing outside the workload was stored.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from contract.event import Event, content_hash
from contract.schema import COUNTERS
from publisher.check import compare

Key = tuple[str, str]
PAGE = 1000
LOOKUPS_AT_ONCE = 16


@dataclass
class Outcome:
    ok: bool = True
    lines: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def expect(self, condition: bool, text: str) -> None:
        self.lines.append(("ok      " if condition else "FAILED  ") + text)
        self.ok = self.ok and condition


async def all_events(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    url: str | None = f"/events?limit={PAGE}"
    while url is not None:
        response = await client.get(url)
        response.raise_for_status()
        rows.extend(response.json())
        url = response.links.get("next", {}).get("url")
    return rows


async def dead_letter_bodies(client: httpx.AsyncClient) -> list[str]:
    bodies: list[str] = []
    url: str | None = "/dead-letters?limit=1000"
    while url is not None:
        response = await client.get(url)
        response.raise_for_status()
        data = response.json()
        items = data["items"] if isinstance(data, dict) else data
        bodies.extend(str(item["body"]) for item in items)
        url = response.links.get("next", {}).get("url")
    return bodies


async def lookups(client: httpx.AsyncClient, workload: dict[Key, Event]) -> dict[Key, tuple[int, Any]]:
    """Each key's status (and body when 200) from GET /events/{topic}/{event_id}, a few at once."""
    answers: dict[Key, tuple[int, Any]] = {}
    slots = asyncio.Semaphore(LOOKUPS_AT_ONCE)

    async def one(key: Key) -> None:
        async with slots:
            for _attempt in range(3):
                try:
                    response = await client.get(f"/events/{quote(key[0], safe='')}/{quote(key[1], safe='/')}")
                except httpx.HTTPError as exc:
                    # No answer at all (the api dropped the connection): recorded as status 0.
                    answers[key] = (0, repr(exc))
                    continue
                answers[key] = (
                    response.status_code,
                    response.json() if response.status_code == 200 else None,
                )
                return

    await asyncio.gather(*(one(key) for key in workload))
    return answers


async def final_check(
    api_url: str,
    workload: dict[Key, Event],
    confirmed: set[Key],
    poison_confirmed: list[bytes],
    poison_uncertain: list[bytes],
    dead_letter_depth: int,
    retention: bool,
) -> Outcome:
    out = Outcome()
    poison = {body.decode() for body in poison_confirmed}
    maybe = {body.decode() for body in poison_uncertain}
    async with httpx.AsyncClient(base_url=api_url, timeout=60) as client:
        stats_response = await client.get("/stats")
        stats_response.raise_for_status()
        stats: dict[str, Any] = stats_response.json()
        counters = {name: int(stats[name]) for name in COUNTERS}
        out.figures["counters"] = counters
        out.figures["attempted"] = len(workload)
        out.figures["confirmed"] = len(confirmed)
        out.expect(not (confirmed - workload.keys()), "every confirmed key is one the soak sent")
        if not retention:
            rows = await all_events(client)
            result = compare(workload.values(), confirmed, rows, stats)
            figures = result.as_dict()
            out.figures["check"] = {k: v for k, v in figures.items() if not k.endswith("_keys")}
            out.figures["stored"] = result.stored
            out.expect(result.ok, f"crash checker: {json.dumps(out.figures['check'], sort_keys=True)}")
            out.expect(not result.lost, f"lost {len(result.lost)} {sorted(result.lost)[:10]}")
            out.expect(not result.unexpected, f"unexpected {len(result.unexpected)}")
            out.expect(not result.altered, f"altered {len(result.altered)}")
            out.expect(not result.stored_twice, f"stored twice {len(result.stored_twice)}")
            out.expect(
                counters["unique_processed"] == result.stored,
                f"unique_processed {counters['unique_processed']} == stored {result.stored}",
            )
        else:
            answers = await lookups(client, workload)
            found = {k for k, (status, _) in answers.items() if status == 200}
            expired = {k for k, (status, _) in answers.items() if status == 410}
            missing = {k for k, (status, _) in answers.items() if status == 404}
            other = {k: status for k, (status, _) in answers.items() if status not in (200, 404, 410)}
            altered = [
                k
                for k in found
                if content_hash(answers[k][1]["timestamp"], answers[k][1]["source"], answers[k][1]["payload"])
                != workload[k].content_hash()
            ]
            lost = confirmed & missing
            out.figures["check"] = {
                "found": len(found),
                "expired": len(expired),
                "never_stored": len(missing),
                "lost": len(lost),
                "altered": len(altered),
            }
            out.figures["stored"] = len(found) + len(expired)
            out.expect(
                not other,
                f"every lookup answered 200, 410 or 404 (others: {len(other)}, statuses "
                f"{sorted(Counter(other.values()).items())})",
            )
            out.expect(not lost, f"lost {len(lost)} (confirmed, answering 404) {sorted(lost)[:10]}")
            out.expect(not altered, f"altered {len(altered)}")
            out.expect(
                counters["unique_processed"] == len(found) + len(expired),
                f"unique_processed {counters['unique_processed']} == found {len(found)} + expired "
                f"{len(expired)}",
            )
            if "stored_events" in stats and "expired_events" in stats:
                out.expect(
                    int(stats["stored_events"]) + int(stats["expired_events"])
                    == counters["unique_processed"],
                    f"stored_events {stats['stored_events']} + expired_events {stats['expired_events']} == "
                    f"unique_processed",
                )
        c = counters
        out.expect(
            c["received"] == c["unique_processed"] + c["duplicate_dropped"] + c["invalid"],
            f"received {c['received']} == unique {c['unique_processed']} + duplicates "
            f"{c['duplicate_dropped']} + invalid {c['invalid']}",
        )
        letters = await dead_letter_bodies(client)
        distinct = set(letters)
        out.figures["poison"] = {
            "confirmed": len(poison),
            "uncertain": len(maybe),
            "dead_letter_queue": dead_letter_depth,
            "dead_letter_records": len(letters),
            "invalid": c["invalid"],
        }
        out.expect(len(distinct) == len(letters), f"no poison recorded twice ({len(letters)} records)")
        out.expect(
            poison <= distinct <= poison | maybe,
            f"dead letters are the poison: {len(poison)} confirmed (+{len(maybe)} unconfirmed) sent, "
            f"{len(distinct)} recorded",
        )
        out.expect(
            dead_letter_depth == len(letters) == c["invalid"],
            f"dead-letter queue {dead_letter_depth} == records {len(letters)} == invalid {c['invalid']}",
        )
    return out
