"""The api's Prometheus metrics: HTTP traffic, the publish shim, and store and broker read at scrape time."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import StateDep, require_read_key
from store import Holdings

# The classic text format: every Prometheus version and most other scrapers read it.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# The store's counters as /stats names them, with what each counts.
STORE_COUNTERS = {
    "received": "events in valid messages plus one per invalid message, redeliveries included",
    "unique_processed": "events stored (each (topic, event_id) once)",
    "duplicate_dropped": "events dropped because their key was already stored",
    "invalid": "messages dead-lettered as invalid",
    "conflicts": "duplicates whose content differed from the stored event",
}

# Request latencies of this api span a cached /stats (about 1 ms) to a publish that waits out a slow broker.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONFIRM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# A path that matched no route is counted under this name: raw paths would make a series per typo.
UNMATCHED = "unmatched"


@dataclass(frozen=True, slots=True)
class Scrape:
    """What the store and the broker said at the moment of a scrape."""

    store_ok: bool
    counters: Mapping[str, int]
    topic_counts: Mapping[str, int]
    topic_duplicates: Mapping[str, int]
    topic_conflicts: Mapping[str, int]
    last_commit_at: str | None
    broker_connected: bool
    queue: str
    queue_messages: int | None
    queue_consumers: int | None
    dead_letter_queue: str
    dead_letter_messages: int | None
    holdings: Holdings | None = None


class ApiMetrics:
    """One registry per app (tests build several apps in one process), not prometheus-client's global one."""

    def __init__(self) -> None:
        # Without this every counter gets a `_created` twin series that nothing here needs.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "eventagg_http_requests",
            "HTTP requests answered, by method, route template and status code",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "eventagg_http_request_duration_seconds",
            "time from request to the end of the answer, by method and route template",
            ("method", "route"),
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.publish_confirm = Histogram(
            "eventagg_publish_confirm_seconds",
            "POST /publish: time from handing the events to the broker to its last confirm",
            buckets=CONFIRM_BUCKETS,
            registry=self.registry,
        )
        self.publish_events = Counter(
            "eventagg_publish_confirmed_events",
            "events published through the api and confirmed by the broker",
            registry=self.registry,
        )
        self.publish_unavailable = Counter(
            "eventagg_publish_unavailable",
            "POST /publish answered 503, by reason (unreachable, timeout, not_confirmed)",
            ("reason",),
            registry=self.registry,
        )
        # labels() hashes and locks; the children are looked up once per combination instead.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.http_requests.labels(method, route, str(status)),
                self.http_duration.labels(method, route),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def publish_confirmed(self, events: int, seconds: float) -> None:
        self.publish_confirm.observe(seconds)
        self.publish_events.inc(events)

    def exposition(self, scrape: Scrape) -> bytes:
        return generate_latest(self.registry) + generate_latest(_ScrapeCollector(scrape))


class _ScrapeCollector(Collector):
    """The store's counters and the broker's depths, as read for one scrape (never cached between scrapes)."""

    def __init__(self, scrape: Scrape) -> None:
        self._scrape = scrape

    def collect(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        s = self._scrape
        yield GaugeMetricFamily(
            "eventagg_store_up",
            "1 when the store exists and was read, 0 before the consumer created it",
            value=1 if s.store_ok else 0,
        )
        for name, help_text in STORE_COUNTERS.items():
            yield CounterMetricFamily(f"eventagg_{name}_total", help_text, value=s.counters.get(name, 0))
        for name, help_text, values in (
            ("unique_processed", "events stored, by topic", s.topic_counts),
            ("duplicate_dropped", "duplicates dropped, by topic", s.topic_duplicates),
            ("conflicts", "duplicates whose content differed, by topic", s.topic_conflicts),
        ):
            per_topic = CounterMetricFamily(f"eventagg_topic_{name}_total", help_text, labels=("topic",))
            for topic, count in values.items():
                per_topic.add_metric((topic,), count)
            yield per_topic
        if s.holdings is not None:
            yield from _holdings(s.holdings)
        if s.last_commit_at is not None:
            committed = datetime.fromisoformat(s.last_commit_at).timestamp()
            yield GaugeMetricFamily(
                "eventagg_consumer_last_commit_timestamp_seconds",
                "when the consumer last committed a batch (Unix time)",
                value=committed,
            )
            yield GaugeMetricFamily(
                "eventagg_consumer_last_commit_age_seconds",
                "seconds since the consumer last committed a batch",
                value=max(0.0, time.time() - committed),
            )
        yield GaugeMetricFamily(
            "eventagg_broker_up", "1 while the api is connected to the broker", value=int(s.broker_connected)
        )
        # Depths are left out while the broker cannot be asked: a 0 would read as "drained".
        if s.queue_messages is not None:
            yield _labelled(
                "eventagg_queue_messages",
                "ready messages in the work queue",
                "queue",
                s.queue,
                s.queue_messages,
            )
        if s.queue_consumers is not None:
            yield _labelled(
                "eventagg_queue_consumers",
                "consumers attached to the work queue",
                "queue",
                s.queue,
                s.queue_consumers,
            )
        if s.dead_letter_messages is not None:
            yield _labelled(
                "eventagg_dead_letter_messages",
                "messages waiting in the dead-letter queue",
                "queue",
                s.dead_letter_queue,
                s.dead_letter_messages,
            )


def _holdings(held: Holdings) -> Iterator[Metric]:
    yield GaugeMetricFamily("eventagg_stored_events", "events GET /events can return now", held.stored_events)
    yield GaugeMetricFamily(
        "eventagg_expired_events", "events expired by RETENTION, swept or not yet", held.expired_events
    )
    if held.oldest_received_at is not None:
        yield GaugeMetricFamily(
            "eventagg_oldest_event_timestamp_seconds",
            "received_at of the oldest readable event (Unix time)",
            value=datetime.fromisoformat(held.oldest_received_at).timestamp(),
        )
    # 0 when unset: keep forever.
    for name, span in (("retention", held.retention.events), ("key_retention", held.retention.keys)):
        yield GaugeMetricFamily(
            f"eventagg_{name}_seconds",
            f"{name.upper()} in force, as the store records it; 0 keeps forever",
            value=span.total_seconds() if span else 0.0,
        )
    if held.size_bytes is not None:
        yield GaugeMetricFamily("eventagg_store_size_bytes", "the store's size on disk", held.size_bytes)


def _labelled(name: str, help_text: str, label: str, value: str, sample: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=(label,))
    family.add_metric((value,), sample)
    return family


class HttpMetricsMiddleware:
    """Counts and times every HTTP request by route template (`/events/{topic}/{event_id}`), not raw path.

    Pure ASGI rather than Starlette's BaseHTTPMiddleware, which runs the app in a separate task per request.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router stores the matched route in the scope it was handed, which is this one.
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            self.metrics.observe_request(scope["method"], template, status, time.perf_counter() - started)


def metrics_of(request: Request) -> ApiMetrics:
    value: ApiMetrics = request.app.state.metrics
    return value


router = APIRouter()


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics: store counters, queue depths, consumer commit age, HTTP and publish",
    description="Text exposition format. The store's counters and the queue depths are read at scrape time "
    "(depths come from the same short cache as /stats), so any number of api replicas report the same store.",
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format 0.0.4"}},
    dependencies=[Depends(require_read_key)],
)
async def metrics(request: Request, st: StateDep) -> Response:
    snapshot = await st.reader.snapshot()
    depths = await st.broker.depths()
    topology = st.settings.topology()
    scrape = Scrape(
        store_ok=snapshot.store == "ok",
        counters=snapshot.counters,
        topic_counts=snapshot.topic_counts,
        topic_duplicates=snapshot.topic_duplicates,
        topic_conflicts=snapshot.topic_conflicts,
        last_commit_at=snapshot.consumer.get("last_commit_at"),
        broker_connected=st.broker.connected(),
        queue=topology.queue,
        queue_messages=depths.queue,
        queue_consumers=depths.consumers,
        dead_letter_queue=topology.dead_letter_queue,
        dead_letter_messages=depths.dead_letter_queue,
        holdings=snapshot.holdings,
    )
    return Response(metrics_of(request).exposition(scrape), media_type=CONTENT_TYPE)
