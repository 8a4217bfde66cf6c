"""Commit notices on SQLite: a datagram from the writer's thread, right after its COMMIT, to each api.

A SQLite store is one file that every process using it opens on one machine (WAL mode needs their shared
memory), so the consumer and every api reading the store share a host, or a volume on one host. Each api
binds a Unix datagram socket in the directory beside the file (`<file>.notices/`, CommitSocket); the writer
sends each commit's notice (contract/commits.py) to every socket there (NoticeSender) as soon as `COMMIT`
returns, before its thread hands the batch back: no broker hop on a `?wait=stored` request's path.

Besides the notice the consumer publishes on the broker, as with PostgreSQL's `NOTIFY`: a notice is a hint. A
datagram is dropped when the api's socket buffer is full (counted), and a socket whose api died is refused
and removed; an api that cannot bind its socket (a read-only directory, a path longer than a socket name
takes) hears the broker's copy alone, and any api reads the store for what its requests wait for
(api/stored.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from contract import commits

log = logging.getLogger(__name__)

SUFFIX = ".notices"
SOCKET_SUFFIX = ".sock"
# The directory is listed again when its modification time changes (an api came or went), and at least this
# often (a time stamp's granularity may hide two changes in a row).
RELIST_INTERVAL = 1.0
RACY_NS = 50_000_000
# How often an api checks that its socket is still the one in the directory (someone may have removed it).
CHECK_INTERVAL = 2.0
# What an api asks of its socket's receive buffer (the kernel caps it at net.core.rmem_max).
RECEIVE_BUFFER = 4 << 20
RECEIVE_MAX = 65_536
# How often an api that started before its consumer looks for the store's directory.
STORE_WAIT = 0.5


def directory(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + SUFFIX)


class NoticeSender:
    """The writer's side: called on its thread after each commit; never raises, never blocks."""

    def __init__(self, db_path: Path) -> None:
        self._dir = directory(db_path)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)
        self._targets: list[str] = []
        self._listed_mtime = -1
        self._listed_at = 0.0
        self.sent = 0
        self.dropped = 0  # a full receive buffer: the api reads the store (or hears the broker's copy)

    def committed(
        self, receipts: Sequence[str], stored: int, figures: Sequence[tuple[str, int, int]]
    ) -> None:
        parts = commits.parts(receipts, stored, figures)
        if not parts:
            return
        for target in self._listed():
            for part in parts:
                try:
                    self._socket.sendto(part, target)
                    self.sent += 1
                except BlockingIOError:
                    self.dropped += 1
                    break
                except ConnectionRefusedError:  # nobody bound to it: its api is gone
                    with contextlib.suppress(OSError):
                        os.unlink(target)
                    self._listed_mtime = -1
                    break
                except OSError as exc:  # removed meanwhile, or a name too long: skipped
                    log.debug("commit notice not sent target=%s error=%r", target, exc)
                    self._listed_mtime = -1
                    break

    def _listed(self) -> list[str]:
        now = time.monotonic()
        try:
            mtime = os.stat(self._dir).st_mtime_ns
        except OSError:
            self._targets = []
            return self._targets
        if mtime != self._listed_mtime or now - self._listed_at >= RELIST_INTERVAL:
            try:
                names = os.listdir(self._dir)
            except OSError:
                names = []
            self._targets = [str(self._dir / n) for n in names if n.endswith(SOCKET_SUFFIX)]
            # A change within the clock's tick after the listing would keep the same time stamp ("racy git"):
            # a listing as recent as its directory's last change is made again next time.
            racy = time.time_ns() - mtime < RACY_NS
            self._listed_mtime, self._listed_at = (-1 if racy else mtime), now
        return self._targets

    def close(self) -> None:
        self._socket.close()


class CommitSocket:
    """One api's socket in the notices directory: `on_payload` for each notice, `on_live` when it is bound
    or goes (removed by someone, or the api closing)."""

    def __init__(
        self,
        db_path: Path,
        on_payload: Callable[[bytes], None],
        on_live: Callable[[bool], None],
        retry_interval: float,
    ) -> None:
        self._dir = directory(db_path)
        self._on_payload = on_payload
        self._on_live = on_live
        self._retry = retry_interval
        self._task: asyncio.Task[None] | None = None
        self._warned = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="commit-socket")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock: socket.socket | None = None
            path = self._dir / f"{secrets.token_hex(6)}{SOCKET_SUFFIX}"
            live = False
            if not self._dir.parent.is_dir():  # the store's directory: the consumer makes it
                await asyncio.sleep(STORE_WAIT)
                continue
            try:
                self._dir.mkdir(exist_ok=True)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
                sock.bind(str(path))
                inode = os.stat(path).st_ino
                loop.add_reader(sock.fileno(), self._readable, sock)
                live = True
                self._warned = False
                self._on_live(True)
                log.info("commit notices bound socket=%s", path)
                while True:
                    await asyncio.sleep(CHECK_INTERVAL)
                    if os.stat(path).st_ino != inode:
                        break
            except OSError as exc:  # the directory not writable, the path too long, the socket removed
                if not live and not self._warned:
                    log.warning(
                        "commit notices: no socket in %s error=%r; the broker's notices serve", self._dir, exc
                    )
                    self._warned = True
            finally:
                if sock is not None:
                    loop.remove_reader(sock.fileno())
                    sock.close()
                    with contextlib.suppress(OSError):
                        if live and os.stat(path).st_ino == inode:
                            os.unlink(path)
                if live:
                    self._on_live(False)
                    log.warning("commit notice socket lost; binding again in %.1fs", self._retry)
            await asyncio.sleep(self._retry)

    def _readable(self, sock: socket.socket) -> None:
        while True:
            try:
                payload = sock.recv(RECEIVE_MAX)
            except OSError:  # nothing more queued (BlockingIOError), or the socket closed under the loop
                return
            self._on_payload(payload)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
