"""Turns samples into the result: median/min/max per figure, the targets (ratios), the table, the JSON."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.scenarios import SCENARIOS, Sizes
from bench.trial import DUPLICATES, Sample


@dataclass(frozen=True, slots=True)
class Spread:
    median: float
    minimum: float
    maximum: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        if not values:
            return None
        return cls(statistics.median(values), min(values), max(values), tuple(values))


class Results:
    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)

    def of(self, scenario: str) -> list[Sample]:
        return [s for s in self.samples if s.scenario == scenario]

    def spread(self, scenario: str, key: str) -> Spread | None:
        return Spread.of([s.values[key] for s in self.of(scenario) if s.ok and key in s.values])

    def median(self, scenario: str, key: str) -> float | None:
        spread = self.spread(scenario, key)
        return None if spread is None else spread.median

    def paired(self, scenario: str, other: str, key: str) -> list[float]:
        """Per-round ratios: both runs of a round saw the same moment of machine noise."""
        mine = {s.round: s.values.get(key) for s in self.of(scenario) if s.ok}
        theirs = {s.round: s.values.get(key) for s in self.of(other) if s.ok}
        return [
            a / b for r, a in sorted(mine.items()) if (b := theirs.get(r)) and a is not None and b is not None
        ]


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    measured: float | None
    goal: float
    at_most: bool  # True: measured <= goal; False: measured >= goal
    unit: str
    detail: str = ""

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured <= self.goal if self.at_most else self.measured >= self.goal


def _ratio(results: Results, a: str, b: str, key: str = "events_per_second") -> tuple[float | None, str]:
    top, bottom = results.median(a, key), results.median(b, key)
    paired = results.paired(a, b, key)
    detail = f"per round {min(paired):.2f}-{max(paired):.2f}" if paired else ""
    if top is None or not bottom:
        return None, detail
    return top / bottom, detail


def previous_median(previous: dict[str, Any] | None, scenario: str, key: str) -> float | None:
    """A figure's median in an earlier run's JSON (as written by as_json), if it has one."""
    if previous is None:
        return None
    figure = previous.get("scenarios", {}).get(scenario, {}).get("figures", {}).get(key)
    return None if figure is None else float(figure["median"])


def targets(
    results: Results, previous: dict[str, Any] | None = None, previous_name: str = ""
) -> list[Target]:
    """`previous`: the JSON of an earlier run, for the figures that must not fall from one run to the next."""
    out: list[Target] = []

    def ratio(
        name: str, a: str, b: str, goal: float, key: str = "events_per_second", at_most: bool = False
    ) -> None:
        value, detail = _ratio(results, a, b, key)
        out.append(Target(name, value, goal, at_most, "x", detail))

    def limit(name: str, scenario: str, key: str, goal: float, unit: str) -> None:
        out.append(Target(name, results.median(scenario, key), goal, True, unit))

    ratio("single-event messages end to end / ceiling", "e2e_single", "ceiling", 0.9)
    ratio("single events end to end / pika publisher + bare consumer", "e2e_single", "e2e_reference", 0.9)
    ratio("consumer draining single events / bare consumer", "drain_single", "drain_reference", 1.0)
    now, before = (
        results.median("e2e_envelopes", "events_per_second"),
        previous_median(previous, "e2e_envelopes", "events_per_second"),
    )
    out.append(
        Target(
            "envelopes of 100 end to end / previous run",
            None if now is None or not before else now / before,
            1.0,
            False,
            "x",
            f"{before:,.0f} events/s in {previous_name}" if before else "no previous run",
        )
    )
    ratio("envelopes of 100 end to end / ceiling", "e2e_envelopes", "ceiling", 6.0)
    ratio("envelopes of 100 end to end / baseline", "e2e_envelopes", "baseline", 50.0)
    ratio("HTTP shim / envelopes of 100 (AMQP path)", "shim", "e2e_envelopes", 0.5)
    ratio("ingest with store pre-filled / empty store", "ingest_at_scale", "e2e_envelopes", 0.8)
    ratio("ingest over tombstones / empty store", "ingest_over_tombstones", "e2e_envelopes", 0.8)
    ratio("publisher CLI single-event / pika publisher", "publisher_single", "pika_publisher", 1.0)
    ratio("POST /publish, 1 topic per event / pika publisher", "shim_topics", "pika_publisher", 0.7)
    ratio(
        "sequential POST p50 / pika round trip p50", "shim_sequential", "pika_roundtrip", 1.5, "p50_ms", True
    )
    # A second store process on the same two cores, and a round trip per statement: half of SQLite's rate.
    ratio("PostgreSQL, 1 consumer / SQLite (envelopes of 100)", "postgres_1", "e2e_envelopes", 0.5)
    # Scaling out must never cost throughput; more than that needs cores that are idle (see the CPU rows).
    ratio("PostgreSQL, 2 consumers / 1 consumer", "postgres_2", "postgres_1", 1.0)
    ratio("PostgreSQL, 3 consumers / 1 consumer", "postgres_3", "postgres_1", 1.0)
    ratio("PostgreSQL pre-filled / empty store, 3 consumers", "postgres_at_scale", "postgres_3", 0.8)
    ratio("PostgreSQL over tombstones / empty, 3 consumers", "postgres_over_tombstones", "postgres_3", 0.8)
    out.append(
        Target(
            "SQLite set-based apply / per-event apply",
            results.median("sqlite_apply", "set_based_speedup"),
            2.0,
            False,
            "x",
        )
    )
    limit("GET /events p99 at scale (worst kind)", "queries", "events_worst_p99_ms", 20.0, "ms")
    limit("GET /stats p99 at scale", "queries", "stats_p99_ms", 10.0, "ms")
    limit("selective search p99 at scale", "search_queries", "selective_worst_p99_ms", 50.0, "ms")
    limit("consumer peak RSS draining the backlog", "backlog", "peak_rss_mb", 150.0, "MiB")
    limit("publish -> queryable p99 at the steady rate", "latency", "p99_ms", 100.0, "ms")
    # Read-your-writes at the speed of a commit: the commit and its notice, not a timer, bound the wait.
    for scenario, store in (("shim_stored", "SQLite"), ("shim_stored_postgres", "PostgreSQL")):
        out.append(
            Target(
                f"POST ?wait=stored p50 / plain POST p50 ({store})",
                results.median(scenario, "p50_ratio"),
                2.0,
                True,
                "x",
            )
        )
        out.append(
            Target(
                f"the same in blocks of each mode ({store})",
                results.median(scenario, "blocks_p50_ratio"),
                2.0,
                True,
                "x",
            )
        )
        limit(f"POST ?wait=stored p99 ({store}, quiet machine)", scenario, "stored_p99_ms", 10.0, "ms")
    # Under RETENTION the store levels off once as much expires as arrives (from the first third on), and
    # ingest keeps the stream's pace to the end (a paced stream: a fall means the consumer fell behind).
    for scenario, name in (("retention", "SQLite"), ("retention_postgres", "PostgreSQL")):
        limit(f"{name} RETENTION: size end / 1st third", scenario, "size_ratio", 1.2, "x")
        out.append(
            Target(
                f"{name} RETENTION: ingest last / 1st third",
                results.median(scenario, "rate_ratio"),
                0.95,
                False,
                "x",
            )
        )
    return out


# What each scenario's table row shows: (value key, header, format).
_CORES = "{:.2f}".format
_MB = "{:.1f}".format
_POSTGRES_ROWS: list[tuple[str, str, Callable[[float], str]]] = [
    ("events_per_second", "events/s", "{:,.0f}".format),
    ("consumers_cores", "consumers, cores", _CORES),
    ("postgres_cores", "PostgreSQL backends, cores", _CORES),
    ("broker_cores", "broker, cores", _CORES),
    ("publisher_cores", "publisher, cores", _CORES),
    ("total_cores", "all of them, cores", _CORES),
    ("consumer_peak_rss_mb", "largest consumer peak RSS, MiB", _MB),
]
_STORED_ROWS: list[tuple[str, str, Callable[[float], str]]] = [
    ("stored_p50_ms", "wait=stored p50 ms", "{:.2f}".format),
    ("stored_p99_ms", "wait=stored p99 ms", "{:.2f}".format),
    ("plain_p50_ms", "plain p50 ms", "{:.2f}".format),
    ("plain_p99_ms", "plain p99 ms", "{:.2f}".format),
    ("p50_ratio", "wait=stored / plain p50", "{:.2f}".format),
    ("blocks_stored_p50_ms", "in blocks: wait=stored p50 ms", "{:.2f}".format),
    ("blocks_stored_p99_ms", "in blocks: wait=stored p99 ms", "{:.2f}".format),
    ("blocks_plain_p50_ms", "in blocks: plain p50 ms", "{:.2f}".format),
    ("blocks_p50_ratio", "in blocks: wait=stored / plain p50", "{:.2f}".format),
]
_RETENTION_ROWS: list[tuple[str, str, Callable[[float], str]]] = [
    ("size_third_mb", "size after 1st third, MB", _MB),
    ("size_end_mb", "size at the end, MB", _MB),
    ("size_ratio", "size end / 1st third", "{:.2f}".format),
    ("size_max_after_third_mb", "largest after 1st third, MB", _MB),
    ("file_end_mb", "SQLite file at the end, MB", _MB),
    ("wal_end_mb", "SQLite -wal at the end, MB", _MB),
    ("events_pages_end_mb", "SQLite events + indexes, MB", _MB),
    ("keys_pages_end_mb", "SQLite keys (tombstones), MB", _MB),
    ("free_pages_end_mb", "SQLite free pages, MB", _MB),
    ("stored_events_max", "stored events, most", "{:,.0f}".format),
    *((f"rate_{k}", f"ingest events/s, third {k}", "{:,.0f}".format) for k in (1, 2, 3)),
    ("rate_ratio", "ingest last third / first", "{:.2f}".format),
    *(
        (f"consumer_cpu_us_per_event_{k}", f"consumer CPU us/event, third {k}", "{:.0f}".format)
        for k in (1, 2, 3)
    ),
    ("queued_max", "queue depth, most (messages)", "{:,.0f}".format),
    ("stored_again", "re-sends stored again (KEY_RETENTION)", "{:,.0f}".format),
]
_INGEST_ROWS: list[tuple[str, str, Callable[[float], str]]] = [
    ("events_per_second", "events/s", "{:,.0f}".format),
    ("consumer_peak_rss_mb", "consumer peak RSS, MiB", _MB),
]
_ROWS: dict[str, list[tuple[str, str, Callable[[float], str]]]] = {
    "postgres_1": _POSTGRES_ROWS,
    "postgres_2": _POSTGRES_ROWS,
    "postgres_3": _POSTGRES_ROWS,
    "postgres_at_scale": _POSTGRES_ROWS,
    "postgres_over_tombstones": _POSTGRES_ROWS,
    "sqlite_apply": [
        ("set_based_events_per_second", "set-based events/s", "{:,.0f}".format),
        ("per_event_events_per_second", "per-event events/s", "{:,.0f}".format),
        ("set_based_speedup", "set-based / per-event", "{:.2f}".format),
        ("set_based_cpu_us_per_event", "set-based CPU us/event", "{:.1f}".format),
        ("per_event_cpu_us_per_event", "per-event CPU us/event", "{:.1f}".format),
    ],
    "e2e_single": [("events_per_second", "events/s", "{:,.0f}".format)],
    "e2e_envelopes": _INGEST_ROWS,
    "ingest_at_scale": _INGEST_ROWS,
    "ingest_over_tombstones": _INGEST_ROWS,
    "ceiling": [("events_per_second", "events/s", "{:,.0f}".format)],
    "e2e_reference": [("events_per_second", "events/s", "{:,.0f}".format)],
    "drain_reference": [("events_per_second", "messages/s", "{:,.0f}".format)],
    "drain_single": [("events_per_second", "events/s", "{:,.0f}".format)],
    "baseline": [("events_per_second", "events/s", "{:,.0f}".format)],
    "shim": [("events_per_second", "events/s", "{:,.0f}".format)],
    "pika_publisher": [("events_per_second", "messages/s", "{:,.0f}".format)],
    "publisher_single": [("events_per_second", "events/s", "{:,.0f}".format)],
    "shim_topics": [("events_per_second", "events/s", "{:,.0f}".format)],
    "pika_roundtrip": [("p50_ms", "p50 ms", "{:.2f}".format), ("p99_ms", "p99 ms", "{:.2f}".format)],
    "shim_sequential": [("p50_ms", "p50 ms", "{:.2f}".format), ("p99_ms", "p99 ms", "{:.2f}".format)],
    "shim_stored": _STORED_ROWS,
    "seed003_stored": [
        ("events_per_second", "stored events/s", "{:,.0f}".format),
        ("p50_ms", "p50 ms", "{:.2f}".format),
        ("p99_ms", "p99 ms", "{:.2f}".format),
    ],
    "shim_stored_postgres": _STORED_ROWS,
    "latency": [("p50_ms", "p50 ms", "{:.1f}".format), ("p99_ms", "p99 ms", "{:.1f}".format)],
    "queries": [
        (f"{kind}_{q}_ms", f"{label} {q} ms", "{:.2f}".format)
        for kind, label in (
            ("events", "GET /events"),
            ("events_topic", "GET /events?topic"),
            ("events_deep", "GET /events deep page"),
            ("events_topic_deep", "GET /events?topic deep page"),
            ("stats", "GET /stats"),
        )
        for q in ("p50", "p99")
    ],
    "search_queries": [
        ("selective_worst_p99_ms", "selective search, worst p99 ms", "{:.2f}".format),
        ("word_one_p99_ms", "q=<word of one event> p99 ms", "{:.2f}".format),
        ("phrase_one_p99_ms", "q=<phrase of one event> p99 ms", "{:.2f}".format),
        ("field_few_p99_ms", "payload.<field> (1 in 2,000) p99 ms", "{:.2f}".format),
        ("unfiltered_p50_ms", "unfiltered page p50 ms", "{:.2f}".format),
        ("tenth_p50_ms", "q= matching 10%, page p50 ms", "{:.2f}".format),
        ("tenth_over_unfiltered_p50", "10% search / unfiltered page", "{:.2f}".format),
        ("tenth_deep_over_unfiltered_deep_p50", "same, deep pages", "{:.2f}".format),
    ],
    "backlog": [
        ("peak_rss_mb", "consumer peak RSS MiB", "{:.1f}".format),
        ("drain_events_per_second", "drain events/s", "{:,.0f}".format),
    ],
    "retention": _RETENTION_ROWS,
    "retention_postgres": _RETENTION_ROWS,
}


def _sizes_note(scenario: str, sizes: Sizes) -> str:
    return {
        "e2e_single": f"{sizes.count:,} events",
        "e2e_envelopes": f"{sizes.count:,} events",
        "ceiling": f"{sizes.count:,} messages",
        "e2e_reference": f"{sizes.count:,} messages",
        "drain_reference": f"{sizes.drain:,} queued",
        "drain_single": f"{sizes.drain:,} queued",
        "baseline": f"{sizes.baseline_count:,} events",
        "shim": f"{sizes.count:,} events",
        "pika_publisher": f"{sizes.publish_count:,} messages",
        "publisher_single": f"{sizes.publish_count:,} events",
        "shim_topics": f"{sizes.shim_topics:,} events",
        "pika_roundtrip": f"{sizes.sequential_requests:,} messages",
        "shim_sequential": f"{sizes.sequential_requests:,} requests",
        "shim_stored": f"{sizes.stored_requests:,} requests of each",
        "seed003_stored": f"{sizes.stored_requests:,} requests",
        "shim_stored_postgres": f"{sizes.stored_requests:,} requests of each",
        "ingest_at_scale": f"{sizes.count:,} onto {sizes.stored:,}",
        "ingest_over_tombstones": f"{sizes.count:,} onto {sizes.stored:,} keys",
        "latency": f"{sizes.latency_rate:,.0f}/s for {sizes.latency_seconds:g}s",
        "queries": f"{sizes.stored:,} stored, {sizes.query_requests} each",
        "search_queries": f"{sizes.stored:,} stored, SEARCH on",
        "backlog": f"{sizes.backlog:,} queued",
        "postgres_1": f"{sizes.count:,} events",
        "postgres_2": f"{sizes.count:,} events",
        "postgres_3": f"{sizes.count:,} events",
        "postgres_at_scale": f"{sizes.count:,} onto {sizes.stored:,}",
        "postgres_over_tombstones": f"{sizes.count:,} onto {sizes.stored:,} keys",
        "sqlite_apply": f"{sizes.apply_events:,} in batches of 256",
        "retention": _steady_note(sizes),
        "retention_postgres": _steady_note(sizes),
    }.get(scenario, "")


def _steady_note(sizes: Sizes) -> str:
    load = sizes.steady
    keys = "" if load.key_retention is None else f", K={load.key_retention:g}s"
    return f"{load.rate:,.0f}/s {load.seconds:g}s, R={load.retention:g}s{keys}"


def table(
    results: Results,
    config: dict[str, Any],
    machine: dict[str, Any],
    sizes: Sizes,
    previous: dict[str, Any] | None = None,
) -> str:
    lines = [
        f"eventagg bench ({config['mode']}): {config['runs']} repetitions per scenario, interleaved "
        f"round-robin; {DUPLICATES:.0%} of each load re-sent; medians (min-max)",
        f"machine: {machine['nproc']} CPUs, {machine['cpu_model']}, {machine['memory_gib']} GiB, "
        f"{machine['platform']}, Python {machine['python']}",
        f"software: RabbitMQ {machine['rabbitmq']}, SQLite {machine['sqlite']} (store on "
        f"{machine['db_filesystem']}), aio-pika {machine['aio_pika']}",
        f"load average: {machine['load_average_start']} at start, {machine.get('load_average_end')} at end; "
        f"code {machine['commit']}; {config.get('wall_seconds')}s wall",
        "",
    ]
    header = f"{'scenario':<52}{'size':>24}{'figure':>30}{'median':>11}{'min':>10}{'max':>10}{'ok':>6}"
    lines += [header, "-" * len(header)]
    for scenario in SCENARIOS:
        samples = results.of(scenario.name)
        if not samples:
            continue
        measured = [s for s in samples if not s.skipped]
        ok = f"{sum(s.ok for s in measured)}/{len(measured)}" if measured else "skip"
        for i, (key, figure, fmt) in enumerate(_ROWS[scenario.name]):
            spread = results.spread(scenario.name, key)
            cells = (
                (fmt(spread.median), fmt(spread.minimum), fmt(spread.maximum)) if spread else ("-", "", "")
            )
            label = scenario.label if i == 0 else ""
            size = _sizes_note(scenario.name, sizes) if i == 0 else ""
            lines.append(
                f"{label:<52}{size:>24}{figure:>30}{cells[0]:>11}{cells[1]:>10}{cells[2]:>10}"
                f"{ok if i == 0 else '':>6}"
            )
    lines += ["", "targets (ratios of medians measured in this run):"]
    for target in targets(results, previous, config.get("previous_run", "")):
        value = "-" if target.measured is None else f"{target.measured:,.2f}{target.unit}"
        sign = "<=" if target.at_most else ">="
        verdict = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[target.met]
        detail = f"  ({target.detail})" if target.detail else ""
        lines.append(
            f"  {target.name:<48}{value:>12}  {sign} {target.goal:g}{target.unit:<4}{verdict}{detail}"
        )
    failures = [s for s in results.samples if not s.ok]
    if failures:
        lines += ["", f"FAILED REPETITIONS ({len(failures)}), not counted:"]
        lines += [f"  {s.scenario}, round {s.round + 1}: {s.error}" for s in failures]
    skipped = [s for s in results.samples if s.skipped]
    if skipped:
        lines += ["", f"SKIPPED REPETITIONS ({len(skipped)}):"]
        lines += [f"  {s.scenario}, round {s.round + 1}: {s.skipped}" for s in skipped]
    return "\n".join(lines)


def as_json(
    results: Results,
    config: dict[str, Any],
    machine: dict[str, Any],
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    scenarios: dict[str, Any] = {}
    for scenario in SCENARIOS:
        samples = results.of(scenario.name)
        if not samples:
            continue
        keys = sorted({k for s in samples if s.ok for k in s.values})
        spreads = {k: results.spread(scenario.name, k) for k in keys}
        scenarios[scenario.name] = {
            "label": scenario.label,
            "runs_ok": sum(s.ok and not s.skipped for s in samples),
            "runs_skipped": sum(bool(s.skipped) for s in samples),
            "runs": len(samples),
            "figures": {k: asdict(v) for k, v in spreads.items() if v is not None},
            "samples": [asdict(s) for s in samples],
        }
    return {
        "config": config,
        "machine": machine,
        "scenarios": scenarios,
        "targets": [
            {**asdict(t), "met": t.met} for t in targets(results, previous, config.get("previous_run", ""))
        ],
    }
