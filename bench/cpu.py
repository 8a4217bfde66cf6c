"""CPU time each process of a run used, from /proc: consumers, PostgreSQL backends, the broker, the publisher.

On a 2-core machine a throughput figure alone cannot say whether adding consumers failed to help because of
locks in the database or because the cores were already busy; the CPU seconds each process spent over the
measured window can. Linux only, like the rest of the bench's process accounting.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
# Fields after "(comm)" in /proc/<pid>/stat (proc(5) fields 14 and 15: utime, stime, in clock ticks).
STAT_UTIME, STAT_STIME = 11, 12
TCP_LISTEN = "0A"


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU the process has used so far (all its threads), or None once it is gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[STAT_UTIME]) + int(fields[STAT_STIME])) / os.sysconf("SC_CLK_TCK")


def listener_pid(port: int) -> int | None:
    """The process listening on this TCP port (e.g. the broker's beam.smp on 5672), or None."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == TCP_LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{inode}]")
    if not inodes:
        return None
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except OSError:
            continue  # gone, or not ours to read
        if links & inodes:
            return int(entry.name)
    return None


@dataclass(slots=True)
class CpuMeter:
    """CPU seconds per named group of processes over a window: start(), sample() while it runs, used().

    A pid first seen after start() (a PostgreSQL backend forked during the window) counts from zero. A process
    that exits keeps what the last sample() saw of it, so sample often enough (the bench samples each poll
    of the store, every few milliseconds; a /proc read costs microseconds).
    """

    groups: dict[str, list[int]] = field(default_factory=dict)
    _before: dict[int, float] = field(default_factory=dict)
    _last: dict[int, float] = field(default_factory=dict)

    def watch(self, group: str, pids: Iterable[int]) -> None:
        known = self.groups.setdefault(group, [])
        known.extend(pid for pid in pids if pid not in known)

    def start(self) -> None:
        self._before.clear()
        self._last.clear()
        for pids in self.groups.values():
            for pid in pids:
                used = cpu_seconds(pid)
                if used is not None:
                    self._before[pid] = self._last[pid] = used

    def sample(self) -> None:
        for pids in self.groups.values():
            for pid in pids:
                used = cpu_seconds(pid)
                if used is not None:
                    self._last[pid] = used

    def used(self) -> dict[str, float]:
        """CPU seconds per group between start() and the last sample()."""
        return {
            group: sum(self._last.get(pid, 0.0) - self._before.get(pid, 0.0) for pid in pids)
            for group, pids in self.groups.items()
        }
