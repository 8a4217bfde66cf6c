"""The README's Docker commands run for real (`make test-docker`; marker `docker`, not part of `make test`).

On two engines: Compose v2 on Docker Engine 26 (an inner engine, see tests/harness/docker.py), and Debian's
docker-compose v1 on the host's engine (Debian 12: 20.10). Each runs `docker compose -f compose/compose.yaml
up --build` to the demo publisher's verified result, the crash demonstration (SIGKILL to the consumer inside
its container, then every event looked up), Ctrl-C + `down` + `up` keeping the counters, and `down -v`
deleting the volumes. With no engine that can run: a failure under CI=true, a skip with the reason elsewhere.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.harness.deploy import DEPLOYABLES, REPO, Dockerfile, compose_config
from tests.harness.docker import (
    Engine,
    EngineUnavailable,
    InnerEngine,
    Up,
    ensure_base_images,
    host_engine,
    leftovers,
    one_run_at_a_time,
    remove_leftovers,
    run,
    say,
    start_host_engine,
    unavailable,
)
from tests.harness.waiting import eventually_sync

pytestmark = [pytest.mark.docker, pytest.mark.timeout(3600)]

COMPOSE_FILE = "compose/compose.yaml"
# The overrides of compose.yaml that get a real run of their own, where they exist (one scenario each).
OVERRIDES = [name for name in ("postgres", "cluster") if (REPO / "compose" / f"compose.{name}.yaml").exists()]
DEMO_EVENTS, DEMO_UNIQUE, DEMO_DUPLICATES = 5000, 4000, 1000
CRASH_EVENTS, CRASH_UNIQUE = 20000, 16000
USER = ("eventagg", "eventagg")
# The first `up --build` of a machine builds three images, pip installing from an index; on a busy 2-core
# machine that took minutes. Later runs reuse the build cache.
UP_WITHIN = 900.0
HEALTHY_WITHIN = 120.0
# The README's kill: the consumer process, by the pid in its status file, from inside its container.
KILL_CONSUMER = "import json, os; os.kill(json.load(open('/data/events.db.consumer.json'))['pid'], 9)"
# The same wherever DB_PATH puts the status file (compose.postgres.yaml: /tmp).
KILL_BY_DB_PATH = (
    "import json, os; os.kill(json.load(open(os.environ['DB_PATH'] + '.consumer.json'))['pid'], 9)"
)


@pytest.fixture(scope="module")
def machine() -> Iterator[None]:
    with one_run_at_a_time():
        yield


@pytest.fixture(scope="module")
def host_version(machine: None) -> str:
    try:
        version = start_host_engine()
    except EngineUnavailable as exc:
        unavailable(f"no Docker engine can run here: {exc}")
    say(f"host engine: Docker Engine {version}")
    return version


@pytest.fixture(scope="module")
def base_images(host_version: str) -> dict[str, str]:
    images = {Dockerfile.of(name).one("FROM") for name in DEPLOYABLES}
    for override in [(), *(((REPO / "compose" / f"compose.{name}.yaml"),) for name in OVERRIDES)]:
        services = compose_config(overrides=override)["services"].values()
        images |= {spec["image"] for spec in services if "image" in spec}
    return ensure_base_images(images)


@pytest.fixture(scope="module")
def inner_engine(base_images: dict[str, str]) -> Iterator[Engine]:
    inner = InnerEngine()
    try:
        yield inner.start(base_images)
    finally:
        inner.remove()


@pytest.fixture(params=["compose-v2-engine-26", "compose-v1-host-engine"])
def engine(request: pytest.FixtureRequest, base_images: dict[str, str]) -> Engine:
    if request.param == "compose-v1-host-engine":
        return host_engine()
    inner: Engine = request.getfixturevalue("inner_engine")
    return inner


class Project:
    """The compose project `eventagg` on one engine, driven by the README's commands."""

    def __init__(self, engine: Engine, logs: Path, files: list[str]) -> None:
        self.engine = engine
        self.logs = logs
        self.files = [option for name in files for option in ("-f", name)]
        self.ups: list[Up] = []
        # Debian's docker-compose v1 asks for a terminal for `exec` and `run` unless told -T; a user at a
        # terminal types the README's commands as they are, a script needs the -T (v2 needs none).
        self.no_tty = ["-T"] if engine.compose == ["docker-compose"] else []

    def argv(self, *args: str) -> list[str]:
        return [*self.engine.prefix, *self.engine.compose, *self.files, *args]

    def compose(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run(self.argv(*args), timeout=timeout)

    def up(self) -> Up:
        up = Up(self.engine, self.files, self.logs / f"up-{len(self.ups)}.log")
        self.ups.append(up)
        return up

    def container(self, service: str, index: int = 1) -> str:
        """The id of a service's container (`index`: which replica), running or stopped."""
        ids = self.compose("ps", "-a", "-q", service).stdout.split()
        number = '{{index .Config.Labels "com.docker.compose.container-number"}}'
        found = [
            i
            for i in ids
            if self.engine.docker("inspect", "--format", number, i).stdout.strip() == str(index)
        ]
        assert len(found) == 1, f"{service} #{index}: containers {ids}"
        return found[0]

    def inspect(self, service: str, template: str, index: int = 1) -> str:
        container = self.container(service, index)
        return self.engine.docker("inspect", "--format", template, container).stdout.strip()

    def stats(self) -> dict[str, int]:
        data = self.engine.get_json("http://127.0.0.1:8080/stats")
        return {k: data[k] for k in ("received", "unique_processed", "duplicate_dropped", "invalid")}

    def management(self, path: str) -> Any:
        return self.engine.get_json(f"http://127.0.0.1:15672/api/{path}", auth=USER)


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def deployed(engine: Engine, logs: Path, files: list[str]) -> Iterator[Project]:
    """The project on that engine, and afterwards (also on failure) nothing of it left: `down -v`, then
    whatever that missed. It must not exist before: the host's engine may hold a user's own."""
    found = leftovers(engine)
    if found and engine.prefix:
        # The inner engine's whole state is this harness's: an earlier, interrupted run left these.
        assert not remove_leftovers(engine)
    elif found:
        pytest.fail(
            f"a compose project named eventagg already exists on the host engine ({found}): this test would "
            "use it and then delete its volumes. Remove it (docker-compose -f compose/compose.yaml down -v) "
            "or run the test on another machine."
        )
    if not engine.prefix:
        busy = [port for port in (8080, 15672) if port_in_use(port)]
        assert not busy, f"127.0.0.1 ports {busy} are taken here; the README's command publishes them"
    say(
        f"{engine.name}: Docker Engine {engine.version()}, compose {engine.compose_version()}, "
        f"{' '.join(files)}"
    )
    project = Project(engine, logs, files)
    try:
        yield project
    finally:
        for up in project.ups:
            up.kill()
        down = run(project.argv("down", "-v", "--remove-orphans", "-t", "10"), timeout=180, check=False)
        left = remove_leftovers(engine)
        assert not left, f"left on the engine after `down -v` ({down.stderr[-2000:]}): {left}"


@pytest.fixture
def project(engine: Engine, tmp_path: Path) -> Iterator[Project]:
    with deployed(engine, tmp_path, [COMPOSE_FILE]) as project:
        yield project


def wait_for_demo(up: Up, timeout: float) -> str:
    """The demo publisher's exit, and its output as `up` shows it."""
    exited = up.wait_for(r"publisher[-_]1 exited with code (\d+)", timeout, "the demo publisher's exit")
    output = up.output()
    assert exited[1] == "0", output[-6000:]
    for line in (
        f"sent        {DEMO_EVENTS}",
        f"unique      {DEMO_UNIQUE}",
        f"duplicates  {DEMO_DUPLICATES}",
        f"confirmed   {DEMO_EVENTS}",
    ):
        assert f"| {line}\n" in output, (line, output[-6000:])
    verified = (
        f"| verify      ok: a sample of 1000 of {DEMO_UNIQUE} unique events stored; received +{DEMO_EVENTS}, "
        f"unique +{DEMO_UNIQUE}, duplicates +{DEMO_DUPLICATES}\n"
    )
    assert verified in output, output[-6000:]
    return output


def service_of(node: str) -> str:
    """The compose service of a RabbitMQ node name: rabbit@<hostname>, and each node's hostname is its
    service's name (compose.yaml, compose.cluster.yaml)."""
    return node.split("@", 1)[1]


def quorum_leader(project: Project) -> str:
    """The service whose node leads events.aggregator now, as the management API says."""
    queue = project.management("queues/%2F/events.aggregator")
    assert queue["type"] == "quorum", queue
    return service_of(queue["leader"])


def queue_online(project: Project) -> list[str]:
    return list(project.management("queues/%2F/events.aggregator").get("online") or [])


def consumer_node(project: Project) -> str:
    """The service whose node the consumer's connection is on, as the management API says."""
    found = [
        c["node"]
        for c in project.management("connections")
        if c["client_properties"].get("connection_name") == "eventagg-consumer"
    ]
    assert len(found) == 1, found
    return service_of(found[0])


def wait_healthy(project: Project, service: str, index: int = 1) -> None:
    eventually_sync(
        lambda: project.inspect(service, "{{.State.Health.Status}}", index) == "healthy",
        HEALTHY_WITHIN,
        interval=1.0,
        message=f"{service} #{index} healthy",
    )


def kill_consumer(project: Project, index: int, command: str = KILL_CONSUMER) -> None:
    """The README's kill: SIGKILL to the consumer process inside its container (replica `index`)."""
    replica = ["--index", str(index)] if index != 1 else []
    kill = run(
        project.argv("exec", *project.no_tty, *replica, "consumer", "python", "-c", command),
        timeout=60,
        check=False,
    )
    # The consumer's death ends its container (the init exits with it), and that kills whatever was exec'd
    # into the container: `exec` then reports 137, unless the python that sent the kill had already exited.
    # Either way, the RestartCount the callers check shows the consumer really died.
    assert kill.returncode in (0, 137), kill


def crash_load(project: Project, kill: Callable[[], None], lap: Callable[[str], None]) -> int:
    """The crash demonstration on top of what is stored: 20,000 new events with --verify-all, `kill` run as
    soon as the consumers store them. Returns how many events were redelivered after their batch's commit."""
    before = project.stats()
    load_log = project.logs / f"crash-load-{before['received']}.log"
    with load_log.open("wb") as out:
        load = subprocess.Popen(
            project.argv(
                "run", "--rm", *project.no_tty, "publisher",
                "python", "-m", "publisher", "--count", str(CRASH_EVENTS), "--verify-all",
            ),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        # As soon as the new load is being stored: the kill lands while the consumers work.
        before_kill = eventually_sync(
            lambda: (s := project.stats())["received"] > before["received"] and s,
            120,
            interval=0.2,
            message="the consumer storing the crash load",
        )
        kill()
        lap(f"killed with received={before_kill['received']}")
        # --verify-all looks up 16,000 events one request each: minutes on a busy 2-core machine.
        code = load.wait(900)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait(30)
    output = load_log.read_text(errors="replace")
    assert code == 0, output[-4000:]
    assert f"verify      ok: all {CRASH_UNIQUE} unique events stored; " in output, output[-4000:]
    # The kill landed before the whole load was stored.
    assert before_kill["received"] < before["received"] + CRASH_EVENTS
    after = project.stats()
    # Every unique event exactly once; what a redelivery adds shows in received and duplicate_dropped alike,
    # and only when the kill fell between a batch's commit and its ack (usually it does not: then the batch
    # in hand was not committed, and its redelivery is counted as if it were the first delivery).
    redelivered = after["duplicate_dropped"] - before["duplicate_dropped"] - (CRASH_EVENTS - CRASH_UNIQUE)
    assert after == {
        "received": before["received"] + CRASH_EVENTS + redelivered,
        "unique_processed": before["unique_processed"] + CRASH_UNIQUE,
        "duplicate_dropped": before["duplicate_dropped"] + CRASH_EVENTS - CRASH_UNIQUE + redelivered,
        "invalid": 0,
    }
    assert redelivered >= 0
    lap(f"crash load verified; events redelivered after their commit: {redelivered}")
    return redelivered


def test_readme_commands_run_the_demo_survive_a_consumer_kill_keep_counters_and_reset(
    project: Project,
) -> None:
    started = time.monotonic()

    def lap(what: str) -> None:
        say(f"{project.engine.name}: {what} at +{time.monotonic() - started:.0f} s")

    # 1. `docker compose -f compose/compose.yaml up --build`, to the demo publisher's verified result.
    up = project.up()
    wait_for_demo(up, UP_WITHIN)
    lap("demo publisher verified")
    assert project.stats() == {
        "received": DEMO_EVENTS,
        "unique_processed": DEMO_UNIQUE,
        "duplicate_dropped": DEMO_DUPLICATES,
        "invalid": 0,
    }
    for service in ("rabbitmq", "consumer", "api"):
        wait_healthy(project, service)
    # AMQP stays inside the compose network: only the management UI is published (and the api's 8080).
    assert json.loads(project.inspect("rabbitmq", "{{json .HostConfig.PortBindings}}")) == {
        "15672/tcp": [{"HostIp": "127.0.0.1", "HostPort": "15672"}]
    }
    # The management UI as the README describes it: the quorum queue with one consumer, both connections.
    queue = project.management("queues/%2F/events.aggregator")
    assert (queue["type"], queue["consumers"], queue["messages"]) == ("quorum", 1, 0)
    assert {e["name"] for e in project.management("exchanges/%2F")} >= {"events", "events.dlx"}
    eventually_sync(
        lambda: (
            {c["client_properties"].get("connection_name") for c in project.management("connections")}
            >= {"eventagg-consumer", "eventagg-api"}
        ),
        30,
        interval=1.0,
        message="the consumer's and the api's broker connections",
    )

    # 2. The crash demonstration: a bigger load, SIGKILL to the consumer inside its container while it works.
    redelivered = crash_load(project, lambda: kill_consumer(project, 1), lap)
    assert project.inspect("consumer", "{{.RestartCount}}") == "1"
    wait_healthy(project, "consumer")
    assert "(healthy)" in project.compose("ps", "consumer").stdout

    # 3. Ctrl-C stops the services gracefully; `down` removes the containers and keeps the volumes.
    up.interrupt()
    for service in ("consumer", "api"):
        assert project.inspect(service, "{{.State.Status}} {{.State.ExitCode}}") == "exited 0", service
    assert "consumer stopped messages=" in project.compose("logs", "--no-color", "consumer").stdout
    project.compose("down")
    kept = leftovers(project.engine)
    assert set(kept) == {"volume"}, kept
    assert len(kept["volume"]) == 2
    lap("Ctrl-C and down")

    # 4. `up --build` again: the same store, and the demo publisher adds 5,000 more.
    again = project.up()
    wait_for_demo(again, UP_WITHIN)
    assert project.stats() == {
        "received": 2 * DEMO_EVENTS + CRASH_EVENTS + redelivered,
        "unique_processed": 2 * DEMO_UNIQUE + CRASH_UNIQUE,
        "duplicate_dropped": 2 * DEMO_DUPLICATES + CRASH_EVENTS - CRASH_UNIQUE + redelivered,
        "invalid": 0,
    }
    lap("second up verified, counters kept")

    # 5. `down -v`: the store and the broker's data go with the containers.
    again.interrupt()
    project.compose("down", "-v")
    assert leftovers(project.engine) == {}
    lap("down -v")


@pytest.mark.parametrize("override", OVERRIDES)
def test_override_runs_the_demo_and_survives_a_consumer_or_node_killed(
    override: str, inner_engine: Engine, tmp_path: Path
) -> None:
    """compose.postgres.yaml (two consumers on PostgreSQL): one consumer SIGKILLed inside its container.
    compose.cluster.yaml (three RabbitMQ nodes): the quorum leader SIGKILLed, then the consumer's node, each
    while a crash load is stored."""
    started = time.monotonic()

    def lap(what: str) -> None:
        say(f"compose.{override}.yaml: {what} at +{time.monotonic() - started:.0f} s")

    with deployed(inner_engine, tmp_path, [COMPOSE_FILE, f"compose/compose.{override}.yaml"]) as project:
        up = project.up()
        wait_for_demo(up, UP_WITHIN)
        lap("demo publisher verified")
        assert project.stats() == {
            "received": DEMO_EVENTS,
            "unique_processed": DEMO_UNIQUE,
            "duplicate_dropped": DEMO_DUPLICATES,
            "invalid": 0,
        }
        if override == "postgres":
            for index in (1, 2):
                wait_healthy(project, "consumer", index)
            queue = project.management("queues/%2F/events.aggregator")
            assert queue["consumers"] == 2
            crash_load(project, lambda: kill_consumer(project, 2, KILL_BY_DB_PATH), lap)
            assert [project.inspect("consumer", "{{.RestartCount}}", i) for i in (1, 2)] == ["0", "1"]
            wait_healthy(project, "consumer", 2)
        else:
            nodes = ["rabbitmq", "rabbitmq-2", "rabbitmq-3"]
            for node in nodes:
                wait_healthy(project, node)
            running = sorted(n["name"] for n in project.management("nodes") if n["running"])
            assert running == [f"rabbit@{node}" for node in nodes]
            queue = project.management("queues/%2F/events.aggregator")
            assert sorted(queue["members"]) == running
            # SIGKILL from outside (compose's kill): Docker leaves a node it was told to kill stopped. First
            # the quorum queue's leader, then the node the consumer is connected to, each read from the
            # management API just before its kill (the two may be one node; each kill is its own load).
            for role, which in (("the quorum leader", quorum_leader), ("the consumer's node", consumer_node)):
                victim = which(project)
                assert victim in nodes, (role, victim)
                crash_load(project, lambda v=victim: project.compose("kill", v), lap)
                assert project.inspect(victim, "{{.State.Status}}") == "exited", (role, victim)
                lap(f"{role} {victim} killed mid-load, everything stored once")
                if role == "the quorum leader" and victim != "rabbitmq":
                    # (rabbitmq is the node that publishes the management API: not asked while it is down.)
                    assert quorum_leader(project) != victim, "the queue kept a dead leader"
                project.compose("start", victim)
                wait_healthy(project, victim)
                eventually_sync(
                    lambda: len(queue_online(project)) == 3,
                    HEALTHY_WITHIN,
                    interval=1.0,
                    message=f"{victim} back as a member of the quorum queue",
                )
        up.interrupt()
