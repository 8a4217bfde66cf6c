"""The consumer status file: written atomically under a per-process temporary name, read back or refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from contract import status


def test_a_written_status_reads_back_equal_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    db_path = tmp_path / "data" / "events.db"
    written = status.Status.now("store_failing", "disk I/O error")

    status.write(db_path, written)

    assert status.read(db_path) == written
    assert written.pid == os.getpid() and written.since.endswith("Z")
    assert sorted(p.name for p in db_path.parent.iterdir()) == ["events.db.consumer.json"]


def test_a_writer_renames_its_own_temporary_file_whatever_another_process_left(tmp_path: Path) -> None:
    db_path = tmp_path / "events.db"
    other = tmp_path / "events.db.consumer.json.1.tmp"  # a consumer on the same directory, mid-write
    other.write_text("{}")

    status.write(db_path, status.Status.now("consuming"))

    assert status.read(db_path).state == "consuming"
    assert other.read_text() == "{}"


@pytest.mark.parametrize(
    "text",
    [
        None,
        "{not json",
        "[]",
        json.dumps({"state": "consuming", "since": "2026-01-01T00:00:00Z"}),
        json.dumps({"state": "dreaming", "since": "2026-01-01T00:00:00Z", "pid": 1}),
        json.dumps({"state": "consuming", "since": "yesterday", "pid": 1}),
    ],
)
def test_a_missing_or_foreign_status_is_unreadable_and_says_where(tmp_path: Path, text: str | None) -> None:
    db_path = tmp_path / "events.db"
    if text is not None:
        status.path_for(db_path).write_text(text)

    with pytest.raises(
        status.UnreadableStatus, match=r"no readable consumer status at .*events\.db\.consumer\.json"
    ):
        status.read(db_path)
    assert status.read_or_none(db_path) is None
