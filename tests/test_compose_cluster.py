"""compose/compose.cluster.yaml through a real compose implementation: three nodes, one cookie, three URLs."""

from __future__ import annotations

import subprocess
from typing import Any
from urllib.parse import urlsplit

import yaml

from contract.config import CommonSettings
from tests.harness.deploy import CLEAN_ENV, COMPOSE_FILE, DEPLOYABLES, REPO, compose_command

OVERRIDE = REPO / "compose" / "compose.cluster.yaml"
NODES = ("rabbitmq", "rabbitmq-2", "rabbitmq-3")
CLUSTER_CONF = "/etc/rabbitmq/conf.d/20-cluster.conf"


def resolved(**env: str) -> dict[str, Any]:
    done = subprocess.run(
        [*compose_command(), "-f", str(COMPOSE_FILE), "-f", str(OVERRIDE), "config"],
        capture_output=True,
        text=True,
        env={**CLEAN_ENV, **env},
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def targets(service: dict[str, Any]) -> set[str]:
    found = set()
    for volume in service.get("volumes", []):
        found.add(volume["target"] if isinstance(volume, dict) else str(volume).split(":")[1])
    return found


def test_three_nodes_share_one_cookie_and_find_each_other_by_the_classic_config_list() -> None:
    services = resolved(RABBITMQ_ERLANG_COOKIE="c00kie")["services"]
    for name in NODES:
        node = services[name]
        assert node["hostname"] == name
        assert node["environment"]["RABBITMQ_ERLANG_COOKIE"] == "c00kie"
        assert node["healthcheck"]["test"][:2] == ["CMD", "rabbitmq-diagnostics"]
        # Every node serves its own Prometheus metrics, from compose.yaml's plugins file.
        assert {CLUSTER_CONF, "/var/lib/rabbitmq", "/etc/rabbitmq/enabled_plugins"} <= targets(node)
    conf = (REPO / "compose" / "rabbitmq-cluster.conf").read_text()
    assert "cluster_formation.peer_discovery_backend = classic_config" in conf
    listed = {line.split("=")[1].strip() for line in conf.splitlines() if ".classic_config.nodes." in line}
    assert listed == {f"rabbit@{name}" for name in NODES}


def test_every_client_gets_all_three_nodes_and_waits_for_them() -> None:
    services = resolved(RABBITMQ_PASSWORD="s3cret")["services"]
    for name in DEPLOYABLES:
        service = services[name]
        # The product's own parser takes the list: the same credentials on each node, all three nodes.
        urls = CommonSettings(amqp_url=service["environment"]["AMQP_URL"]).amqp_urls()
        assert [(urlsplit(u).hostname, urlsplit(u).port) for u in urls] == [(n, 5672) for n in NODES]
        assert {urlsplit(u).password for u in urls} == {"s3cret"}
        for node in NODES:
            assert service["depends_on"][node] == {"condition": "service_healthy"}
        # The rest of its environment is compose.yaml's.
        assert service["environment"]["AMQP_QUEUE"] == "events.aggregator"
