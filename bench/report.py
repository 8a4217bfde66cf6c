"""Turns trials into the result: median/min/max per scenario, ratios to the reference, the table, the JSON."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.trial import DUPLICATES, Trial


@dataclass(frozen=True, slots=True)
class Spread:
    median: float
    minimum: float
    maximum: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread | None:
        present = tuple(v for v in values if v is not None)
        if not present:
            return None
        return cls(statistics.median(present), min(present), max(present), present)


@dataclass(slots=True)
class Scenario:
    """All runs of one envelope size."""

    envelope_size: int
    count: int
    trials: list[Trial]

    @property
    def ok(self) -> list[Trial]:
        return [t for t in self.trials if t.ok]

    def end_to_end(self) -> Spread | None:
        return Spread.of([t.events_per_second(self.count) for t in self.trials])

    def publish_only(self) -> Spread | None:
        return Spread.of([t.publish_events_per_second() for t in self.trials])

    def seconds(self) -> Spread | None:
        return Spread.of([t.seconds for t in self.ok])

    def first_commit(self) -> Spread | None:
        return Spread.of([t.first_commit for t in self.ok])

    def by_round(self) -> dict[int, Trial]:
        return {t.round: t for t in self.ok}


def reference_size(sizes: Sequence[int]) -> int:
    """Single-event messages when measured; otherwise the smallest envelope measured."""
    return 1 if 1 in sizes else min(sizes)


def scenarios(trials: Sequence[Trial], sizes: Sequence[int], count: int) -> list[Scenario]:
    return [Scenario(size, count, [t for t in trials if t.envelope_size == size]) for size in sizes]


def _ratio(value: Spread | None, reference: Spread | None) -> float | None:
    if value is None or reference is None or reference.median == 0:
        return None
    return value.median / reference.median


def paired_ratios(scenario: Scenario, reference: Scenario) -> list[float]:
    """Per-round ratios: both runs of a round saw the same moment of machine noise."""
    ref = reference.by_round()
    ratios = []
    for round_, trial in sorted(scenario.by_round().items()):
        other = ref.get(round_)
        if other is None or other.seconds is None or trial.seconds is None:
            continue
        ratios.append(other.seconds / trial.seconds)
    return ratios


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def table(results: Sequence[Scenario], config: dict[str, Any], machine: dict[str, Any]) -> str:
    sizes = [s.envelope_size for s in results]
    ref_size = reference_size(sizes)
    ref = next(s for s in results if s.envelope_size == ref_size)
    ref_label = "single-event messages" if ref_size == 1 else f"envelopes of {ref_size}"
    lines = [
        f"eventagg bench: {config['count']:,} events per run ({DUPLICATES:.0%} duplicates, seed "
        f"{config['seed']}), {config['runs']} runs per scenario, interleaved round-robin",
        f"machine: nproc={machine['nproc']}, Python {machine['python']} "
        f"({machine['python_implementation']}), {machine['cpu_model']}, {machine['platform']}",
        f"software: RabbitMQ {machine['rabbitmq']}, SQLite {machine['sqlite']} (store on "
        f"{machine['db_filesystem']}), aio-pika {machine['aio_pika']}; load average "
        f"{machine['load_average_start']} -> {machine.get('load_average_end')}",
        f"code: {machine['commit']}",
        "",
    ]
    header = (
        f"{'scenario':<32}{'ok':>5}{'median ev/s':>13}{'min':>9}{'max':>9}"
        f"{'median s':>10}{'1st commit s':>14}{'vs envelope ' + str(ref_size):>19}"
    )
    lines += [header, "-" * len(header)]
    for kind, measure in (("end to end", Scenario.end_to_end), ("publish only", Scenario.publish_only)):
        ref_spread = measure(ref)
        for scenario in results:
            spread = measure(scenario)
            seconds = scenario.seconds() if kind == "end to end" else None
            first = scenario.first_commit() if kind == "end to end" else None
            lines.append(
                f"{kind + ', envelope ' + str(scenario.envelope_size):<32}"
                f"{f'{len(scenario.ok)}/{len(scenario.trials)}':>5}"
                f"{_num(spread.median if spread else None):>13}"
                f"{_num(spread.minimum if spread else None):>9}"
                f"{_num(spread.maximum if spread else None):>9}"
                f"{(f'{seconds.median:.2f}' if seconds else ''):>10}"
                f"{(f'{first.median:.2f}' if first else ''):>14}"
                f"{_times(_ratio(spread, ref_spread)):>19}"
            )
    lines.append("")
    for scenario in results:
        if scenario is ref:
            continue
        ratio = _ratio(scenario.end_to_end(), ref.end_to_end())
        paired = paired_ratios(scenario, ref)
        rounds = f" (per round {min(paired):.1f}x-{max(paired):.1f}x)" if paired else ""
        if ratio is None:
            lines.append(f"envelopes of {scenario.envelope_size}: no ratio, a scenario has no successful run")
            continue
        lines.append(f"envelopes of {scenario.envelope_size}: {_times(ratio)} {ref_label} end to end{rounds}")
    lines += [
        "",
        "end to end   = N / (publisher process start -> store shows received == N); exact counters checked",
        "1st commit s = publisher process start -> first events in the store (start-up, load generation)",
        "publish only = the publisher's own events_per_second (connect -> last confirm, consumer running)",
    ]
    failures = [(s.envelope_size, t) for s in results for t in s.trials if not t.ok]
    if failures:
        lines += ["", f"FAILED RUNS ({len(failures)}), not counted:"]
        lines += [f"  envelope {size}, round {t.round + 1}: {t.error}" for size, t in failures]
    return "\n".join(lines)


def as_json(results: Sequence[Scenario], config: dict[str, Any], machine: dict[str, Any]) -> dict[str, Any]:
    ref_size = reference_size([s.envelope_size for s in results])
    ref = next(s for s in results if s.envelope_size == ref_size)

    def spread(value: Spread | None) -> dict[str, Any] | None:
        return None if value is None else asdict(value)

    return {
        "config": config,
        "machine": machine,
        "reference_envelope_size": ref_size,
        "scenarios": [
            {
                "envelope_size": s.envelope_size,
                "runs_ok": len(s.ok),
                "runs": len(s.trials),
                "end_to_end_events_per_second": spread(s.end_to_end()),
                "publish_only_events_per_second": spread(s.publish_only()),
                "end_to_end_seconds": spread(s.seconds()),
                "first_commit_seconds": spread(s.first_commit()),
                "ratio_to_reference": _ratio(s.end_to_end(), ref.end_to_end()),
                "publish_only_ratio_to_reference": _ratio(s.publish_only(), ref.publish_only()),
                "paired_ratios_to_reference": paired_ratios(s, ref),
                "trials": [asdict(t) for t in s.trials],
            }
            for s in results
        ],
    }
