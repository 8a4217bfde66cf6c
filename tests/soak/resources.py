"""Resource samples every SAMPLE_INTERVAL seconds, and the check that nothing keeps growing.

Per process (from /proc): RSS, open file descriptors, threads. The processes are the consumers (one series
per slot: a killed consumer's replacement continues its slot's series), the api, the two publisher CLIs,
each RabbitMQ node (the VM and its helpers, summed), PostgreSQL (the postmaster and its backends, summed,
with PSS instead of RSS so that shared buffers count once) and the soak driver itself (it runs the proxy).
Beyond processes: the cluster's AMQP connections and channels (management API), PostgreSQL's client
connections (pg_stat_activity), the store's size on disk, the queue's depth (a passive declare: the
management API's counts of a quorum queue lag).

"Keeps growing": over the last two-thirds of the traffic, the Theil-Sen slope of a series (the median of the
slopes between every pair of samples, which one spike cannot move), times the window's length, exceeds the
series' tolerance: max(absolute floor, share of the series' median in the window). The floors and shares are
TOLERANCES below; tests/soak/README.md gives the run they were justified from.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

# metric -> (absolute floor, share of the median): the growth allowed over the window.
TOLERANCES: dict[str, tuple[float, float]] = {
    "rss_mib": (16.0, 0.15),
    "fds": (8.0, 0.15),
    "threads": (4.0, 0.15),
    "amqp_connections": (3.0, 0.0),
    "amqp_channels": (4.0, 0.0),
    "pg_connections": (4.0, 0.0),
    "queue_depth": (2000.0, 0.0),
    # Without retention the store grows with every event by design; what must not grow is its size per
    # stored event. With retention the size itself must level off.
    "store_bytes_per_event": (0.0, 0.15),
    "store_mib": (0.0, 0.2),
    "store_mib_less_tombstones": (0.0, 0.2),
}
# What a dedup key costs on disk, measured (bench/README.md): SQLite 39.6 bytes (its table and filter),
# PostgreSQL 115.4 (its bucket tables and their indexes, at 10,000,000 keys). Without KEY_RETENTION the keys
# are kept forever by design, so under RETENTION the store grows by them alone: what must level off is the
# store less its keys.
KEY_BYTES: dict[str, float] = {"sqlite": 40.0, "postgres": 116.0}


@dataclass
class Sample:
    t: float  # seconds after the traffic started
    values: dict[str, float] = field(default_factory=dict)  # "series" -> value


def proc_stats(pids: Iterable[int], pss: bool = False) -> dict[str, float] | None:
    """RSS (or PSS) in MiB, fds and threads summed over live `pids`; None if none is alive."""
    rss_kib = 0.0
    fds = 0
    threads = 0
    alive = 0
    for pid in pids:
        base = Path("/proc", str(pid))
        try:
            status = (base / "status").read_text()
            if pss:
                rss_kib += _field((base / "smaps_rollup").read_text(), "Pss:")
            else:
                rss_kib += _field(status, "VmRSS:")
            threads += _field(status, "Threads:")
            fds += len(os.listdir(base / "fd"))
            alive += 1
        except (OSError, StopIteration, ValueError):
            continue
    if not alive:
        return None
    return {"rss_mib": rss_kib / 1024, "fds": float(fds), "threads": float(threads)}


def _field(text: str, name: str) -> int:
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith(name))


def theil_sen(points: list[tuple[float, float]]) -> float:
    """The median of the slopes between every pair of points (per second)."""
    slopes = [
        (y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points) for x2, y2 in points[i + 1 :] if x2 != x1
    ]
    return statistics.median(slopes) if slopes else 0.0


@dataclass(frozen=True)
class Growth:
    series: str
    metric: str
    samples: int
    median: float
    growth: float  # slope times the window's length, in the metric's unit
    allowed: float

    @property
    def ok(self) -> bool:
        return self.growth <= self.allowed

    def line(self) -> str:
        verdict = "ok" if self.ok else "GROWING"
        return (
            f"{self.series:<36} median {self.median:10.1f}  growth {self.growth:+10.1f}  "
            f"allowed {self.allowed:8.1f}  {verdict}"
        )


def metric_of(series: str) -> str:
    return series.rsplit(" ", 1)[-1]


def growth_check(samples: list[Sample], start: float, end: float, skip: Iterable[str] = ()) -> list[Growth]:
    """Every series' growth over the last two-thirds of [start, end] against its tolerance."""
    window_start = start + (end - start) / 3
    window = [s for s in samples if window_start <= s.t <= end]
    names = sorted({name for s in window for name in s.values} - set(skip))
    results = []
    for name in names:
        metric = metric_of(name)
        if metric not in TOLERANCES:
            continue
        points = [(s.t, s.values[name]) for s in window if name in s.values]
        if len(points) < 4:
            continue
        slope = theil_sen(points)
        span = points[-1][0] - points[0][0]
        median = statistics.median(y for _, y in points)
        floor, share = TOLERANCES[metric]
        results.append(Growth(name, metric, len(points), median, slope * span, max(floor, share * median)))
    return results


class Sampler:
    """Calls every probe each interval; a probe returns {series: value} (and may fail: then it is skipped)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.samples: list[Sample] = []
        self.errors: dict[str, int] = {}
        self.probes: list[tuple[str, Callable[[], Any]]] = []

    def add(self, name: str, probe: Callable[[], Any]) -> None:
        self.probes.append((name, probe))

    async def sample(self, t0: float) -> None:
        import inspect

        sample = Sample(time.monotonic() - t0)
        for name, probe in self.probes:
            try:
                value = probe()
                if inspect.isawaitable(value):
                    value = await asyncio.wait_for(value, self.interval)
                sample.values.update(value or {})
            except Exception:  # a probe of something that is down right now (a killed node, the database)
                self.errors[name] = self.errors.get(name, 0) + 1
        self.samples.append(sample)
