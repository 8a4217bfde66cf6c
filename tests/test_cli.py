"""The deployables as a user meets them: log formats, --help, and configuration errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.harness.pipeline import start_pipeline
from tests.harness.probes import consumer_count
from tests.harness.processes import REPO, Process, Processes, api_get, free_port
from tests.harness.waiting import eventually


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
    assert starting["store"] == f"DB_PATH={deployment.db_path}"
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
    assert " INFO consumer consumer starting store=DB_PATH=" in starting
    assert not any(line.startswith("{") for line in lines)


def run(module: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("module", ["consumer", "api", "publisher"])
def test_help_prints_usage_and_the_environment_and_connects_nowhere(module: str, tmp_path: Path) -> None:
    with socket.socket() as listener:
        # A broker address that only counts: nothing may connect to it while --help runs.
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        db_path = tmp_path / "store" / "events.db"
        done = run(module, "--help", AMQP_URL=f"amqp://guest:guest@127.0.0.1:{port}/", DB_PATH=str(db_path))
        with pytest.raises(BlockingIOError):
            listener.accept()

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m {module} [-h]")
    variables = {line.split()[0] for line in done.stdout.splitlines() if re.match(r"  [A-Z][A-Z_]+ ", line)}
    assert {"AMQP_URL", "DB_PATH", "AMQP_EXCHANGE", "AMQP_QUEUE", "LOG_LEVEL", "LOG_FORMAT"} <= variables
    assert ("BATCH_SIZE" in variables) == (module == "consumer")
    assert ("API_PORT" in variables) == (module == "api")
    assert ({"ENVELOPE_SIZE", "CONFIRM_TIMEOUT", "API_URL"} <= variables) == (module == "publisher")
    # The publisher's subcommand and exit codes are in its --help, not only in the README.
    assert ("python -m publisher dead-letters [--json" in done.stdout) == (module == "publisher")
    assert ("4 --verify or --check failed, or the api it needs is" in done.stdout) == (module == "publisher")
    assert not db_path.parent.exists()
    assert done.stderr == ""


@pytest.mark.parametrize("module", ["consumer", "api", "publisher"])
def test_a_bad_environment_variable_is_named_as_the_variable(module: str) -> None:
    done = run(module, LOG_FORMAT="yaml", MAX_PAYLOAD_BYTES="0", AMQP_URL="http://user:s3cret@host/")

    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0] == f"{module}: invalid configuration:"
    assert "  LOG_FORMAT: Input should be 'text' or 'json' (got 'yaml')" in lines
    assert "  MAX_PAYLOAD_BYTES: Input should be greater than 0 (got '0')" in lines
    assert any(line.startswith("  AMQP_URL: ") for line in lines)
    assert "s3cret" not in done.stderr
    assert "log_format" not in done.stderr and "max_payload_bytes" not in done.stderr


def test_an_option_that_overrides_a_variable_is_named_too() -> None:
    done = run("publisher", "--envelope-size", "0")

    assert done.returncode == 2
    assert "  ENVELOPE_SIZE (here --envelope-size): Input should be greater than or equal to 1" in done.stderr


def test_a_topic_prefix_that_makes_invalid_topics_is_bad_usage_and_connects_nowhere() -> None:
    # The generated load skips the model's validation (publisher/load.py), so its topic names are checked
    # before anything starts. AMQP_URL names a port nothing listens on: had it tried, it would say so.
    done = run("publisher", "--topic-prefix", "no spaces", AMQP_URL=f"amqp://127.0.0.1:{free_port()}/")

    assert done.returncode == 2
    assert done.stderr.startswith("publisher: --topic-prefix 'no spaces' makes invalid topic names such as ")
    assert "cannot reach" not in done.stderr


async def test_a_422_echoes_only_a_bounded_prefix_of_the_input(procs: Processes) -> None:
    deployment = procs.deployment
    procs.api()
    await eventually(lambda: api_get(deployment, "/health").status_code == 200, 30, message="api up")
    huge = "x" * 100_000
    event = {"topic": "t", "event_id": "e", "timestamp": "2026-05-01T08:00:00Z", "source": huge}
    with httpx.Client(base_url=deployment.api_url, timeout=30) as client:
        answers = [
            client.post("/publish", json=[event]),
            client.post("/publish", json={"events": huge}),
            client.post("/publish", json=[{**event, "source": "s", "payload": [huge]}]),
            client.get("/events", params={"topic": huge[:5000]}),
            client.get("/events", params={"after": huge[:5000]}),
        ]

    for answer in answers:
        assert answer.status_code == 422, answer.text
        assert len(answer.content) < 1_500, answer.text[:300]
        for item in answer.json()["detail"]:
            assert set(item) == {"type", "loc", "msg", "input"}
            echoed = item["input"]
            assert isinstance(echoed, str) and echoed.startswith(("x" * 50, '["xxxxx')), item
            assert echoed.endswith("characters, truncated)"), item
    locations = [[item["loc"] for item in answer.json()["detail"]] for answer in answers]
    assert locations == [
        [["body", 0, "source"]],
        [["body", "events"]],
        [["body", 0, "payload"]],
        [["query", "topic"]],
        [["query", "after"]],
    ]


async def test_a_publisher_run_prints_its_report_and_no_log_lines_at_info(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    summary = procs.publish("--count", "10", "--seed", "3")

    assert summary["exit_code"] == 0
    # The time spent generating the load is measured and left out of the rate, which is the sending's.
    assert 0 < summary["generating"] < summary["elapsed"]
    sending = summary["elapsed"] - summary["generating"]
    assert summary["events_per_second"] == pytest.approx(summary["confirmed"] / sending, rel=1e-9)
    assert (summary["sent"], summary["written"], summary["confirmed"]) == (10, 10, 10)
    assert [line[:1] for line in procs.all[-1].output().splitlines()] == ["{"]
    debug = procs.publish("--count", "10", "--seed", "3", LOG_LEVEL="DEBUG")
    assert debug["exit_code"] == 0
    assert " DEBUG contract.topology topology declared exchange=" in procs.all[-1].output()


# 4 both ways: the README's exit code for "the api it needs is unreachable".
@pytest.mark.parametrize(("options", "code"), [(("--verify",), 4), (("--via", "http"), 4)])
async def test_an_unreachable_api_is_named_within_seconds_and_nothing_is_published(
    procs: Processes, amqp: AbstractRobustConnection, options: tuple[str, ...], code: int
) -> None:
    deployment = procs.deployment
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    process = procs.start("publisher", "--count", "20", "--quiet", *options, API_URL=dead)

    assert process.wait(30) == code
    assert time.monotonic() - started < 15
    output = process.output()
    assert f"publisher: the api at {dead} is unreachable (ConnectError" in output
    assert output.rstrip().endswith("nothing was published")
    assert "broker" not in output
    assert not await exchange_exists(amqp, deployment.exchange)


async def exchange_exists(amqp: AbstractRobustConnection, name: str) -> bool:
    channel = await amqp.channel()
    try:
        await channel.declare_exchange(name, passive=True)
        return True
    except aio_pika.exceptions.ChannelClosed:
        return False
    finally:
        if not channel.is_closed:
            await channel.close()


async def test_verify_says_what_it_is_doing(procs: Processes, amqp: AbstractRobustConnection) -> None:
    await start_pipeline(procs, amqp)
    process = procs.start("publisher", "--count", "200", "--seed", "5", "--verify")

    assert process.wait(120) == 0
    lines = process.output().splitlines()
    assert "verifying   waiting until the api shows the events took effect (up to 60s)" in lines
    assert lines[-1].startswith("verify      ok: all 160 unique events stored")


async def test_ctrl_c_of_the_publisher_prints_one_line_and_what_was_confirmed(
    procs: Processes, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    confirmed_log = tmp_path / "confirmed.jsonl"
    process = procs.start(
        "publisher",
        "--count",
        "300000",
        "--quiet",
        "--confirmed-log",
        str(confirmed_log),
        "--envelope-size",
        "10",
    )

    def confirmed_lines() -> int:
        return len(confirmed_log.read_text().splitlines()) if confirmed_log.exists() else 0

    await eventually(lambda: confirmed_lines() >= 1000, 120, message="some events confirmed")
    process.popen.send_signal(signal.SIGINT)

    assert process.wait(15) == 130
    lines = process.output().splitlines()
    confirmed = confirmed_lines()
    assert 1000 <= confirmed < 300_000
    report = {line[:12].strip(): line[12:] for line in lines if line[:1].isalpha() and line[11:12] == " "}
    sent, written = int(report["sent"]), int(report["written"])
    # The load is generated as it is sent: at the Ctrl-C only part of it existed, and what was written to
    # the broker is said apart from what it confirmed.
    assert confirmed <= written <= sent < 300_000, report
    assert int(report["unique"]) + int(report["duplicates"]) == sent
    assert [line for line in lines if line.startswith("publisher:")] == [
        f"publisher: interrupted; {written} events written to the broker, {confirmed} of them confirmed; "
        "the rest may or may not have arrived (re-sending them is safe: duplicates are dropped)"
    ]
    assert f"confirmed   {confirmed}" in lines
    assert f"UNCONFIRMED {300_000 - confirmed}  (safe to re-send: the consumer deduplicates)" in lines
    assert not [line for line in lines if " WARNING " in line or "Traceback" in line]


async def test_on_a_terminal_the_publisher_shows_progress_from_its_start_while_the_load_is_made(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    total = 300_000
    master, terminal = pty.openpty()
    popen = subprocess.Popen(
        [sys.executable, "-m", "publisher", "--count", str(total), "--envelope-size", "10"],
        cwd=REPO,
        env=procs.deployment.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    shown = bytearray()
    line = re.compile(rb"\r\x1b\[Kwritten (\d+)/%d  confirmed (\d+)" % total)
    try:

        def confirmed_shown() -> list[tuple[int, int]]:
            while select.select([master], [], [], 0)[0]:
                shown.extend(os.read(master, 65536))
            return [(int(w), int(c)) for w, c in line.findall(shown) if int(c) > 0]

        progress = await eventually(confirmed_shown, 120, 0.05, message="a progress line with confirms")
        # The first line came at the start, before any confirm; later ones while the load was still being
        # made and sent (with the load generated up front, nothing showed for seconds).
        first = line.search(shown)
        assert first is not None and first[2] == b"0", bytes(shown[:200])
        written, confirmed = progress[0]
        assert 0 < confirmed <= written < total
        popen.send_signal(signal.SIGINT)
        assert popen.wait(15) == 130
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait(10)
        os.close(master)


def listening(port: int) -> set[str]:
    """The IPv4 addresses with a socket listening on `port`, from the kernel's table."""
    found = set()
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = row.split()[1], row.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


async def test_outside_docker_the_api_listens_on_loopback_unless_api_host_says_otherwise(
    procs: Processes,
) -> None:
    deployment = procs.deployment
    env = {k: v for k, v in deployment.env().items() if k != "API_HOST"}
    api = Process("api", deployment, [], env)
    procs.all.append(api)
    try:
        await eventually(lambda: api_get(deployment, "/health").status_code == 200, 60, message="api up")
        assert listening(deployment.api_port) == {"127.0.0.1"}
    finally:
        api.close()
    # The one setting that changes it, as the api image sets it (Dockerfile.api: ENV API_HOST=0.0.0.0).
    everywhere = procs.api(API_HOST="0.0.0.0")
    await eventually(lambda: api_get(deployment, "/health").status_code == 200, 60, message="api up")
    assert listening(deployment.api_port) == {"0.0.0.0"}
    everywhere.terminate()
    assert "API_HOST=0.0.0.0" in (REPO / "Dockerfile.api").read_text().split("\nCMD")[0]


class Gate:
    """A broker address that refuses connections (nothing listens) until opened, then forwards them to the
    real broker; `close` cuts every forwarded connection and refuses again."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()

    async def _forward(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        broker_reader, broker_writer = await asyncio.open_connection(*self.target)
        self._writers |= {client_writer, broker_writer}

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        await asyncio.gather(pump(client_reader, broker_writer), pump(broker_reader, client_writer))


async def test_an_unreachable_broker_is_one_warning_per_change_of_state_and_nothing_from_aiormq(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    broker = urlsplit(deployment.amqp_url)
    gate = Gate(free_port(), (broker.hostname or "127.0.0.1", broker.port or 5672))
    url = f"amqp://guest:guest@127.0.0.1:{gate.port}/"
    # DEBUG, so that each attempt shows (as a DEBUG line) and aiormq's loggers are as loud as they get.
    consumer = procs.consumer(AMQP_URL=url, RECONNECT_INTERVAL="0.1", LOG_LEVEL="DEBUG")

    def attempts() -> int:
        return len(re.findall(r" DEBUG broker\.connection broker unreachable ", consumer.output()))

    try:
        await eventually(lambda: attempts() >= 5, 60, message="five refused connects")
        await gate.open()
        await eventually(lambda: consumer_count(amqp, deployment.queue), 60, message="consumer attached")
        before = attempts()
        await gate.close()  # the broker goes away under a connected consumer
        await eventually(lambda: attempts() >= before + 5, 60, message="five refused reconnects")
        await gate.open()
        await eventually(
            lambda: consumer.output().count("connected to the broker") == 2, 60, message="reconnected"
        )
        await eventually(lambda: consumer_count(amqp, deployment.queue), 60, message="consumer attached")
        assert consumer.terminate() == 0
    finally:
        await gate.close()
    lines = consumer.output().splitlines()
    # The consumer's own connection (its commit notices have one of their own, which says the same).
    warnings = [
        line.split(" WARNING ", 1)[1]
        for line in lines
        if " WARNING broker.connection " in line and "connection=eventagg-consumer " in line
    ]
    assert [w.split(" node=")[0] for w in warnings] == [
        "broker.connection broker unreachable",
        "broker.connection connected to the broker",
        "broker.connection connection to the broker lost",
        "broker.connection connected to the broker",
    ], warnings
    errors = [n for n, ln in enumerate(lines) if " ERROR " in ln or "error when creating transport" in ln]
    assert not errors, "\n".join(lines[errors[0] : errors[0] + 40])


def peak_rss_mib(process: Process) -> float:
    for line in Path(f"/proc/{process.popen.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_a_publisher_fed_on_stdin_holds_no_event_once_it_is_confirmed(
    procs: Processes, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    """160 MB of events through a publisher whose stdin stays open, as a service's log pipe would: its peak
    RSS stays far below what it sent (it kept every event sent, for a --verify it was not asked for)."""
    await start_pipeline(procs, amqp)
    confirmed = tmp_path / "confirmed.jsonl"
    publisher = procs.start(
        "publisher", "--file", "-", "--quiet", "--confirmed-log", str(confirmed), stdin=b"", keep_stdin=True
    )
    assert publisher.popen.stdin is not None
    count, filler = 80_000, "x" * 2000
    for start in range(0, count, 1000):
        chunk = "".join(
            json.dumps(
                {
                    "topic": "pipe",
                    "event_id": f"e{n}",
                    "timestamp": "2026-12-07T08:00:00Z",
                    "source": "svc",
                    "payload": {"line": filler, "n": n},
                }
            )
            + "\n"
            for n in range(start, start + 1000)
        )
        await asyncio.to_thread(publisher.popen.stdin.write, chunk.encode())
    await asyncio.to_thread(publisher.popen.stdin.flush)

    def confirmed_lines() -> int:
        if not confirmed.exists():
            return 0
        with confirmed.open() as lines:
            return sum(1 for _ in lines)

    await eventually(lambda: confirmed_lines() >= count, 180, 0.5, message="every event confirmed")
    peak = peak_rss_mib(publisher)  # while it still runs, its stdin open
    publisher.popen.stdin.close()
    assert await asyncio.to_thread(publisher.wait, 60) == 0, publisher.output()
    assert peak < 120, f"the publisher peaked at {peak:.0f} MiB after sending {count * 2 // 1000} MB"
