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


@dataclass(frozen=True, slots=True)
class PublishOutcome:
    """What a publish request achieved. `new`/`duplicates`/`pending` are known only when it waited for the
    store (`?wait=stored`): events of the request it stored, events already stored, events not yet stored."""

    received: int
    new: int | None = None
    duplicates: int | None = None
    pending: int | None = None


def publish_body(profile: Profile, outcome: PublishOutcome) -> dict[str, Any]:
    n = outcome.received
    if profile == "seed004":
        # That aggregator counts an event already stored as rejected and as an immediate duplicate.
        duplicates = outcome.duplicates or 0
        details: dict[str, Any] = {
            "accepted": n - duplicates if outcome.duplicates is not None else n,
            "rejected": duplicates,
            "duplicates_immediate": duplicates,
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
