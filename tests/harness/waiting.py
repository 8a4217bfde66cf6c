"""Bounded polling for tests: wait for a condition, never a fixed sleep."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class GiveUp(AssertionError):
    """Raised by a probe that sees a state the condition can no longer come out of (the process it waits
    for exited, the engine it asks died): the wait ends at once with this error instead of running out its
    bound. Every other exception from a probe counts as "not yet", since a probe may fail while the thing it
    watches is still starting."""


async def eventually(
    probe: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Call `probe` until it returns something truthy (returned) or `timeout` passes (AssertionError);
    a probe raising GiveUp ends the wait at once."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
            last = value
            if value:
                return value
        except GiveUp:
            raise
        except Exception as exc:  # a probe may fail while the thing it watches is still starting
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached within {timeout:g}s; last probe gave {last!r}")
        await asyncio.sleep(interval)


def eventually_sync(
    probe: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, message: str = ""
) -> T:
    """The blocking twin of `eventually`, with the same GiveUp rule."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = probe()
            if last:
                return last
        except GiveUp:
            raise
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{message or 'condition'} not reached within {timeout:g}s; last: {last!r}")
        time.sleep(interval)
