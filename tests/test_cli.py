"""The deployables as a user meets them: log formats, --help, and configuration errors."""

from __future__ import annotations

import json
from typing import Any

from aio_pika.abc import AbstractRobustConnection

from tests.probes import consumer_count
from tests.processes import Processes, api_get
from tests.waiting import eventually


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every line of the output as a JSON object; fails on the first line that is not one."""
    records = []
    for line in output.splitlines():
        value = json.loads(line)
        assert isinstance(value, dict), line
        records.append(value)
    return records


def log_records(output: str) -> list[dict[str, Any]]:
    records = [r for r in json_lines(output) if "level" in r]
    for r in records:
        assert {"time", "level", "logger", "message"} <= r.keys(), r
    return records


async def test_log_format_json_gives_one_object_per_line_from_every_deployable(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    consumer = procs.consumer(LOG_FORMAT="json")
    api = procs.api(LOG_FORMAT="json")
    await eventually(lambda: consumer_count(amqp, deployment.queue), 30, message="consumer attached")
    await eventually(lambda: api_get(deployment, "/health").status_code == 200, 30, message="api up")
    summary = procs.publish("--count", "50", "--seed", "1", LOG_FORMAT="json", LOG_LEVEL="DEBUG")
    assert summary["exit_code"] == 0
    assert consumer.terminate() == 0
    assert api.terminate() == 0

    consumer_log = log_records(consumer.output())
    starting = next(r for r in consumer_log if r["message"].startswith("consumer starting"))
    assert starting["logger"] == "consumer" and starting["level"] == "INFO"
    assert starting["db_path"] == str(deployment.db_path)
    assert starting["queue"] == deployment.queue
    stopped = next(r for r in consumer_log if r["message"].startswith("consumer stopped"))
    assert (stopped["received"], stopped["unique_processed"], stopped["duplicate_dropped"]) == (50, 40, 10)

    api_log = log_records(api.output())
    assert {"api", "uvicorn.error"} <= {r["logger"] for r in api_log}
    assert any(r["message"] == "Application startup complete." for r in api_log)
    assert next(r for r in api_log if r["logger"] == "api")["port"] == deployment.api_port

    publisher_output = procs.all[-1].output()
    publisher_log = log_records(publisher_output)
    assert any(r["logger"].startswith(("publisher", "contract")) for r in publisher_log), publisher_output


async def test_logs_stay_human_readable_by_default(procs: Processes, amqp: AbstractRobustConnection) -> None:
    deployment = procs.deployment
    consumer = procs.consumer()
    await eventually(lambda: consumer_count(amqp, deployment.queue), 30, message="consumer attached")
    assert consumer.terminate() == 0

    lines = consumer.output().splitlines()
    starting = next(line for line in lines if " consumer starting " in line)
    assert " INFO consumer consumer starting db_path=" in starting
    assert not any(line.startswith("{") for line in lines)
