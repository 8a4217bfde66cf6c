"""A test's running pipeline: start consumer and api, start a load, read exact outcomes via the api."""

from __future__ import annotations

from typing import Any

from aio_pika.abc import AbstractRobustConnection

from contract.schema import COUNTERS
from tests.harness.probes import consumer_count, queue_depth
from tests.harness.processes import Deployment, Process, Processes, api_get
from tests.harness.waiting import eventually


def stats(deployment: Deployment) -> dict[str, Any]:
    response = api_get(deployment, "/stats")
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def counters(deployment: Deployment) -> dict[str, int]:
    data = stats(deployment)
    return {name: int(data[name]) for name in COUNTERS}


async def start_pipeline(
    procs: Processes,
    amqp: AbstractRobustConnection | None,
    *,
    consumer_env: dict[str, str] | None = None,
    api_env: dict[str, str] | None = None,
    with_consumer: bool = True,
) -> tuple[Process | None, Process]:
    """Start the consumer (unless told not to) and the api; return once both are serving."""
    deployment = procs.deployment
    consumer = procs.consumer(**(consumer_env or {})) if with_consumer else None
    api = procs.api(**(api_env or {}))
    if consumer is not None and amqp is not None:

        async def attached() -> int:
            consumer.still_running()
            return await consumer_count(amqp, deployment.queue)

        await eventually(attached, 30, message="consumer attached")

    def api_up() -> bool:
        api.still_running()
        return api_get(deployment, "/health").status_code == 200

    await eventually(api_up, 30, message="api up")
    if amqp is not None:
        await eventually(
            lambda: api_get(deployment, "/health").json()["broker"]["status"] == "connected",
            30,
            message="api connected to the broker",
        )
    return consumer, api


def start_load(procs: Processes, count: int, seed: int, *args: str, **env: str) -> Process:
    """The publisher CLI in the background: `count` events with 20% re-sent, reproducible by `seed`."""
    return procs.start(
        "publisher",
        "--count",
        str(count),
        "--duplicates",
        "0.2",
        "--seed",
        str(seed),
        *args,
        "--json",
        "--quiet",
        **env,
    )


async def past(deployment: Deployment, received: int) -> None:
    """Wait (polling fast) until the consumer has taken at least `received` events."""
    await eventually(
        lambda: counters(deployment)["received"] >= received,
        120,
        0.01,
        message=f"consumer past {received} events",
    )


async def drained(amqp: AbstractRobustConnection, queue: str) -> bool:
    return await queue_depth(amqp, queue) == 0


async def settled(deployment: Deployment, amqp: AbstractRobustConnection, received: int) -> dict[str, int]:
    """Wait until the consumer has taken `received` events and the queue is empty; return the counters."""
    await eventually(lambda: counters(deployment)["received"] >= received, 60, message=f"received {received}")
    await eventually(lambda: drained(amqp, deployment.queue), 30, message="queue drained")
    return counters(deployment)
