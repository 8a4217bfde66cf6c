"""compose/compose.postgres.yaml through a real compose implementation: PostgreSQL, two consumers, one URL."""

from __future__ import annotations

import subprocess
from typing import Any
from urllib.parse import urlsplit

import yaml

from tests.harness.deploy import CLEAN_ENV, COMPOSE_FILE, REPO, compose_command

OVERRIDE = REPO / "compose" / "compose.postgres.yaml"


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


def mounts(service: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    """(type, source, target) of each mount, from compose's short or long syntax."""
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found.append((volume["type"], volume.get("source"), volume["target"]))
        else:
            source, target, *_ = str(volume).split(":")
            found.append(("volume", source, target))
    return found


def test_the_postgres_override_points_two_consumers_and_the_api_at_one_healthy_database() -> None:
    config = resolved(POSTGRES_PASSWORD="s3cret")
    services = config["services"]
    postgres = services["postgres"]

    assert postgres["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert "synchronous_commit=on" in postgres["command"]
    assert mounts(postgres) == [("volume", "postgres", "/var/lib/postgresql/data")]
    assert "postgres" in config["volumes"]

    for name in ("consumer", "api"):
        service = services[name]
        url = urlsplit(service["environment"]["DATABASE_URL"])
        assert (url.scheme, url.hostname, url.port, url.path) == ("postgresql", "postgres", 5432, "/eventagg")
        assert (url.username, url.password) == ("eventagg", "s3cret")
        assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}
        # No shared SQLite volume any more: each container's status file is its own.
        assert mounts(service) == [("tmpfs", None, "/data")]

    assert services["consumer"]["deploy"]["replicas"] == 2
