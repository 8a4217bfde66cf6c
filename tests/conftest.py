"""Shared fixtures: the real broker, a per-test deployment (unique names, own store), processes, AMQP."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.harness import crash
from tests.harness.broker import Broker, BrokerError, find_broker
from tests.harness.cleanups import Cleanups
from tests.harness.postgres import PostgresUnavailable, fresh_schema, session_database
from tests.harness.processes import Deployment, Processes


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    try:
        found = find_broker(tmp_path_factory.mktemp("broker"))
    except BrokerError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no RabbitMQ for the test suite: {exc}")
        pytest.skip(f"no RabbitMQ for the test suite: {exc}")
    try:
        yield found
    finally:
        found.stop()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """The URL of a PostgreSQL database made for this test session and dropped after it."""
    try:
        with session_database() as url:
            yield url
    except PostgresUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no PostgreSQL for the test suite: {exc}")
        pytest.skip(f"no PostgreSQL for the test suite: {exc}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`@pytest.mark.backends("sqlite", "postgres")` on a test (or its module) runs it once per store backend,
    through the deployment fixture; unmarked tests run on SQLite, the default."""
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is not None and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", marker.args, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    name = str(getattr(request, "param", "sqlite"))
    if name not in ("sqlite", "postgres"):
        raise ValueError(f"unknown store backend {name!r} in a backends marker")
    return name


@pytest.fixture
def deployment(
    broker: Broker, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    name = f"t{uuid.uuid4().hex[:10]}"
    logs = tmp_path / "logs"
    logs.mkdir()
    database_url = None
    if backend == "postgres":
        # An empty schema of the session's throwaway database: every test starts from an empty store.
        database_url = fresh_schema(request.getfixturevalue("postgres_database"))
    deployed = Deployment(
        amqp_url=broker.url,
        exchange=f"{name}.events",
        queue=f"{name}.aggregator",
        db_path=tmp_path / "store" / "events.db",
        logs=logs,
        database_url=database_url,
    )
    yield deployed
    _delete_topology(broker.url, deployed)


def _delete_topology(url: str, deployed: Deployment) -> None:
    import asyncio

    async def delete() -> None:
        try:
            connection = await aio_pika.connect(url, timeout=5)
        except Exception:  # the broker may be down after a crash test; its data dir goes with it
            return
        async with connection:
            for queue in (deployed.queue, deployed.dead_letter_queue):
                channel = await connection.channel()
                try:
                    await channel.queue_delete(queue)
                except Exception:
                    pass
                finally:
                    if not channel.is_closed:
                        await channel.close()
            channel = await connection.channel()
            for exchange in (deployed.exchange, f"{deployed.exchange}.dlx"):
                try:
                    await channel.exchange_delete(exchange)
                except Exception:
                    channel = await connection.channel()
            if not channel.is_closed:
                await channel.close()

    asyncio.run(delete())


@pytest.fixture
def cleanups() -> Iterator[Cleanups]:
    """Register what a test starts (`cleanups.add(proxy.close)`); undone at teardown, the last first."""
    with Cleanups() as registered:
        yield registered


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test shows what its processes said last: CI keeps nothing else of them."""
    report: pytest.TestReport = yield
    running = getattr(item, "funcargs", {}).get("procs")
    if report.failed and isinstance(running, Processes):
        for process in running.all:
            report.sections.append(
                (f"{process.module} pid {process.popen.pid}, the end of its log", process.output()[-3000:])
            )
    return report


@pytest.fixture
def procs(deployment: Deployment) -> Iterator[Processes]:
    running = Processes(deployment)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
async def amqp(broker: Broker) -> AsyncIterator[AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(broker.url)
    async with connection:
        yield connection


# Run only when the -m expression names them: the docker tests (make test-docker) build images and run the
# compose file on real engines for many minutes; the soak (make test-soak) runs two 3-node clusters for
# minutes. A `-m "not crash"` must not pull them in.
OPT_IN_MARKERS = ("docker", "soak")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    named = config.getoption("markexpr") or ""
    for marker in OPT_IN_MARKERS:
        if marker in named:
            continue
        deselected = [item for item in items if item.get_closest_marker(marker)]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if not item.get_closest_marker(marker)]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The crash checker's table: one row per crash scenario that reached its final check."""
    if crash.ROWS:
        terminalreporter.write_sep("=", f"crash checker (CRASH_SCALE={crash.SCALE:g})")
        terminalreporter.write_line(crash.table(crash.ROWS))
