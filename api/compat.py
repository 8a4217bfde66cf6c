"""The API_COMPAT profiles: how each shapes the answers of publish, GET /events and /stats.

A profile changes the shape of an answer only. What is accepted, validated, confirmed and stored is the
product's own in every profile, so a client written for an earlier aggregator gets its shapes and this
product's guarantees.
"""

from __future__ import annotations

from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from pydantic import BaseModel

from api.models import (
    EventsPageSeed004,
    EventsWrapped,
    PublishSeed004,
    Stats,
    StatsSeed003,
    StatsSeed004,
)
from api.queries import Page, row_json
from api.settings import Profile
from contract.event import Event
from store import Reader


@dataclass(frozen=True, slots=True)
class PublishOutcome:
    """What a publish request achieved. `new`/`duplicates`/`pending` are known only when it waited for the
    store (`?wait=stored`): events of the request it stored, events already stored, events not yet stored."""

    received: int
    new: int | None = None
    duplicates: int | None = None
    pending: int | None = None
    # seed004: events of the request whose key was already stored when it arrived (already_stored()).
    stored_before: int | None = None


async def already_stored(reader: Reader, events: list[Event]) -> int:
    """seed004's count of rejected events: those whose key the store holds when the request arrives, looked
    up as that aggregator did, before publishing. Two copies of a new key in one request are both accepted
    (neither was stored yet); two copies of a stored key are both rejected. One lookup per distinct key."""
    keys = {(item.topic, item.event_id) for item in events}
    found = {key for key in keys if await reader.event_row(*key) is not None}
    return sum(1 for item in events if (item.topic, item.event_id) in found)


def publish_body(profile: Profile, outcome: PublishOutcome) -> dict[str, Any]:
    n = outcome.received
    if profile == "seed004":
        # That aggregator counts an event already stored when the request arrives as rejected and as an
        # immediate duplicate, whether or not the request waits for the store (already_stored()).
        rejected = outcome.stored_before or 0
        details: dict[str, Any] = {
            "accepted": n - rejected,
            "rejected": rejected,
            "duplicates_immediate": rejected,
        }
        message = f"Processed {n} events"
        if outcome.pending:
            details["pending"] = outcome.pending
            message += f"; {outcome.pending} confirmed by the broker but not stored yet"
        return {"status": "success", "message": message, "details": details}
    body: dict[str, Any] = {
        "status": "accepted",
        "received": n,
        "accepted": n,
        "rejected": 0,
        "enqueued": n,
        "count": n,
    }
    if outcome.new is not None:
        body["stored"] = n - (outcome.pending or 0)
        body["new"] = outcome.new
        body["duplicates"] = outcome.duplicates
        body["pending"] = outcome.pending or 0
    return body


def events_descending(profile: Profile) -> bool:
    return profile == "seed004"


def events_body(profile: Profile, page: Page) -> bytes:
    if profile == "seed003":
        return b'{"events":' + page.json() + b"}"
    if profile == "seed004":
        # processed_at is that aggregator's name for when it stored the event: our received_at.
        items = ",".join(
            row_json(r)[:-1] + ',"processed_at":' + encode_basestring(r[6]) + "}" for r in page.rows
        )
        return f'{{"status":"success","count":{len(page.rows)},"events":[{items}]}}'.encode()
    return page.json()


def stats_body(profile: Profile, stats: Stats) -> dict[str, Any]:
    body = stats.model_dump(mode="json")
    if profile == "seed003":
        body["uptime"] = round(stats.uptime * 1000)  # milliseconds; uptime_seconds stays seconds
    elif profile == "seed004":
        body["topics"] = dict(stats.topic_counts)
    return body


# The 200 answers each profile changes, for the OpenAPI document: (path, method) → model.
RESPONSE_MODELS: dict[str, dict[tuple[str, str], type[BaseModel]]] = {
    "default": {},
    "seed003": {("/events", "get"): EventsWrapped, ("/stats", "get"): StatsSeed003},
    "seed004": {
        ("/events", "get"): EventsPageSeed004,
        ("/stats", "get"): StatsSeed004,
        ("/publish", "post"): PublishSeed004,
        ("/events", "post"): PublishSeed004,
    },
}
