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
        json_schema_extra={"examples": [{"status": "accepted", "received": 2, "accepted": 2, "rejected": 0}]}
    )

    status: Literal["accepted"] = "accepted"
    received: int
    accepted: int
    rejected: int = 0


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
    status: Literal["ok", "idle", "stalled", "absent", "unknown"] = Field(
        "unknown",
        description="ok: committed recently; idle: nothing waiting; stalled: messages wait but no commit for "
        "CONSUMER_STALL_SECONDS (e.g. the store is failing and it is retrying); absent: messages wait and no "
        "consumer is attached; unknown: broker unreachable",
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
                    "topics": ["demo.auth", "demo.orders"],
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
    unique_processed: int = Field(description="events stored; equals the number of stored events")
    duplicate_dropped: int
    invalid: int = Field(description="messages dead-lettered as invalid")
    conflicts: int = Field(description="duplicates whose content differed from the stored event")
    topics: list[str]
    topic_counts: dict[str, int] = Field(description="stored events per topic")
    uptime: float = Field(description="seconds since the api started")
    uptime_seconds: float
    started_at: str
    store: Literal["ok", "missing"] = Field(description="missing until the consumer has created the store")
    queue: QueueInfo
    dead_letter_queue: QueueInfo
    consumer: ConsumerInfo


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
    uptime_seconds: float
