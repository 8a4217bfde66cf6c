"""The consumer's Prometheus metrics on METRICS_PORT: read from the run's summary at scrape time, plus two
histograms observed once per committed batch (never per message: the consume loop's cost stays as it was)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from consumer.service import Summary

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 256, 512, 1024, 4096, 10_000)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ConsumerMetrics:
    def __init__(self, summary: Summary) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_SummaryCollector(summary))
        self.batch_size = Histogram(
            "eventagg_consumer_batch_messages",
            "messages per committed batch",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "eventagg_consumer_commit_seconds",
            "time to apply and commit a batch (retries while the store fails included)",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )

    def batch_committed(self, messages: int, seconds: float) -> None:
        self.batch_size.observe(messages)
        self.commit_seconds.observe(seconds)


class _SummaryCollector(Collector):
    """The run's own tallies (consumer/service.py Summary), as counters since this process started."""

    def __init__(self, summary: Summary) -> None:
        self._summary = summary

    def collect(self) -> Iterable[Metric]:
        s = self._summary
        t = s.totals
        counters = [
            ("batches_committed", "batches committed", s.batches),
            ("messages_committed", "deliveries whose batch committed", s.messages),
            ("deliveries_rejected", "invalid deliveries rejected to the dead-letter queue", t.invalid),
            (
                "deliveries_unsettled",
                "deliveries left unsettled: their channel closed (redelivered)",
                s.unsettled,
            ),
            ("store_failures", "failed store attempts (each retried)", s.commit_failures),
            ("events_received", "events taken by this run", t.received),
            ("events_stored", "new events stored by this run", t.unique_processed),
            ("events_duplicate", "duplicates dropped by this run", t.duplicate_dropped),
        ]
        families: list[Metric] = [
            CounterMetricFamily(f"eventagg_consumer_{name}", help_text, value=value)
            for name, help_text, value in counters
        ]
        families.append(
            GaugeMetricFamily(
                "eventagg_consumer_store_backoff_seconds",
                "the current wait before retrying a failing store; 0 while it works",
                value=s.backoff,
            )
        )
        return families


def serve(port: int, summary: Summary) -> ConsumerMetrics | None:
    """Metrics on `port` (0: off). A port in use is logged and the consumer runs on without them."""
    if port == 0:
        return None
    metrics = ConsumerMetrics(summary)
    try:
        start_http_server(port, registry=metrics.registry)
    except OSError as exc:
        log.warning("metrics not served port=%d error=%s; set METRICS_PORT (0 turns them off)", port, exc)
        return None
    log.info("metrics served port=%d path=/metrics", port)
    return metrics
