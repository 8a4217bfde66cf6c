"""Owns teardown: what a test or the session started is undone last-first, every step even if one fails."""

from __future__ import annotations

import atexit
from collections.abc import Callable
from types import TracebackType


class Cleanups:
    """Cleanups registered in one place and run in reverse order of registration.

    Every cleanup runs even when an earlier one raised: one process that will not die must not leave the
    next one running. The failures are raised together afterwards (a single one as itself), each with a
    note naming the cleanup it came from.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Callable[[], object], str]] = []

    def add(self, action: Callable[[], object], what: str = "") -> None:
        self._pending.append((action, what or getattr(action, "__qualname__", repr(action))))

    def discard(self, action: Callable[[], object]) -> None:
        """Forget `action`, already done by hand; a bound method matches another of the same object."""
        self._pending = [(pending, what) for pending, what in self._pending if pending != action]

    def run(self) -> None:
        failures: list[Exception] = []
        while self._pending:
            action, what = self._pending.pop()
            try:
                action()
            except Exception as exc:
                exc.add_note(f"(while cleaning up: {what})")
                failures.append(exc)
        if len(failures) == 1:
            raise failures[0]
        if failures:
            raise ExceptionGroup(f"{len(failures)} cleanups failed", failures)

    def __enter__(self) -> Cleanups:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.run()


# What must not outlive the test process even when it dies before its fixtures tear down (an Erlang VM, a
# PostgreSQL server): registered when started, discarded when stopped. Python reports a failure here on
# stderr as it exits.
AT_EXIT = Cleanups()
atexit.register(AT_EXIT.run)
