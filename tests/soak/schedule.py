"""The fault schedule: a pure function of the seed, the run's length and the backend, so SOAK_SEED replays it.

Every kind of fault has its own stream of times, drawn from its own interval; the streams are independent,
so faults overlap. What cannot overlap with itself (a second broker node down while one is, a database fault
while the server is still down) is serialised when it is carried out (faults.py), never dropped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Seconds between two faults of a kind, drawn uniformly from (low, high), and the window of the first one.
INTERVALS: dict[str, tuple[float, float]] = {
    "consumer_kill": (5.0, 12.0),
    "consumer_stop": (50.0, 100.0),
    "api_kill": (50.0, 110.0),
    "broker_kill": (55.0, 95.0),
    "db_fault": (70.0, 130.0),
    "network": (40.0, 80.0),
}
FIRST = (3.0, 25.0)
KINDS = (
    "consumer_kill",
    "consumer_stop",
    "api_kill",
    "node_kill",
    "leader_kill",
    "db_restart",
    "db_kill",
    "net_cut",
    "net_slow",
)


@dataclass(frozen=True)
class Fault:
    """One fault: when (seconds after the traffic started), what, on which member, and for how long."""

    at: float
    kind: str
    # A consumer's slot or a broker node's index; -1 where the fault picks its target when it happens (the
    # quorum leader) or has none.
    target: int = -1
    # Seconds the target stays down (a kill: before the restart), stopped, or slowed.
    duration: float = 0.0
    # For net_slow: the delay before every chunk, in seconds.
    delay: float = 0.0

    def describe(self) -> str:
        parts = [f"{self.at:8.2f}s  {self.kind:<13}"]
        if self.target >= 0:
            parts.append(f"target={self.target}")
        if self.duration:
            parts.append(f"for={self.duration:.2f}s")
        if self.delay:
            parts.append(f"delay={self.delay * 1000:.0f}ms")
        return " ".join(parts)


def schedule(seed: int, seconds: float, backend: str, consumers: int, heartbeat: float) -> list[Fault]:
    """Every fault of a run of `seconds`, in time order."""
    rng = random.Random(seed)
    faults: list[Fault] = []

    def times(stream: str) -> list[float]:
        low, high = INTERVALS[stream]
        out = []
        at = rng.uniform(*FIRST) if stream != "consumer_kill" else rng.uniform(low, high)
        while at < seconds:
            out.append(at)
            at += rng.uniform(low, high)
        return out

    for at in times("consumer_kill"):
        faults.append(Fault(at, "consumer_kill", rng.randrange(consumers), rng.uniform(0.0, 2.0)))
    for at in times("consumer_stop"):
        # Longer than the broker's heartbeat timeout (two missed heartbeats), so the broker drops the
        # connection while the process is stopped.
        faults.append(Fault(at, "consumer_stop", rng.randrange(consumers), heartbeat * 3 + rng.uniform(0, 4)))
    for at in times("api_kill"):
        faults.append(Fault(at, "api_kill", -1, rng.uniform(0.5, 3.0)))
    for n, at in enumerate(times("broker_kill")):
        # Every other one is the quorum queue's leader, found when the fault happens; the rest a random node.
        if n % 2 == 0:
            faults.append(Fault(at, "leader_kill", -1, rng.uniform(5.0, 20.0)))
        else:
            faults.append(Fault(at, "node_kill", rng.randrange(3), rng.uniform(5.0, 20.0)))
    if backend == "postgres":
        for n, at in enumerate(times("db_fault")):
            faults.append(Fault(at, "db_restart" if n % 2 == 0 else "db_kill", -1, rng.uniform(1.0, 5.0)))
    for n, at in enumerate(times("network")):
        if n % 2 == 0:
            faults.append(Fault(at, "net_cut"))
        else:
            faults.append(Fault(at, "net_slow", -1, rng.uniform(10.0, 30.0), rng.uniform(0.05, 0.3)))
    faults.sort(key=lambda fault: fault.at)
    return faults
