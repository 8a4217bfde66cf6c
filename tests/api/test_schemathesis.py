"""schemathesis against /openapi.json of a real api (real broker, real consumer), in every API_COMPAT
profile: no server error, and no request the document calls valid is rejected."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.harness.pipeline import start_pipeline
from tests.harness.processes import Processes

# Enough to cover every operation and parameter (schemathesis' coverage phase adds its own cases), small
# enough that one profile takes well under a minute here.
MAX_EXAMPLES = 5


@pytest.mark.parametrize("profile", ["default", "seed003", "seed004"])
async def test_schemathesis_finds_no_server_error_and_no_rejected_valid_request(
    procs: Processes, amqp: AbstractRobustConnection, tmp_path: Path, profile: str
) -> None:
    deployment = procs.deployment
    # A generous confirm timeout: on a loaded machine a 503 "no confirm in time" is by design, not a finding.
    await start_pipeline(procs, amqp, api_env={"API_COMPAT": profile, "PUBLISH_TIMEOUT": "30"})
    started = time.monotonic()

    run = await asyncio.to_thread(
        subprocess.run,
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{deployment.api_url}/openapi.json",
            "--checks",
            "not_a_server_error,positive_data_acceptance",
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
