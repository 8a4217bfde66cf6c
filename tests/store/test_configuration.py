"""Store configuration mistakes stop the consumer and the api at start with one line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.harness.postgres import with_database

REPO = Path(__file__).resolve().parents[2]


def start(module: str, tmp_path: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DB_PATH": str(tmp_path / "events.db"),
        "DATABASE_URL": database_url,
        # Nothing listens there: a process that got past its store would wait for the broker, not exit.
        "AMQP_URL": "amqp://guest:guest@127.0.0.1:1/",
        "API_PORT": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", module], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if " INFO " not in line and line.strip()]


@pytest.mark.parametrize("module", ["consumer", "api"])
def test_an_unknown_database_url_scheme_exits_2_with_one_line(module: str, tmp_path: Path) -> None:
    done = start(module, tmp_path, "mysql://root:secret@db/events")

    assert done.returncode == 2, done.stderr
    (line,) = error_lines(done)
    assert line.startswith(f"{module}: DATABASE_URL must start with postgresql://")
    assert "secret" not in done.stderr


def test_a_consumer_pointed_at_a_database_that_does_not_exist_exits_2_with_one_line(
    postgres_database: str, tmp_path: Path
) -> None:
    missing = with_database(postgres_database, f"eventagg_missing_{uuid.uuid4().hex[:8]}")

    done = start("consumer", tmp_path, missing)

    assert done.returncode == 2, done.stderr
    (line,) = error_lines(done)
    assert line.startswith("consumer: DATABASE_URL=postgresql://")
    assert "does not exist" in line
