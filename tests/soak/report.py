"""The soak's report: the fault table, the check, the resources' growth, and PNG plots (matplotlib).

Written to OUT/report.txt and OUT/report.json; the plots to OUT/plots/*.png, one per metric, each series a
line, the faults as ticks along the bottom, the window of the growth check shaded.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from tests.soak.check import Outcome
from tests.soak.faults import Record
from tests.soak.resources import Growth, Sample, metric_of

UNITS = {
    "rss_mib": "MiB (RSS; PostgreSQL: PSS)",
    "fds": "open file descriptors",
    "threads": "threads",
    "amqp_connections": "AMQP connections (cluster)",
    "amqp_channels": "AMQP channels (cluster)",
    "pg_connections": "PostgreSQL client connections",
    "queue_depth": "messages ready (passive declare)",
    "store_mib": "MiB on disk",
    "store_bytes_per_event": "bytes on disk per stored event",
}
FAULT_COLOURS = {
    "consumer_kill": "tab:red",
    "consumer_stop": "tab:orange",
    "api_kill": "tab:purple",
    "node_kill": "tab:blue",
    "leader_kill": "navy",
    "db_restart": "tab:green",
    "db_kill": "darkgreen",
    "net_cut": "tab:brown",
    "net_slow": "tab:gray",
}


def fault_table(rows: list[dict[str, Any]]) -> str:
    header = ("fault", "count", "recovered", "median s", "max s", "failed", "skipped")
    body = [
        (
            r["kind"],
            str(r["count"]),
            str(r["recovered"]),
            "-" if r["median_s"] is None else f"{r['median_s']:.2f}",
            "-" if r["max_s"] is None else f"{r['max_s']:.2f}",
            str(r["failed"]),
            str(r["skipped"]),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(out: Path, samples: list[Sample], records: list[Record], traffic_end: float) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_metric: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for sample in samples:
        for name, value in sample.values.items():
            by_metric[metric_of(name)][name.rsplit(" ", 1)[0]].append((sample.t / 60, value))
    folder = out / "plots"
    folder.mkdir(exist_ok=True)
    written = []
    for metric, series in sorted(by_metric.items()):
        fig, ax = plt.subplots(figsize=(11, 5))
        for label, points in sorted(series.items()):
            ax.plot([t for t, _ in points], [v for _, v in points], label=label, linewidth=1.2)
        window = (traffic_end / 3 / 60, traffic_end / 60)
        ax.axvspan(*window, color="0.93", zorder=0, label="growth-check window")
        low = ax.get_ylim()[0]
        for record in records:
            ax.plot(
                record.began / 60,
                low,
                marker="|",
                markersize=9,
                color=FAULT_COLOURS.get(record.fault.kind, "black"),
                linestyle="none",
            )
        ax.set_xlabel("minutes (ticks along the bottom: faults, coloured by kind)")
        ax.set_ylabel(UNITS.get(metric, metric))
        ax.set_title(f"soak: {metric}")
        ax.legend(fontsize=7, ncol=3, loc="upper left")
        ax.grid(alpha=0.3)
        path = folder / f"{metric}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def write(
    out: Path,
    figures: dict[str, Any],
    rows: list[dict[str, Any]],
    records: list[Record],
    outcome: Outcome,
    growth: list[Growth],
    samples: list[Sample],
    traffic_end: float,
) -> str:
    plots = plot(out, samples, records, traffic_end)
    text = "\n".join(
        [
            "==== soak report ====",
            f"backend {figures['backend']}, {figures['traffic_seconds']:.0f}s of traffic and faults, "
            f"seed {figures['seed']} (SOAK_SEED replays the schedule), retention {figures['retention']}",
            f"events sent {sum(figures['sent'].values())} ({figures['sent']}), re-sends {figures['resent']}",
            f"events attempted (unique) {figures['attempted']}, confirmed {figures['confirmed']}, "
            f"stored (or expired) {figures.get('stored')}",
            f"counters {figures['counters']}",
            f"poison {figures['poison']}",
            f"HTTP answers {figures['http_answers']}",
            f"reader: {figures['reads_ok']} rounds ok, {figures['read_errors']} failed (api or store down), "
            f"{figures['pages']} pages; drained in {figures['drained_in_s']}s",
            "",
            "faults (recovery: from the fault, or from its end for stop/slow, to consuming/answering again)",
            fault_table(rows),
            "",
            "check",
            *outcome.lines,
            *[f"crash (an exit the soak did not cause): {crash}" for crash in figures.get("crashes", [])],
            "",
            "resources: growth over the last two-thirds of the traffic (Theil-Sen slope x window) vs allowed",
            *[g.line() for g in growth],
            "",
            "plots: " + " ".join(str(p) for p in plots),
            f"fault log: {out / 'faults.txt'}",
        ]
    )
    (out / "faults.txt").write_text("\n".join(r.line() for r in records) + "\n")
    (out / "report.txt").write_text(text + "\n")
    data = {
        **figures,
        "faults": rows,
        "check": outcome.lines,
        "ok": outcome.ok,
        "growth": [g.__dict__ | {"ok": g.ok} for g in growth],
        "samples": [{"t": s.t, **s.values} for s in samples],
        "plots": [str(p) for p in plots],
    }
    (out / "report.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    return text
