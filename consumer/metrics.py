"""The consumer's Prometheus metrics on METRICS_PORT, kept up to date by the consumer's hooks: once per
committed batch or per store state change, never per message, so the consume loop's cost stays as it was.
The only consumer module that imports prometheus-client."""

from __future__ import annotations

import logging

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from consumer.hooks import Commit, Hooks, Settlement
from store import StoreError

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 256, 512, 1024, 4096, 10_000)
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# The AMQP timestamp is whole seconds, so nothing finer than a second means anything here; the upper
# buckets are for a backlog drained after an outage.
LAG_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)

LAG_HELP = (
    "seconds from the publish of each committed batch's first delivery to the batch's commit, one "
    "observation per batch: the publish time is the message's AMQP timestamp property, whole seconds, which "
    "this product's publishers (the publisher CLI, the api's publish shim) set; it reads up to 1 s high, and "
    "a batch whose first delivery has no timestamp is not observed"
)


class ConsumerMetrics(Hooks):
    """Counters since this process started; the store's own counters (GET /metrics on the api) are the
    totals that survive restarts."""

    def __init__(self) -> None:
        # Without this every counter gets a `_created` twin series that nothing here needs.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry = CollectorRegistry(auto_describe=True)

        def counter(name: str, help_text: str) -> Counter:
            return Counter(f"eventagg_consumer_{name}", help_text, registry=registry)

        self.batches = counter("batches_committed", "batches committed")
        self.messages = counter("messages_committed", "deliveries whose batch committed")
        self.acked = counter("deliveries_acked", "valid deliveries acked after their batch committed")
        self.rejected = counter(
            "deliveries_rejected",
            "invalid deliveries rejected to the dead-letter queue after their batch committed",
        )
        self.unsettled = counter(
            "deliveries_unsettled", "deliveries left unsettled: their channel closed first (redelivered)"
        )
        self.redeliveries = counter(
            "redeliveries",
            "committed deliveries that arrived with the AMQP redelivered flag (delivered before, not acked)",
        )
        self.store_failures = counter("store_failures", "failed store attempts (each retried)")
        self.received = counter("events_received", "events taken by this run")
        self.stored = counter("events_stored", "new events stored by this run")
        self.duplicates = counter("events_duplicate", "duplicates dropped by this run")
        self.backoff = Gauge(
            "eventagg_consumer_store_backoff_seconds",
            "the current wait before retrying a failing store; 0 while it works",
            registry=registry,
        )
        self.batch_size = Histogram(
            "eventagg_consumer_batch_messages",
            "messages per committed batch",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "eventagg_consumer_commit_seconds",
            "time to apply and commit a batch (retries while the store fails included)",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.batch_wait = Histogram(
            "eventagg_consumer_batch_wait_seconds",
            "seconds from a batch's first delivery in hand to the start of its commit: its wait for company "
            "and for the commit before it (none when nothing else commits)",
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.lag = Histogram(
            "eventagg_consumer_publish_to_commit_lag_seconds",
            LAG_HELP,
            buckets=LAG_BUCKETS,
            registry=registry,
        )

    def on_store_ok(self) -> None:
        self.backoff.set(0)

    def on_store_error(self, error: StoreError, backoff: float) -> None:
        self.store_failures.inc()
        self.backoff.set(backoff)

    def on_commit(self, commit: Commit) -> None:
        result = commit.result
        self.batches.inc()
        self.messages.inc(commit.messages)
        self.redeliveries.inc(commit.redelivered)
        self.received.inc(result.received)
        self.stored.inc(result.unique_processed)
        self.duplicates.inc(result.duplicate_dropped)
        self.batch_size.observe(commit.messages)
        self.commit_seconds.observe(commit.seconds)
        self.batch_wait.observe(commit.waited)
        if commit.lag is not None:
            # A publisher's clock ahead of this one must not make a negative lag.
            self.lag.observe(max(commit.lag, 0.0))

    def on_settle(self, settlement: Settlement) -> None:
        self.acked.inc(settlement.acked)
        self.rejected.inc(settlement.rejected)
        self.unsettled.inc(settlement.unsettled)

    def serve(self, port: int) -> bool:
        """Serve them on `port`. A port in use is logged and the consumer runs on without them."""
        try:
            start_http_server(port, registry=self.registry)
        except OSError as exc:
            log.warning("metrics not served port=%d error=%s; set METRICS_PORT (0 turns them off)", port, exc)
            return False
        log.info("metrics served port=%d path=/metrics", port)
        return True
