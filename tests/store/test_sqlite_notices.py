"""The SQLite store's own commit notices (store/sqlite/notices.py), between real Unix datagram sockets: each
api's socket hears every commit, an api that comes later is found, and one that died is removed."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from contract import commits
from contract.commits import Notice
from store.sqlite import notices
from tests.harness.waiting import eventually


class Heard:
    def __init__(self) -> None:
        self.notices: list[Notice | None] = []
        self.live: list[bool] = []

    def payload(self, body: bytes) -> None:
        self.notices.append(commits.decode(body))

    def up(self, live: bool) -> None:
        self.live.append(live)


def sockets(db: Path) -> list[Path]:
    return sorted(notices.directory(db).glob(f"*{notices.SOCKET_SUFFIX}"))


async def test_every_api_socket_hears_each_commit_and_a_dead_apis_socket_is_removed(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    first, second = Heard(), Heard()
    one = notices.CommitSocket(db, first.payload, first.up, 0.1)
    one.start()
    await eventually(lambda: first.live == [True], 10, message="the first api's socket bound")
    sender = notices.NoticeSender(db)
    try:
        sender.committed(["r1"], 1, [("r1", 1, 0)])
        await eventually(lambda: len(first.notices) == 1, 10, message="the first notice")
        assert first.notices == [Notice(("r1",), 1, {"r1": (1, 0)})]

        # A second api comes: the sender finds it by the directory's change, with no restart.
        two = notices.CommitSocket(db, second.payload, second.up, 0.1)
        two.start()
        await eventually(lambda: second.live == [True], 10, message="the second api's socket bound")
        sender.committed(["r2", "r3"], 2, [("r2", 0, 1)])
        await eventually(
            lambda: (len(first.notices), len(second.notices)) == (2, 1), 10, message="both heard"
        )
        assert first.notices[1] == second.notices[0] == Notice(("r2", "r3"), 2, {"r2": (0, 1)})

        # An api killed leaves its socket file behind; nobody is bound to it: the sender removes it.
        dead = notices.directory(db) / f"deadbeef{notices.SOCKET_SUFFIX}"
        orphan = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        orphan.bind(str(dead))
        orphan.close()
        assert dead.exists() and len(sockets(db)) == 3
        sender.committed([], 5, [])
        await eventually(lambda: len(first.notices) == len(second.notices) + 1 == 3, 10, message="the third")
        assert not dead.exists()
        assert first.notices[2] == second.notices[1] == Notice((), 5, {})
        assert sender.dropped == 0

        # An api closing removes its own socket and says it is down.
        await two.close()
        assert second.live == [True, False]
        assert len(sockets(db)) == 1
    finally:
        sender.close()
        await one.close()
    assert sockets(db) == []


async def test_an_api_whose_socket_was_removed_goes_down_and_binds_again(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    heard = Heard()
    listener = notices.CommitSocket(db, heard.payload, heard.up, 0.1)
    listener.start()
    try:
        await eventually(lambda: heard.live == [True], 10, message="bound")
        (path,) = sockets(db)
        os.unlink(path)
        await eventually(lambda: heard.live == [True, False, True], 10, message="down, then bound again")
        (again,) = sockets(db)
        assert again != path
        sender = notices.NoticeSender(db)
        sender.committed(["r9"], 1, [])
        sender.close()
        await eventually(lambda: heard.notices == [Notice(("r9",), 1, {})], 10, message="heard again")
    finally:
        await listener.close()


async def test_an_api_started_before_the_store_exists_binds_once_its_directory_is_made(
    tmp_path: Path,
) -> None:
    db = tmp_path / "later" / "events.db"
    heard = Heard()
    listener = notices.CommitSocket(db, heard.payload, heard.up, 60)
    listener.start()
    try:
        await asyncio.sleep(0)
        assert heard.live == []
        db.parent.mkdir()
        await eventually(lambda: heard.live == [True], 10, message="bound once the directory exists")
    finally:
        await listener.close()
