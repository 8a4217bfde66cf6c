"""Bounded polling for tests: wait for a condition, never a fixed sleep."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Call `probe` until it returns something truthy (returned) or `timeout` passes (AssertionError)."""
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
        except Exception as exc:  # a probe may fail while the thing it watches is still starting
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached within {timeout:g}s; last probe gave {last!r}")
        await asyncio.sleep(interval)


def eventually_sync(
    probe: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, message: str = ""
) -> T:
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = probe()
            if last:
                return last
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{message or 'condition'} not reached within {timeout:g}s; last: {last!r}")
        time.sleep(interval)
