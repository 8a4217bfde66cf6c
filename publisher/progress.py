"""What a publishing run shows on stderr while it works: the confirmed count, and what --verify waits for."""

from __future__ import annotations

import sys
import time

from contract.event import Event


class Progress:
    """A one-line progress display on a terminal; silent when stderr is not one."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.total, self.enabled, self.done, self._last = total, enabled, 0, 0.0

    def add(self, events: list[Event]) -> None:
        self.done += len(events)
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or self.done == self.total):
            self._last = now
            of = f"/{self.total}" if self.total else ""
            sys.stderr.write(f"\rconfirmed {self.done}{of}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


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
