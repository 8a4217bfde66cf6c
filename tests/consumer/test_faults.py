"""Fault injection stays inert unless asked for, and fails a commit only while its flag file exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.faults import COMMIT, FAIL_AFTER_COMMIT, KILL_AFTER_COMMIT, Faults
from contract.event import Event
from store import StoreError
from store.sqlite import SqliteWriter

EVENT = Event(topic="t", event_id="1", timestamp="2026-01-01T00:00:00Z", source="s")


def test_no_variables_means_no_faults() -> None:
    faults = Faults.from_env({})
    assert not faults.active
    faults.before_commit()
    faults.after_commit(10**6)  # would SIGKILL the test run if it were armed


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({KILL_AFTER_COMMIT: "0"}, "positive integer"),
        ({KILL_AFTER_COMMIT: "soon"}, "positive integer"),
        ({COMMIT: "melt:/tmp/x"}, "KIND one of full, ioerror"),
        ({COMMIT: "ioerror"}, "KIND:PATH"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Faults.from_env(environ)


@pytest.mark.parametrize(
    ("kind", "error"), [("ioerror", "disk I/O error"), ("full", "database or disk is full")]
)
async def test_a_commit_fails_while_the_flag_exists_and_leaves_no_trace(
    tmp_path: Path, kind: str, error: str
) -> None:
    flag = tmp_path / "flag"
    faults = Faults.from_env({COMMIT: f"{kind}:{flag}", KILL_AFTER_COMMIT: "3"})
    assert (faults.kill_after_commit, faults.commit_error) == (3, kind)
    store = await SqliteWriter.open(tmp_path / "events.db", faults.before_commit)
    try:
        flag.touch()
        with pytest.raises(StoreError, match=error):
            await store.apply([[EVENT]])
        assert (await store.counters())["received"] == 0
        flag.unlink()
        assert (await store.apply([[EVENT]])).unique_processed == 1
        assert (await store.counters())["received"] == 1
    finally:
        await store.close()


def test_failing_after_a_commit_creates_the_flag_right_after_that_commit(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    faults = Faults.from_env({COMMIT: f"ioerror:{flag}", FAIL_AFTER_COMMIT: "2"})

    faults.after_commit(1)
    assert not flag.exists()
    faults.after_commit(2)
    assert flag.exists()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({FAIL_AFTER_COMMIT: "1"}, "needs EVENTAGG_FAULT_COMMIT"),
        ({COMMIT: "full:/tmp/x", FAIL_AFTER_COMMIT: "0"}, "positive integer"),
    ],
)
def test_failing_after_a_commit_needs_the_commit_fault_and_a_count(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Faults.from_env(environ)
