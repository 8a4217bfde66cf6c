"""What a publishing run shows on stderr while it works: the confirmed count, and what --verify waits for."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from contract.event import AnyEvent


class _Line:
    """One line on stderr, redrawn every REDRAW seconds from `start()` until `close()`, when enabled (stderr
    is a terminal); the subclass says what it shows (`_draw`)."""

    REDRAW = 0.25

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.total, self.enabled, self.done = total, enabled, 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._redraw())

    async def _redraw(self) -> None:
        while True:
            self._draw()
            await asyncio.sleep(self.REDRAW)

    def _draw(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.enabled:
            self._draw()
            sys.stderr.write("\n")
            self.enabled = False


class Progress(_Line):
    """The publishing run's line, from its start: events written towards the broker and events it confirmed.
    Silent when stderr is not a terminal."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        super().__init__(total, enabled)
        self._written: Callable[[], int] = lambda: 0

    def watch(self, written: Callable[[], int]) -> None:
        """Where the count of events written so far is read (the transport's batch)."""
        self._written = written

    def written(self) -> int:
        return self._written()

    def add(self, events: list[AnyEvent]) -> None:
        self.done += len(events)

    def _draw(self) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        sys.stderr.write(f"\r\033[Kwritten {self.written()}{of}  confirmed {self.done}")
        sys.stderr.flush()


class VerifyStatus:
    """What --verify is doing: one line on stderr (unless quiet), kept up to date in place on a terminal."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.live = quiet, sys.stderr.isatty() and not quiet

    def start(self, text: str) -> None:
        if not self.quiet:
            sys.stderr.write(f"verifying   {text}" + ("" if self.live else "\n"))
            sys.stderr.flush()

    def show(self, text: str) -> None:
        if self.live:
            sys.stderr.write(f"\r\033[Kverifying   {text}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.live:
            sys.stderr.write("\r\033[K")


class Counting(_Line):
    """The line of a run that counts what it did (an export): done, of total when known."""

    def __init__(self, what: str, total: int | None, enabled: bool) -> None:
        super().__init__(total, enabled)
        self.what = what

    def add(self, count: int) -> None:
        self.done += count

    def _draw(self) -> None:
        if self.total:
            share = min(self.done / self.total, 1.0)
            bar = "#" * int(share * 30)
            line = f"[{bar:<30}] {self.what} {self.done}/{self.total} ({share:.0%})"
        else:
            line = f"{self.what} {self.done}"
        sys.stderr.write(f"\r\033[K{line}")
        sys.stderr.flush()
