"""The consumer's settings: the shared ones plus batching, prefetch and retry."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, model_validator

from contract.config import CommonSettings, Duration, duration_seconds
from store import Retention


class ConsumerSettings(CommonSettings):
    batch_size: Annotated[int, Field(gt=0, le=10_000, description="messages per transaction")] = 256
    # Batches are group commits: what arrived while the previous commit ran, so nothing needs to wait for
    # company. A wait above 0 keeps an idle consumer's batch open that long (closing after a lull of a quarter
    # of it): fewer, larger transactions for a trickle, each of its events that much later. See bench/README.
    batch_wait: Annotated[
        float, Field(ge=0, le=10, description="seconds an idle consumer's batch waits for company")
    ] = 0.0
    # 0 means "four times the batch": one batch is being committed, the next one waits decoded, and a third
    # must be able to arrive meanwhile, or the broker stalls until the commit's acks free its window. Draining
    # 50,000 single-event messages on a loaded 2-CPU machine (5-6 runs each, interleaved): 2x 1.5-2.1k ev/s,
    # 4x 1.4-2.3k, 8x 0.7-2.3k; no clear winner under that noise, so the smallest that keeps the pipeline fed
    # (close to the reference consumer's 1000), since with envelopes the prefetch is also what bounds memory.
    prefetch: Annotated[int, Field(ge=0, le=65_535)] = 0
    retry_initial: Annotated[float, Field(gt=0)] = 0.5
    retry_max: Annotated[float, Field(gt=0)] = 30.0
    reconnect_interval: Annotated[float, Field(gt=0)] = 2.0
    # A channel not restored within this after a reconnect is given up on that node: on a node whose quorum
    # queue has no majority the restore waits for an answer that never comes.
    restore_timeout: Annotated[
        float, Field(gt=0, le=3600, description="seconds a channel restore may take before the next node")
    ] = 15.0
    metrics_port: Annotated[
        int, Field(ge=0, le=65_535, description="Prometheus metrics port; 0 turns them off")
    ] = 9101

    # Events older than this by received_at are expired: never read again, swept in the background. Their
    # keys stay (a re-send is still a duplicate) until KEY_RETENTION, if set. The store records both; the
    # last consumer to start sets them for every reader and sweeper (store/base.py Retention).
    retention: Duration = None
    retention_sweep_interval: Annotated[
        float,
        BeforeValidator(duration_seconds),
        Field(gt=0, le=86_400, description="time between retention sweeps: 60, 60s, 5m"),
    ] = 60.0
    key_retention: Duration = None
    # GET /events?q= and payload.<field>=: the store's search index, off unless asked for. Indexing every
    # event costs the consumer a third of its drain rate (bench/README.md), more than search is worth to
    # those who never search. The store records it, so the api answers a search of an unindexed store with
    # a 409 saying how to turn it on; turning it on indexes the events already stored.
    search: Annotated[bool, Field(description="on: index events for GET /events?q= and payload.<field>=")] = (
        False
    )

    @model_validator(mode="after")
    def _check_retry(self) -> ConsumerSettings:
        if self.retry_max < self.retry_initial:
            raise ValueError("RETRY_MAX must be at least RETRY_INITIAL")
        return self

    @model_validator(mode="after")
    def _check_key_retention(self) -> ConsumerSettings:
        events, keys = self.retention, self.key_retention
        if keys is not None and events is not None and keys < events:
            raise ValueError("KEY_RETENTION must be at least RETENTION (a stored event keeps its key)")
        if keys is not None and events is None:
            raise ValueError("KEY_RETENTION needs RETENTION: events kept forever keep their keys")
        return self

    def store_retention(self) -> Retention:
        return Retention(self.retention, self.key_retention)

    def effective_prefetch(self) -> int:
        return self.prefetch or min(4 * self.batch_size, 65_535)
