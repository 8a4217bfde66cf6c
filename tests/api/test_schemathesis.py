"""schemathesis against /openapi.json of a real api (real broker, real consumer), in every API_COMPAT
profile: no server error, no request the document calls valid rejected, every answer's status code and body
as the document declares them; and each profile's answers, with stored data behind them, checked against
the document that profile publishes and against the other profiles' documents."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
from aio_pika.abc import AbstractRobustConnection

from api.app import create_app
from api.compat import RESPONSE_MODELS
from api.settings import ApiSettings
from tests.harness.pipeline import start_pipeline
from tests.harness.processes import Processes

# Enough to cover every operation and parameter (schemathesis' coverage phase adds its own cases), small
# enough that one profile takes well under a minute here.
MAX_EXAMPLES = 5


@pytest.mark.parametrize("profile", ["default", "seed003", "seed004"])
async def test_schemathesis_finds_no_server_error_no_rejected_valid_request_and_no_undocumented_answer(
    procs: Processes, amqp: AbstractRobustConnection, tmp_path: Path, profile: str
) -> None:
    deployment = procs.deployment
    # A generous confirm timeout: on a loaded machine a 503 "no confirm in time" is by design, not a finding.
    # Search on in one profile and off in the others: both the searches' answers and their 409 are checked.
    search = "on" if profile == "default" else "off"
    await start_pipeline(
        procs, amqp, consumer_env={"SEARCH": search}, api_env={"API_COMPAT": profile, "PUBLISH_TIMEOUT": "30"}
    )
    started = time.monotonic()

    # A live tail never ends by itself: schemathesis reads one until 20 events or the operation's timeout.
    config = tmp_path / "schemathesis.toml"
    config.write_text('[[operations]]\ninclude-path = "/events/stream"\nrequest-timeout = 1\n')
    run = await asyncio.to_thread(
        subprocess.run,
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "--config-file",
            str(config),
            "run",
            f"{deployment.api_url}/openapi.json",
            "--checks",
            "not_a_server_error,positive_data_acceptance,response_schema_conformance,status_code_conformance,content_type_conformance",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--workers",
            "1",
            "--no-color",
            "--request-timeout",
            "60",
            "--generation-database",
            ":memory:",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )

    report = run.stdout + run.stderr
    # The failures' own lines, each cut short: a reproducing curl command can be megabytes of JSON.
    failures = "\n".join(line[:400] for line in report.splitlines() if line.strip())
    assert run.returncode == 0, failures[-8000:]
    assert "No issues found" in report, failures[-3000:]
    cases = next((line.strip() for line in report.splitlines() if "generated" in line), "")
    print(f"schemathesis profile={profile}: {cases}; {time.monotonic() - started:.1f}s")
    api_log = "".join(p.output() for p in procs.all if p.module == "api")
    assert "Traceback" not in api_log


def response_schema(document: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any] | None:
    """The JSON schema `document` gives the answer, with its components so that $refs resolve; None when
    the document declares that status without a JSON body. A status it does not declare fails the test."""
    responses = document["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} answered {status}, not in {sorted(responses)}"
    content = responses[str(status)].get("content", {})
    if "application/json" not in content:
        return None
    return {**content["application/json"]["schema"], "components": document["components"]}


def conforms(document: dict[str, Any], path: str, method: str, answer: httpx.Response) -> list[str]:
    """What is wrong with `answer` against `document` (empty: it conforms)."""
    schema = response_schema(document, path, method, answer.status_code)
    if schema is None:
        return []
    return [
        str(error).splitlines()[0] for error in jsonschema_rs.validator_for(schema).iter_errors(answer.json())
    ]


def other_document(profile: str) -> dict[str, Any]:
    """The OpenAPI document another profile's api publishes, built in-process (nothing runs)."""
    document: dict[str, Any] = create_app(ApiSettings(api_compat=profile)).openapi()
    return document


def event(event_id: str, topic: str = "conform.a") -> dict[str, Any]:
    return {"topic": topic, "event_id": event_id, "timestamp": "2026-05-01T08:00:00Z", "source": "conform"}


# The answers a profile shapes: each must match its own profile's document and not the other profiles'.
SHAPED = {("/events", "get"), ("/stats", "get"), ("/publish", "post"), ("/events", "post")}


@pytest.mark.parametrize("profile", ["default", "seed003", "seed004"])
async def test_every_answer_of_a_profile_matches_the_openapi_it_publishes_and_its_shaped_ones_no_other(
    procs: Processes, amqp: AbstractRobustConnection, profile: str
) -> None:
    deployment = procs.deployment
    # Search on in one profile and off in the others: both the searches' answers and their 409 are checked.
    search = "on" if profile == "default" else "off"
    await start_pipeline(
        procs, amqp, consumer_env={"SEARCH": search}, api_env={"API_COMPAT": profile, "PUBLISH_TIMEOUT": "30"}
    )
    async with httpx.AsyncClient(base_url=deployment.api_url, timeout=60) as client:
        document = (await client.get("/openapi.json")).json()
        stored = [event("a"), event("b"), event("c", "conform.b")]
        # Answers with data behind them: every shape a client of this profile reads, errors included.
        answers = [
            ("/publish", "post", await client.post("/publish", json=stored)),
            ("/publish", "post", await client.post("/publish", params={"wait": "stored"}, json=stored)),
            ("/events", "post", await client.post("/events", json={"events": [event("d")]})),
            ("/events", "post", await client.post("/events", params={"wait": "stored"}, json=[event("e")])),
            ("/publish", "post", await client.post("/publish", json=[{**event("x"), "timestamp": "soon"}])),
            ("/events", "get", await client.get("/events")),
            ("/events", "get", await client.get("/events", params={"topic": "conform.a", "limit": 1})),
            ("/events", "get", await client.get("/events", params={"limit": 5000})),
            ("/events/{topic}/{event_id}", "get", await client.get("/events/conform.a/a")),
            ("/events/{topic}/{event_id}", "get", await client.get("/events/conform.a/nope")),
            ("/stats", "get", await client.get("/stats")),
            ("/info", "get", await client.get("/info")),
            ("/health", "get", await client.get("/health")),
        ]
    statuses = [answer.status_code for _, _, answer in answers]
    assert statuses == [200, 200, 200, 200, 422, 200, 200, 422, 200, 404, 200, 200, 200], statuses
    assert len(events_in(profile, answers[5][2].json())) == 5  # the reads saw the stored events
    for path, method, answer in answers:
        assert conforms(document, path, method, answer) == [], (path, method, answer.text[:500])
    # The document describes this profile's shapes, not a permissive union: another profile's document
    # refuses each answer this profile shapes differently.
    for other in {"default", "seed003", "seed004"} - {profile}:
        foreign = other_document(other)
        for path, method, answer in answers:
            if (
                (path, method) in SHAPED
                and answer.status_code == 200
                and differs(profile, other, path, method)
            ):
                assert conforms(foreign, path, method, answer), (other, path, method, answer.text[:300])


def differs(profile: str, other: str, path: str, method: str) -> bool:
    """Whether two profiles shape this answer differently in a way a schema can tell (api/compat.py,
    RESPONSE_MODELS). seed003's /stats differs from the default's in the unit of `uptime` only: its whole
    milliseconds are also a valid number of seconds, so only the default's fractional seconds can be told
    from seed003's integer by schema (checked the other way round)."""
    if (profile, other, path) == ("seed003", "default", "/stats"):
        return False
    return RESPONSE_MODELS[profile].get((path, method)) is not RESPONSE_MODELS[other].get((path, method))


def events_in(profile: str, body: Any) -> list[Any]:
    return list(body if profile == "default" else body["events"])
