"""The crash checker's side of the tests: a known workload, the publisher's confirmed log, the final check.

Each scenario publishes a reproducible workload through the real CLI with `--confirmed-log`, injects its
faults, waits until the pipeline settled, then runs the same CLI with `--check`, exactly as a user would.
The row it gives goes into the table printed at the end of the run (`make crash`, `make test`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from aio_pika.abc import AbstractRobustConnection

from contract.event import Event
from publisher.load import generate
from tests.harness.pipeline import counters, drained
from tests.harness.probes import queue_depth
from tests.harness.processes import Process, Processes
from tests.harness.waiting import eventually

# `make crash` runs the same scenarios bigger (CRASH_SCALE=5); the suite runs them at 1.
SCALE = float(os.environ.get("CRASH_SCALE", "1"))


def scaled(n: int) -> int:
    return max(1, round(n * SCALE))


def budget(seconds: float) -> float:
    """A time limit for a stream whose size is scaled: bigger streams get proportionally longer."""
    return seconds * max(1.0, SCALE)


@dataclass(frozen=True)
class Workload:
    """A reproducible load: `count` events, a share of them re-sent, on `topics` topics."""

    count: int
    seed: int
    duplicates: float = 0.2
    topics: int = 8

    def args(self) -> list[str]:
        return [
            *("--count", str(self.count), "--duplicates", str(self.duplicates)),
            *("--topics", str(self.topics), "--seed", str(self.seed)),
        ]

    @cached_property
    def events(self) -> list[Event]:
        return generate(self.count, self.duplicates, self.topics, self.seed).events

    @cached_property
    def unique(self) -> int:
        return len({item.key() for item in self.events})


@dataclass
class Row:
    scenario: str
    faults: str
    result: dict[str, Any] = field(default_factory=dict)
    dead_lettered: int = 0
    invalid_expected: int = 0


# Filled by the scenarios, printed by tests/conftest.py's pytest_terminal_summary.
ROWS: list[Row] = []


class Checked:
    """One scenario's workload, its confirmed log and, at the end, its check."""

    def __init__(self, procs: Processes, workload: Workload) -> None:
        self.procs = procs
        self.workload = workload
        self.log = procs.deployment.logs / "confirmed.jsonl"

    def publish(self, *args: str, **env: str) -> Process:
        """The publisher CLI in the background, recording what the broker confirmed."""
        return self.procs.start(
            "publisher",
            *self.workload.args(),
            "--confirmed-log",
            str(self.log),
            *args,
            "--json",
            "--quiet",
            **env,
        )

    def confirmed_lines(self) -> int:
        try:
            return self.log.read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0

    def record_confirmed(self, events: list[Event]) -> None:
        """For a client other than the CLI (a bare HTTP POST): what it saw confirmed."""
        with self.log.open("a", encoding="utf-8") as out:
            out.writelines(json.dumps([e.topic, e.event_id]) + "\n" for e in events)

    async def settle(self, amqp: AbstractRobustConnection, timeout: float = 120) -> None:
        """Wait until every unique event of the workload is stored and the queue is empty."""
        unique = self.workload.unique
        deployment = self.procs.deployment
        await eventually(
            lambda: counters(deployment)["unique_processed"] >= unique,
            budget(timeout),
            message=f"{unique} unique events stored",
        )
        await eventually(lambda: drained(amqp, deployment.queue), budget(60), message="queue drained")

    async def check(
        self,
        amqp: AbstractRobustConnection,
        scenario: str,
        faults: str,
        *,
        invalid: int = 0,
        all_confirmed: bool = True,
        expiring: bool = False,
    ) -> dict[str, Any]:
        """Run `python -m publisher --check`; assert nothing lost, nothing unexpected, exact counters.

        `expiring`: RETENTION ran during the scenario, so some events are expired (410, their keys known)
        rather than listed; every one of the workload must still be one or the other."""
        checker = self.procs.start(
            "publisher", *self.workload.args(), "--confirmed-log", str(self.log), "--check", "--json"
        )
        code = checker.wait(300)
        lines = [line for line in checker.output().splitlines() if line.startswith("{")]
        assert lines, f"the check printed no result (exit {code}):\n{checker.output()}"
        result: dict[str, Any] = json.loads(lines[-1])
        dead = await queue_depth(amqp, self.procs.deployment.dead_letter_queue)
        if self.procs.deployment.database_url:
            scenario += " [PostgreSQL]"
        ROWS.append(Row(scenario, faults, result, dead, invalid))
        assert (code, result["ok"]) == (0, True), json.dumps(result, indent=1)
        assert result["lost"] == 0
        assert result["unexpected"] == 0
        assert result["altered"] == 0
        assert result["counters_consistent"]
        if expiring:
            assert result["expired"] > 0, "nothing expired: RETENTION was too long to prove anything"
        else:
            assert result["expired"] == 0
        assert result["stored"] + result["expired"] == self.workload.unique
        if all_confirmed:
            assert result["confirmed"] == self.workload.unique
        # No valid event is ever dead-lettered: the dead-letter queue holds exactly the invalid messages.
        assert dead == invalid
        assert result["counters"]["invalid"] == invalid
        assert result["counters"]["unique_processed"] == self.workload.unique
        return result


def table(rows: list[Row]) -> str:
    header = (
        "scenario",
        "faults",
        "confirmed",
        "stored",
        "expired",
        "lost",
        "unexpected",
        "altered",
        "dead-lettered",
        "counters",
        "result",
    )
    body = []
    for row in rows:
        r = row.result
        body.append(
            (
                row.scenario,
                row.faults,
                str(r.get("confirmed", "-")),
                str(r.get("stored", "-")),
                str(r.get("expired", "-")),
                str(r.get("lost", "-")),
                str(r.get("unexpected", "-")),
                str(r.get("altered", "-")),
                f"{row.dead_lettered}/{row.invalid_expected}",
                "exact" if r.get("counters_consistent") else "INCONSISTENT",
                "ok" if r.get("ok") and row.dead_lettered == row.invalid_expected else "FAILED",
            )
        )
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
