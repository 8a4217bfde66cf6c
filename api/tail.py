"""The live tail's one reader of the store: woken by the commit feed, it reads every new row once and hands
it to each open stream's bounded buffer (GET /events/stream, api/stream.py).

It shares the one subscription to the consumers' commit notices (api/commits.py) with the receipt watcher of
`?wait=stored`: a notice means "read now", never more. Streams never read the store for new events; the hub
reads for all of them, from its own position (the seq of the last row it read), so a lost notice costs
latency, never an event: the next read starts where the last one ended. Notices can be lost while the
api's subscription is down (the hub then reads every DOWN_INTERVAL) and while a consumer's own notice
connection is (re)connecting; so with streams open it also reads once every IDLE_READ.

Positions are the store's seqs, read with the keyset GET /events pages with. On PostgreSQL competing
consumers commit seqs out of order; the reader's pages stop below the oldest writer transaction still
running (store/postgres/reader.py, `_watermark`), and a transaction that starts later allocates larger
seqs, so a row committed late with a lower seq is never behind a position the hub has passed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Iterable
from contextlib import suppress

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from api.queries import NEWEST, row_json
from api.selection import Selection
from contract.commits import Notice
from store import Reader, Row

log = logging.getLogger(__name__)

READ_PAGE = 1000
DOWN_INTERVAL = 0.25
IDLE_READ = 1.0


def frame(row: Row) -> bytes:
    """One event as a Server-Sent Event: its position as the `id`, its JSON (as GET /events) as `data`."""
    return f"id: {row[0]}\ndata: {row_json(row)}\n\n".encode()


class Subscriber:
    """One open stream's bounded buffer of frames, filled by the hub, emptied by the stream."""

    def __init__(self, selection: Selection, start: int, after: int, limit: int) -> None:
        self.selection = selection
        self.start = start  # the hub's position when the stream joined: rows above it come from the hub
        self.taken = after  # the position of the last frame the stream took (or where it began)
        # What the hub hands over: above both (a client may resume beyond where this api has read so far).
        self.floor = max(start, after)
        self.overflowed = False
        self.finished = False  # the api is shutting down: the stream ends after what is buffered
        self._frames: deque[tuple[int, bytes]] = deque()
        self._size = 0
        self._limit = limit
        self._ready = asyncio.Event()

    def offer(self, seq: int, data: bytes) -> bool:
        """Buffer a frame; False when the buffer is full: the stream is over, its frames dropped."""
        if self.overflowed:
            return False
        if self._frames and self._size + len(data) > self._limit:
            self.overflowed = True
            self._frames.clear()
            self._size = 0
            self._ready.set()
            return False
        self._frames.append((seq, data))
        self._size += len(data)
        self._ready.set()
        return True

    def finish(self) -> None:
        self.finished = True
        self._ready.set()

    async def take(self, timeout: float) -> tuple[int, bytes] | None:
        """The next frame, or None after `timeout` without one, once overflowed (see `overflowed`) or
        finished with nothing left."""
        if not self._frames and not self.overflowed and not self.finished:
            self._ready.clear()
            with suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
        if self.overflowed or not self._frames:
            return None
        seq, data = self._frames.popleft()
        self._size -= len(data)
        self.taken = seq
        return seq, data

    def buffered(self) -> int:
        return self._size


class TailHub:
    """One task, running only while a stream is open, that reads new rows and fans them out."""

    def __init__(self, reader: Reader, feed: object | None, buffer_bytes: int) -> None:
        self._reader = reader
        self._feed = feed
        self._buffer_bytes = buffer_bytes
        self._subs: set[Subscriber] = set()
        self._lock = asyncio.Lock()  # one page's read and fan-out at a time; a stream joins between them
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.position: int | None = None
        # What the hub did, for the tests: store reads by cause, and streams ended by a full buffer.
        self.reads: Counter[str] = Counter()
        self.overflows = 0
        listen = getattr(feed, "listen", None)
        if listen is not None:
            listen(self)

    def on_notice(self, notice: Notice) -> None:
        if self._subs:
            self._wake.set()

    def on_live(self, live: bool) -> None:
        self._wake.set()  # back up: the notices of the gap are lost, so read now

    def streams(self) -> int:
        return len(self._subs)

    async def join(self, selection: Selection, after: int | None) -> Subscriber:
        """A stream's buffer, receiving every row above the hub's position from now on; rows from `after`
        up to `Subscriber.start` the stream reads itself, once (no `after`: from the newest row on)."""
        async with self._lock:
            if self.position is None:
                newest = await self._reader.page(None, 1, NEWEST, descending=True)
                self.position = newest.rows[0][0] if newest.rows else 0
            start = self.position
            sub = Subscriber(selection, start, start if after is None else after, self._buffer_bytes)
            self._subs.add(sub)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="tail-hub")
        return sub

    def finish_all(self) -> None:
        """End every stream (the api is shutting down): uvicorn waits for open responses to end, and a live
        tail never would. A client resumes elsewhere, or here after the restart, with Last-Event-ID."""
        for sub in self._subs:
            sub.finish()
        self._subs.clear()

    def leave(self, sub: Subscriber) -> None:
        self._subs.discard(sub)

    async def _run(self) -> None:
        while self._subs:
            self._wake.clear()
            failed = False
            try:
                await self._read_new()
            except Exception as exc:  # the store may be missing or failing: read again after the interval
                log.debug("tail read failed error=%s: %s", type(exc).__name__, exc)
                failed = True
            live = bool(getattr(self._feed, "live", False))
            interval = IDLE_READ if live and not failed else DOWN_INTERVAL
            with suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
        self.position = None  # nobody reads: the next stream starts from the newest row again

    async def _read_new(self) -> None:
        while self._subs:
            async with self._lock:
                low = self.position or 0
                self.reads["new"] += 1
                page = await self._reader.page(None, READ_PAGE, low)
                if not page.rows:
                    return
                high = page.rows[-1][0]
                deferred = await self._ask_store(low, high)
                await self._fan_out(page.rows, deferred)
                self.position = high
            if page.next_after is None:
                return

    async def _ask_store(self, low: int, high: int) -> dict[Selection, list[Row]]:
        """For the selections only the store can decide (a search): their rows in (low, high], one query
        per distinct selection, whatever the number of streams that share it."""
        wanted = {sub.selection for sub in self._subs if not sub.selection.in_memory}
        found: dict[Selection, list[Row]] = {}
        for chosen in wanted:
            try:
                found[chosen] = await self._selected(chosen, low, high)
            except Exception as exc:  # this selection's query only: its streams end, the others go on
                log.warning("live tail query failed error=%s: %s; its streams end", type(exc).__name__, exc)
                for sub in [sub for sub in self._subs if sub.selection == chosen]:
                    sub.finish()  # the client resumes with Last-Event-ID and hears what is wrong
                    self._subs.discard(sub)
        return found

    async def _selected(self, chosen: Selection, low: int, high: int) -> list[Row]:
        rows: list[Row] = []
        after = low
        while True:
            self.reads["selection"] += 1
            page = await self._reader.page(chosen.topic, READ_PAGE, after, filters=chosen.filters)
            rows += [row for row in page.rows if row[0] <= high]
            if page.next_after is None or page.rows[-1][0] >= high:
                return rows
            after = page.next_after

    async def _fan_out(self, rows: list[Row], deferred: dict[Selection, list[Row]]) -> None:
        """Offer each stream its rows. Every half a buffer's worth, the streams get a turn of the loop to take
        what they were offered: a page may hold more than a buffer (a thousand big events), and a stream
        that keeps up must not be ended by the size of one read, only by falling a buffer behind."""
        by_selection: dict[Selection, list[Subscriber]] = {}
        for sub in self._subs:
            by_selection.setdefault(sub.selection, []).append(sub)
        frames: dict[int, bytes] = {}
        full: list[Subscriber] = []
        offered, turn = 0, max(self._buffer_bytes // 2, 1)
        for chosen, subs in by_selection.items():
            matching = deferred.get(chosen) if not chosen.in_memory else None
            if matching is None:
                matching = [row for row in rows if chosen.matches(row)]
            for row in matching:
                data = frames.get(row[0])
                if data is None:
                    data = frames[row[0]] = frame(row)  # encoded once, shared by every stream
                for sub in subs:
                    if row[0] > sub.floor and not sub.offer(row[0], data) and sub not in full:
                        full.append(sub)
                offered += len(data)
                if offered >= turn:
                    offered = 0
                    await asyncio.sleep(0)  # the streams take what they were offered (one turn each)
                    subs = [sub for sub in subs if sub in self._subs]  # those that left meanwhile
        for sub in full:
            self.overflows += 1
            self._subs.discard(sub)  # its stream ends; the hub holds nothing more for it

    async def close(self) -> None:
        self._subs.clear()
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task


class TailCollector(Collector):
    """/metrics: open streams, streams ended by a full buffer, and the hub's store reads by cause."""

    def __init__(self, hub: TailHub) -> None:
        self._hub = hub

    def collect(self) -> Iterable[Metric]:
        hub = self._hub
        yield GaugeMetricFamily(
            "eventagg_tail_streams", "open live tails (GET /events/stream)", hub.streams()
        )
        yield CounterMetricFamily(
            "eventagg_tail_overflows", "live tails ended because the client read too slowly", hub.overflows
        )
        reads = CounterMetricFamily(
            "eventagg_tail_reads",
            "the live tail's store reads: new rows for every stream, and one per searched selection",
            labels=("kind",),
        )
        for kind in ("new", "selection"):
            reads.add_metric((kind,), hub.reads[kind])
        yield reads
