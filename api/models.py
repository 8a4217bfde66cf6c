"""The api's response models (and their examples), so /docs is a usable manual."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from contract.event import EXAMPLE, Event


class StoredEvent(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{**EXAMPLE, "received_at": "2026-11-22T10:15:00.123456Z"}]}
    )

    topic: str
    event_id: str
    timestamp: str = Field(description="UTC, ISO 8601")
    source: str
    payload: dict[str, Any]
    received_at: str = Field(description="when the consumer stored it, UTC, ISO 8601")


class EventsWrapper(BaseModel):
    """`{"events": [...]}` or `{"events": {...}}`, as the small aggregators accept."""

    events: list[Event] | Event


class PublishAccepted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"status": "accepted", "received": 2, "accepted": 2, "rejected": 0, "enqueued": 2, "count": 2}
            ]
        }
    )

    status: Literal["accepted"] = "accepted"
    received: int = Field(description="events in the request")
    accepted: int = Field(description="events confirmed by the broker: all of them, or the answer is not 2xx")
    rejected: int = 0
    enqueued: int = Field(description="the same as `accepted`, for clients that read this name")
    count: int = Field(description="the same as `received`, for clients that read this name")
    # Only with ?wait=stored:
    stored: int | None = Field(None, description="wait=stored: events of the request now committed")
    new: int | None = Field(None, description="wait=stored: events this request stored")
    duplicates: int | None = Field(None, description="wait=stored: events already stored by an earlier copy")
    pending: int | None = Field(
        None, description="wait=stored: events confirmed by the broker but not stored yet (HTTP 202)"
    )


class PublishDetails(BaseModel):
    accepted: int = Field(description="events published; with wait=stored, events this request stored")
    rejected: int = Field(description="with wait=stored, events already stored (immediate duplicates)")
    duplicates_immediate: int
    pending: int | None = Field(None, description="wait=stored: confirmed but not stored yet (HTTP 202)")


class PublishSeed004(BaseModel):
    """The publish answer under API_COMPAT=seed004."""

    status: Literal["success"] = "success"
    message: str = Field(description="`Processed N events`")
    details: PublishDetails


class EventsWrapped(BaseModel):
    """GET /events under API_COMPAT=seed003: exactly `{"events": [...]}`, nothing beside it."""

    model_config = ConfigDict(extra="forbid")

    events: list[StoredEvent]


class StoredEventSeed004(StoredEvent):
    processed_at: str = Field(description="the same as received_at")


class EventsPageSeed004(BaseModel):
    """GET /events under API_COMPAT=seed004: newest first."""

    status: Literal["success"] = "success"
    count: int = Field(description="events in this answer")
    events: list[StoredEventSeed004]


class ErrorMessage(BaseModel):
    detail: str


class ValidationItem(BaseModel):
    type: str
    loc: list[str | int]
    msg: str
    input: Any = None


class ValidationFailed(BaseModel):
    detail: list[ValidationItem]


class ConsumerInfo(BaseModel):
    status: Literal["ok", "idle", "stalled", "absent", "connecting", "unknown"] = Field(
        "unknown",
        description="ok: committed recently; idle: nothing waiting; stalled: messages wait but no commit for "
        "CONSUMER_STALL_SECONDS (e.g. the store is failing and it is retrying); absent: messages wait and no "
        "consumer is attached; connecting: the consumer reports it cannot consume (its broker link is down "
        "or its channel is not restored; `detail` says why); unknown: broker unreachable",
    )
    detail: str | None = Field(None, description="why it is stalled, as the consumer reported it")
    started_at: str | None = Field(None, description="when the consumer last started, UTC")
    last_commit_at: str | None = Field(None, description="the consumer's last committed batch, UTC")
    journal_mode: str | None = None
    synchronous: str | None = Field(None, description="SQLite synchronous mode of the writer (FULL)")


class QueueInfo(BaseModel):
    name: str
    consumers: int | None = Field(
        None, description="consumers attached; null while the broker is unreachable"
    )
    messages: int | None = Field(description="ready messages, exact; null while the broker is unreachable")
    age_seconds: float | None = Field(
        None,
        description="how old this reading is: the api reuses a queue reading for BROKER_PROBE_TTL (and "
        "answers with one up to 5 TTLs old while it takes a fresh one); null with no reading",
    )


class StoreInfo(BaseModel):
    backend: Literal["sqlite", "postgresql"] = Field(
        description="sqlite (DB_PATH) or postgresql (DATABASE_URL)"
    )
    durable: bool | None = Field(
        None,
        description="whether a commit survives power loss: SQLite journal_mode=wal with synchronous=FULL, "
        "PostgreSQL fsync=on with synchronous_commit not off; null until the consumer has recorded it",
    )
    settings: dict[str, str] = Field(default_factory=dict, description="the writer's settings behind it")
    warning: str | None = Field(None, description="what is wrong when it is not durable")


class DeadLetterStats(BaseModel):
    by_reason: dict[str, int] = Field(
        description="messages ever dead-lettered, by the class of their reason (not_json, schema, too_large)"
    )
    kept: int = Field(description="readable at GET /dead-letters")
    dropped: int = Field(description="the oldest, deleted to keep the newest 100,000")


class RetentionInfo(BaseModel):
    events_seconds: float | None = Field(
        description="RETENTION in force (recorded in the store by the consumer); null keeps every event"
    )
    keys_seconds: float | None = Field(
        description="KEY_RETENTION in force; null keeps the keys of expired events forever"
    )


class Gone(BaseModel):
    detail: str
    received_at: str = Field(description="when the consumer stored the event (to the millisecond)")
    expired_at: str = Field(description="when it expired: received_at plus RETENTION")


class Stats(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "received": 5000,
                    "unique_processed": 4000,
                    "duplicate_dropped": 1000,
                    "invalid": 0,
                    "conflicts": 0,
                    "unique_rate": 80.0,
                    "duplicate_rate": 20.0,
                    "topics": ["demo.orders", "demo.auth"],
                    "topic_counts": {"demo.auth": 1900, "demo.orders": 2100},
                    "uptime": 12.5,
                    "uptime_seconds": 12.5,
                    "started_at": "2026-11-22T10:00:00Z",
                    "store": "ok",
                    "queue": {"name": "events.aggregator", "messages": 0},
                    "dead_letter_queue": {"name": "events.dead", "messages": 0},
                    "consumer": {
                        "started_at": "2026-11-22T09:59:58Z",
                        "last_commit_at": "2026-11-22T10:00:10Z",
                        "journal_mode": "wal",
                        "synchronous": "FULL",
                    },
                }
            ]
        }
    )

    received: int = Field(
        description="events in valid messages plus one per invalid message; counts redeliveries"
    )
    unique_processed: int = Field(
        description="events stored over the store's life; stored_events + expired_events"
    )
    duplicate_dropped: int
    invalid: int = Field(description="messages dead-lettered as invalid")
    conflicts: int = Field(description="duplicates whose content differed from the stored event")
    unique_rate: float = Field(
        description="unique_processed as a percentage of received, 2 decimals; 0 if none"
    )
    duplicate_rate: float = Field(
        description="duplicate_dropped as a percentage of received, 2 decimals; 0 if none"
    )
    topics: list[str] = Field(description="topic names in the order they were first stored")
    topic_counts: dict[str, int] = Field(description="events stored per topic over the store's life")
    topic_duplicates: dict[str, int] = Field(default_factory=dict, description="duplicates dropped per topic")
    topic_conflicts: dict[str, int] = Field(default_factory=dict, description="conflicts per topic")
    uptime: float = Field(description="seconds since the api started")
    uptime_seconds: float
    started_at: str
    store: Literal["ok", "missing"] = Field(description="missing until the consumer has created the store")
    store_info: StoreInfo
    queue: QueueInfo
    dead_letter_queue: QueueInfo
    dead_letters: DeadLetterStats | None = Field(
        None, description="the dead letters the store keeps; null until the consumer has created the store"
    )
    consumer: ConsumerInfo
    stored_events: int = Field(0, description="events GET /events can return now (not expired)")
    expired_events: int = Field(0, description="events expired by RETENTION (swept or not yet)")
    oldest_received_at: str | None = Field(None, description="received_at of the oldest readable event")
    retention: RetentionInfo = Field(
        default_factory=lambda: RetentionInfo(events_seconds=None, keys_seconds=None),
        description="the retention in force, as the store records it",
    )
    store_size_bytes: int | None = Field(None, description="the store's size on disk")


class Info(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "service": "eventagg-api",
                    "version": "0.1.0",
                    "api_compat": "default",
                    "uptime_seconds": 12.5,
                    "started_at": "2026-11-22T10:00:00Z",
                    "total_unique_events": 4000,
                    "total_received": 5000,
                    "topics": 8,
                    "store": "ok",
                }
            ]
        }
    )

    service: str = "eventagg-api"
    version: str
    api_compat: str = Field(description="the API_COMPAT profile that shapes the answers")
    uptime_seconds: float = Field(description="seconds since the api started")
    started_at: str
    total_unique_events: int = Field(description="the number of stored events")
    total_received: int = Field(description="`received` of /stats")
    topics: int = Field(description="how many topics have stored events")
    store: Literal["ok", "missing"]


class ComponentHealth(BaseModel):
    status: Literal["ok", "missing", "error", "connected", "unreachable"]
    detail: str | None = None


class Health(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "healthy",
                    "store": {"status": "ok", "detail": None},
                    "broker": {"status": "connected", "detail": None},
                    "consumer": {
                        "started_at": "2026-11-22T09:59:58Z",
                        "last_commit_at": "2026-11-22T10:00:10Z",
                    },
                    "uptime_seconds": 12.5,
                }
            ]
        }
    )

    status: Literal["healthy", "degraded", "unhealthy"]
    store: ComponentHealth
    broker: ComponentHealth
    consumer: ConsumerInfo
    store_info: StoreInfo
    uptime_seconds: float


class StatsSeed003(Stats):
    """/stats under API_COMPAT=seed003: `uptime` in milliseconds."""

    uptime: int = Field(description="milliseconds since the api started")


class StatsSeed004(Stats):
    """/stats under API_COMPAT=seed004: `topics` maps each topic to its stored events."""

    topics: dict[str, int] = Field(description="stored events per topic")  # type: ignore[assignment]
