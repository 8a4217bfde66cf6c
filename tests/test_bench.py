"""The benchmark's code paths work: `python -m bench --quick` runs every scenario and reports them all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import RESULTS_DIR, previous_run
from bench.report import Results, Target, previous_median, targets
from bench.scenarios import SCENARIOS, percentile
from bench.trial import Sample
from tests.harness.broker import Broker

REPO = Path(__file__).resolve().parent.parent


# Every scenario once at the smallest sizes: about 3.5 minutes on a quiet 2-core machine (the retention
# scenario's stream alone takes one), more on a busy one.
@pytest.mark.timeout(480)
def test_the_quick_benchmark_runs_every_scenario_and_writes_json(broker: Broker, tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    env = {**os.environ, "AMQP_URL": broker.url}

    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output), "--db-dir", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=470,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(output.read_text())
    assert set(result["scenarios"]) == {s.name for s in SCENARIOS}
    # A scenario whose backend lacks the feature (retention on a PostgreSQL store without it) is skipped.
    assert all(s["runs_ok"] + s["runs_skipped"] == 1 for s in result["scenarios"].values()), done.stderr
    skipped = {name for name, s in result["scenarios"].items() if s["runs_skipped"]}
    assert skipped <= {"retention_postgres"}, done.stderr
    assert len(result["targets"]) == 33
    unmeasured = {t["name"] for t in result["targets"] if t["measured"] is None}
    assert unmeasured == (
        {t["name"] for t in result["targets"] if "PostgreSQL RETENTION" in t["name"]} if skipped else set()
    )
    assert "targets (ratios of medians measured in this run)" in done.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # throwaway stores removed


def test_a_ratio_target_is_the_ratio_of_the_medians() -> None:
    samples = [Sample("e2e_single", r, {"events_per_second": v}) for r, v in enumerate((90.0, 100.0, 95.0))]
    samples += [Sample("ceiling", r, {"events_per_second": v}) for r, v in enumerate((100.0, 100.0, 200.0))]

    (single,) = [t for t in targets(Results(samples)) if t.name.startswith("single-event")]

    assert single.measured == pytest.approx(0.95)
    assert single.met is True
    assert single.detail == "per round 0.47-1.00"


def test_failed_repetitions_are_not_counted_and_a_missing_figure_is_not_met() -> None:
    samples = [
        Sample("latency", 0, {"p99_ms": 50.0}),
        Sample("latency", 1, {"p99_ms": 500.0}, error="consumer exited with 1"),
    ]

    by_name = {t.name: t for t in targets(Results(samples))}

    assert by_name["publish -> queryable p99 at the steady rate"].measured == 50.0
    assert by_name["publish -> queryable p99 at the steady rate"].met is True
    assert Target("x", None, 1.0, True, "ms").met is None


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]

    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0


def test_the_default_previous_run_is_the_newest_that_measured_envelopes_end_to_end() -> None:
    loaded, name = previous_run(None)
    newest = sorted(p.name for p in RESULTS_DIR.glob("*.json"))[-1]
    assert loaded is not None and name <= newest
    assert (previous_median(loaded, "e2e_envelopes", "events_per_second") or 0) > 0
    later = [p for p in RESULTS_DIR.glob("*.json") if p.name > name]
    assert all(
        previous_median(json.loads(p.read_text()), "e2e_envelopes", "events_per_second") is None
        for p in later
    )
