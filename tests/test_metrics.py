"""GET /metrics against real processes: the store's counters, depths, HTTP and publish metrics, exactly."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Any

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.pipeline import COUNTERS, settled, start_pipeline, stats
from tests.harness.probes import queue_depth
from tests.harness.processes import Deployment, Processes, api_get, free_port
from tests.harness.waiting import eventually

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(deployment: Deployment) -> Samples:
    response = api_get(deployment, "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def consumer_samples(port: int) -> dict[str, float]:
    """The consumer's metrics on `port` without labels, by sample name."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def event(event_id: str, topic: str) -> dict[str, Any]:
    return {"topic": topic, "event_id": event_id, "timestamp": "2026-05-01T08:00:00Z", "source": "metrics"}


async def test_metrics_report_the_store_counters_depths_and_traffic_exactly(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)
    body = [event("m-1", "metrics.a"), event("m-2", "metrics.a"), event("m-3", "metrics.b")]
    with httpx.Client(base_url=deployment.api_url, timeout=30) as client:
        assert client.post("/publish", json=body).status_code == 200
        assert client.post("/publish", json=body[:1]).status_code == 200  # a re-send: one duplicate
        assert client.post("/publish", json=[{"topic": "metrics.a"}]).status_code == 422
    channel = await amqp.channel()
    exchange = await channel.get_exchange(deployment.exchange)
    await exchange.publish(aio_pika.Message(b"{not json"), "metrics.a")
    await channel.close()
    assert await settled(deployment, amqp, 5) == {
        "received": 5,
        "unique_processed": 3,
        "duplicate_dropped": 1,
        "invalid": 1,
        "conflicts": 0,
    }
    with httpx.Client(base_url=deployment.api_url, timeout=30) as client:
        assert client.get("/events/metrics.a/m-1").status_code == 200
        assert client.get("/events/metrics.a/nope").status_code == 404

    async def dead_lettered() -> bool:
        return await queue_depth(amqp, deployment.dead_letter_queue) == 1

    await eventually(dead_lettered, 30, message="the invalid message dead-lettered")
    # The api caches depths for BROKER_PROBE_TTL; wait until its reading shows the dead letter too.
    await eventually(lambda: stats(deployment)["dead_letter_queue"]["messages"] == 1, 30, message="depth")
    scraped_from = time.time()
    samples = scrape(deployment)
    scraped_by = time.time()
    current = stats(deployment)

    assert {name: samples[(f"eventagg_{name}_total", ())] for name in COUNTERS} == {
        name: current[name] for name in COUNTERS
    }
    assert {
        dict(labels)["topic"]: value
        for (name, labels), value in samples.items()
        if name == "eventagg_topic_unique_processed_total"
    } == {"metrics.a": 2, "metrics.b": 1}
    assert {
        dict(labels)["topic"]: value
        for (name, labels), value in samples.items()
        if name == "eventagg_topic_duplicate_dropped_total"
    } == {"metrics.a": 1, "metrics.b": 0}
    assert samples[("eventagg_store_up", ())] == 1
    assert samples[("eventagg_broker_up", ())] == 1
    assert samples[("eventagg_queue_messages", (("queue", deployment.queue),))] == 0
    assert samples[("eventagg_queue_consumers", (("queue", deployment.queue),))] == 1
    assert samples[("eventagg_dead_letter_messages", (("queue", deployment.dead_letter_queue),))] == 1
    # The commit time is /stats' own last_commit_at (the invalid message's batch was the last one), and the
    # age is the scrape's clock minus it: the scrape happened between scraped_from and scraped_by.
    committed = datetime.fromisoformat(current["consumer"]["last_commit_at"]).timestamp()
    stamped = samples[("eventagg_consumer_last_commit_timestamp_seconds", ())]
    assert stamped == pytest.approx(committed, abs=1e-3)
    age = samples[("eventagg_consumer_last_commit_age_seconds", ())]
    assert scraped_from - committed - 0.01 <= age <= scraped_by - committed + 0.01, (age, committed)
    # The shim: two confirmed requests of 3 and 1 events, none unavailable.
    assert samples[("eventagg_publish_confirm_seconds_count", ())] == 2
    assert samples[("eventagg_publish_confirmed_events_total", ())] == 4
    assert not [name for name, _ in samples if name == "eventagg_publish_unavailable_total"]
    # HTTP traffic by route template (not raw path) and status.
    requests = {
        (dict(labels)["method"], dict(labels)["route"], dict(labels)["status"]): value
        for (name, labels), value in samples.items()
        if name == "eventagg_http_requests_total"
    }
    assert requests[("POST", "/publish", "200")] == 2
    assert requests[("POST", "/publish", "422")] == 1
    assert requests[("GET", "/events/{topic}/{event_id:path}", "200")] == 1
    assert requests[("GET", "/events/{topic}/{event_id:path}", "404")] == 1
    route_labels = (("method", "POST"), ("route", "/publish"))
    assert samples[("eventagg_http_request_duration_seconds_count", route_labels)] == 3
    assert samples[("eventagg_http_request_duration_seconds_bucket", (("le", "+Inf"), *route_labels))] == 3


async def test_metrics_count_publish_503s_and_leave_out_depths_while_the_broker_is_unreachable(
    procs: Processes,
) -> None:
    deployment = procs.deployment
    procs.api(AMQP_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/", PUBLISH_TIMEOUT="0.5")
    await eventually(lambda: api_get(deployment, "/health").status_code == 200, 30, message="api up")
    with httpx.Client(base_url=deployment.api_url, timeout=30) as client:
        for index in range(2):
            assert (
                client.post("/publish", content=json.dumps(event(f"d-{index}", "m.down"))).status_code == 503
            )
        assert client.get("/no/such/path").status_code == 404

    samples = scrape(deployment)

    assert samples[("eventagg_publish_unavailable_total", (("reason", "unreachable"),))] == 2
    assert samples[("eventagg_broker_up", ())] == 0
    assert samples[("eventagg_store_up", ())] == 0
    assert {name: samples[(f"eventagg_{name}_total", ())] for name in COUNTERS} == dict.fromkeys(COUNTERS, 0)
    names = {name for name, _ in samples}
    assert not names & {"eventagg_queue_messages", "eventagg_dead_letter_messages"}
    assert "eventagg_consumer_last_commit_age_seconds" not in names
    unmatched = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    assert samples[("eventagg_http_requests_total", unmatched)] == 1


async def test_the_consumer_serves_its_own_metrics_counted_per_batch(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    port = free_port()
    await start_pipeline(procs, amqp, consumer_env={"METRICS_PORT": str(port)})
    summary = procs.publish("--count", "500", "--seed", "9")
    assert summary["exit_code"] == 0
    channel = await amqp.channel()
    exchange = await channel.get_exchange(deployment.exchange)
    await exchange.publish(aio_pika.Message(b"{not json"), "metrics.a")
    await channel.close()
    await settled(deployment, amqp, 501)

    samples = await eventually(
        lambda: (
            (found := consumer_samples(port))["eventagg_consumer_events_received_total"] == 501
            and found["eventagg_consumer_deliveries_acked_total"] > 0
            and found
        ),
        30,
        message="consumer metrics caught up",
    )
    assert samples["eventagg_consumer_events_stored_total"] == 400
    assert samples["eventagg_consumer_events_duplicate_total"] == 100
    assert samples["eventagg_consumer_deliveries_rejected_total"] == 1
    assert (
        samples["eventagg_consumer_deliveries_acked_total"]
        == samples["eventagg_consumer_messages_committed_total"] - 1
    )
    assert samples["eventagg_consumer_deliveries_unsettled_total"] == 0
    assert samples["eventagg_consumer_redeliveries_total"] == 0
    assert samples["eventagg_consumer_store_failures_total"] == 0
    assert samples["eventagg_consumer_store_backoff_seconds"] == 0
    batches = samples["eventagg_consumer_batches_committed_total"]
    assert batches >= 1
    assert samples["eventagg_consumer_batch_messages_count"] == batches
    assert samples["eventagg_consumer_commit_seconds_count"] == batches
    assert (
        samples["eventagg_consumer_batch_messages_sum"]
        == samples["eventagg_consumer_messages_committed_total"]
    )


async def test_the_consumer_counts_redeliveries_exactly_and_observes_the_publish_lag_once_per_batch(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    port, count, given_back = free_port(), 600, 37
    await start_pipeline(procs, amqp, with_consumer=False)
    published_from = time.time()
    summary = procs.publish(
        "--count", str(count), "--duplicates", "0", "--envelope-size", "1", "--seed", "11"
    )
    assert summary["exit_code"] == 0
    published_until = time.time()
    # Deliveries taken and given back unacked (their channel closes): the broker redelivers exactly these,
    # with the redelivered flag.
    channel = await amqp.channel()
    queue = await channel.get_queue(deployment.queue, ensure=False)
    taken = [await queue.get(no_ack=False) for _ in range(given_back)]
    assert not any(message.redelivered for message in taken)
    await channel.close()

    consumer_started = time.time()
    consumer = procs.consumer(METRICS_PORT=str(port), BATCH_SIZE="50")
    samples = await eventually(
        lambda: (
            (found := consumer_samples(port))["eventagg_consumer_deliveries_acked_total"] == count and found
        ),
        60,
        message="every delivery committed and acked",
    )
    committed_until = time.time()

    assert samples["eventagg_consumer_messages_committed_total"] == count
    assert samples["eventagg_consumer_redeliveries_total"] == given_back
    batches = samples["eventagg_consumer_batches_committed_total"]
    assert batches >= count / 50
    # Every message carries the publisher's timestamp (whole seconds): one observation per batch, each at
    # least from the last publish to the consumer's start, at most from the first publish (rounded down to
    # its second) to the last commit.
    assert samples["eventagg_consumer_publish_to_commit_lag_seconds_count"] == batches
    lag = samples["eventagg_consumer_publish_to_commit_lag_seconds_sum"]
    assert (
        batches * (consumer_started - published_until)
        <= lag
        <= batches * (committed_until - published_from + 1)
    )
    assert lag > 0

    # The api's waiting publish path stamps its messages too.
    with httpx.Client(base_url=deployment.api_url, timeout=30) as client:
        answer = client.post("/publish", params={"wait": "stored"}, json=[event("lag-1", "metrics.lag")])
        assert answer.status_code == 200, answer.text
    samples = await eventually(
        lambda: (
            (found := consumer_samples(port))["eventagg_consumer_deliveries_acked_total"] == count + 1
            and found
        ),
        30,
        message="the waiting publish acked",
    )
    assert samples["eventagg_consumer_publish_to_commit_lag_seconds_count"] == batches + 1
    assert samples["eventagg_consumer_batches_committed_total"] == batches + 1

    assert consumer.terminate() == 0
    assert re.search(
        rf"consumer stopped messages={count + 1} .* redelivered={given_back} unsettled=0 ", consumer.output()
    )
