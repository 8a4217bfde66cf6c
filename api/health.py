"""Health and identity: GET /health (the consumer's state inferred from store and queue), GET /info."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from api.broker import Depths
from api.deps import StateDep, require_read_key
from api.models import ComponentHealth, ConsumerInfo, Health, Info, StoreInfo
from contract import status as status_file
from store import Durability, StoreError

router = APIRouter()


def store_info(durability: Durability) -> StoreInfo:
    return StoreInfo(
        backend=durability.backend,
        durable=durability.durable,
        settings=durability.settings,
        warning=durability.warning,
    )


def consumer_info(
    values: dict[str, str], depths: Depths, stall_seconds: float, reported: status_file.Status | None = None
) -> ConsumerInfo:
    """The consumer as the store shows it (`values`: its last commit), the queue, and its own report."""
    status: Literal["ok", "idle", "stalled", "absent", "connecting", "unknown"] = _consumer_status(
        values.get("last_commit_at"), depths, stall_seconds
    )
    detail = None
    if reported is not None and reported.state == "store_failing":
        status, detail = "stalled", f"store failing since {reported.since}: {reported.detail}"
    elif reported is not None and reported.state == "connecting":
        # The consumer cannot consume (its broker link is down, or its channel is not restored): whatever
        # the queue shows, it is not `ok`.
        status, detail = "connecting", f"since {reported.since}: {reported.detail}"
    return ConsumerInfo(
        status=status,
        detail=detail,
        started_at=values.get("started_at"),
        last_commit_at=values.get("last_commit_at"),
        journal_mode=values.get("journal_mode"),
        synchronous=values.get("synchronous"),
    )


def _consumer_status(
    last_commit_at: str | None, depths: Depths, stall_seconds: float
) -> Literal["ok", "idle", "stalled", "absent", "unknown"]:
    # The consumer cannot write its own distress into a store that is failing, so health is inferred from
    # what the api can see: messages waiting in the queue, consumers attached, and the last commit's age.
    if depths.queue is None:
        return "unknown"
    age = None
    if last_commit_at is not None:
        age = (datetime.now(UTC) - datetime.fromisoformat(last_commit_at)).total_seconds()
    recent = age is not None and age <= stall_seconds
    if depths.queue > 0 and not depths.consumers:
        return "absent"
    if depths.queue > 0 and not recent:
        return "stalled"
    return "ok" if recent else "idle"


@router.get(
    "/health",
    response_model=Health,
    summary="Can the api serve? Store, broker and consumer reported separately",
    description="200 `healthy`, or 200 `degraded` when messages wait but the consumer is stalled (not "
    "committing, e.g. retrying a failing store) or absent, or when the consumer reports it cannot consume "
    "(`connecting`: its broker link or channel is being restored); 503 `unhealthy` when the store exists "
    "but cannot be read. Broker reachability never makes the api unhealthy: reads keep working without it.",
    responses={503: {"model": Health, "description": "the store exists but cannot be read"}},
)
async def health(st: StateDep) -> Health | JSONResponse:
    depths = await st.broker.depths()
    reported = status_file.read_or_none(st.settings.db_path)
    consumer = consumer_info({}, depths, st.settings.consumer_stall_seconds, reported)
    backend = StoreInfo(backend=st.reader.backend)
    try:
        store_status = await st.reader.check()
        store = ComponentHealth(
            status="ok" if store_status == "ok" else "missing",
            detail=None if store_status == "ok" else "the consumer has not created it yet",
        )
        if store_status == "ok":
            snapshot = await st.reader.snapshot()
            consumer = consumer_info(snapshot.consumer, depths, st.settings.consumer_stall_seconds, reported)
            backend = store_info(snapshot.durability)
    except StoreError as exc:
        store = ComponentHealth(status="error", detail=str(exc))
    broker = (
        ComponentHealth(status="connected")
        if st.broker.connected()
        else ComponentHealth(status="unreachable", detail=st.broker.problem())
    )
    status: Literal["healthy", "degraded", "unhealthy"] = "healthy"
    if consumer.status in ("stalled", "absent", "connecting"):
        status = "degraded"
    if store.status == "error":
        status = "unhealthy"
    body = Health(
        status=status,
        store=store,
        broker=broker,
        consumer=consumer,
        store_info=backend,
        uptime_seconds=st.uptime(),
    )
    if body.status == "unhealthy":
        return JSONResponse(body.model_dump(mode="json"), status_code=503)
    return body


@router.get(
    "/info",
    response_model=Info,
    summary="What this service is, how long it has run, how many events it holds",
    dependencies=[Depends(require_read_key)],
)
async def info(request: Request, st: StateDep) -> Info:
    snapshot = await st.reader.snapshot()
    return Info(
        version=request.app.version,
        api_compat=st.settings.api_compat,
        uptime_seconds=st.uptime(),
        started_at=st.started_at,
        # unique_processed moves in the same transaction as the events table, so it is the stored count.
        total_unique_events=snapshot.counters["unique_processed"],
        total_received=snapshot.counters["received"],
        topics=len(snapshot.topic_counts),
        store="ok" if snapshot.store == "ok" else "missing",
    )
