"""Tests of tests/harness/cleanups.py: teardown runs last-first and never stops at a failure."""

from __future__ import annotations

import pytest

from tests.harness.cleanups import Cleanups


def test_cleanups_run_in_reverse_order_of_registration_and_only_once() -> None:
    done: list[str] = []
    cleanups = Cleanups()
    for name in ("broker", "consumer", "api"):
        cleanups.add(lambda name=name: done.append(name))
    cleanups.run()
    cleanups.run()
    assert done == ["api", "consumer", "broker"]


def test_every_cleanup_runs_when_some_fail_and_the_failures_name_their_cleanup() -> None:
    done: list[str] = []

    def fail(message: str) -> None:
        raise RuntimeError(message)

    cleanups = Cleanups()
    cleanups.add(lambda: done.append("first"))
    cleanups.add(lambda: fail("stuck"), "stuck process")
    cleanups.add(lambda: done.append("middle"))
    cleanups.add(lambda: fail("busy"), "busy database")
    with pytest.raises(ExceptionGroup) as raised:
        cleanups.run()
    assert done == ["middle", "first"]
    assert [str(e) for e in raised.value.exceptions] == ["busy", "stuck"]
    assert [e.__notes__ for e in raised.value.exceptions] == [
        ["(while cleaning up: busy database)"],
        ["(while cleaning up: stuck process)"],
    ]


def test_a_single_failure_is_raised_as_itself_and_a_discarded_cleanup_does_not_run() -> None:
    class Server:
        stops = 0

        def stop(self) -> None:
            self.stops += 1

    server = Server()
    cleanups = Cleanups()
    cleanups.add(server.stop)
    cleanups.discard(server.stop)
    cleanups.add(lambda: [][0])
    with pytest.raises(IndexError):
        cleanups.run()
    assert server.stops == 0
