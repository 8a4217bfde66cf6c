"""Tests of tests/harness/waiting.py: a probe can end a wait at once; any other failure means "not yet"."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.harness.processes import Deployment, Processes, api_get
from tests.harness.waiting import GiveUp, eventually, eventually_sync


async def test_a_probe_that_gives_up_ends_the_wait_at_once_with_its_own_message() -> None:
    calls = 0

    def probe() -> bool:
        nonlocal calls
        calls += 1
        raise GiveUp("the process exited 3")

    started = time.monotonic()
    with pytest.raises(GiveUp, match="the process exited 3"):
        await eventually(probe, timeout=30, interval=0.01)
    assert calls == 1
    assert time.monotonic() - started < 5  # against a 30 s bound


async def test_other_probe_failures_are_retried_until_the_probe_answers() -> None:
    calls = 0

    def probe() -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise AssertionError("not yet")  # a probe's own assertion is "not yet", as before
        return calls

    assert await eventually(probe, timeout=30, interval=0.01) == 3


async def test_a_wait_that_runs_out_says_what_the_last_probe_gave() -> None:
    def probe() -> bool:
        raise ValueError("no")

    with pytest.raises(AssertionError, match=r"ready not reached within 0.2s; last probe gave ValueError"):
        await eventually(probe, 0.2, 0.01, message="ready")


def test_the_blocking_wait_gives_up_at_once_too() -> None:
    calls = 0

    def probe() -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise GiveUp("dockerd died")
        raise RuntimeError("still starting")

    with pytest.raises(GiveUp, match="dockerd died"):
        eventually_sync(probe, timeout=30, interval=0.01)
    assert calls == 2


async def test_waiting_for_an_api_that_exited_on_a_bad_setting_fails_at_once_with_its_output(
    tmp_path: Path,
) -> None:
    deployment = Deployment("amqp://guest:guest@127.0.0.1:5672/", "x", "x", tmp_path / "db", tmp_path)
    procs = Processes(deployment)
    try:
        api = procs.api(API_COMPAT="nonsense")

        def up() -> bool:
            api.still_running()
            return api_get(deployment, "/health").status_code == 200

        started = time.monotonic()
        with pytest.raises(GiveUp, match=r"api exited [1-9][\s\S]*API_COMPAT"):
            await eventually(up, timeout=120, interval=0.05)
        assert time.monotonic() - started < 60  # the bound is 120 s; the api exits within seconds
    finally:
        procs.close()
