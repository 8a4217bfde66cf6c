"""The live tail's hub (api/tail.py) on a store in memory: one read for all streams, per-stream filters,
the store asked once per searched selection, bounded buffers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from api.selection import Selection
from api.tail import TailHub
from contract.commits import Notice
from store import Filters, Page, Row
from store.base import NO_FILTERS
from tests.harness.waiting import eventually


@dataclass(frozen=True, slots=True)
class Searched(Filters):
    """Filters with a field the hub cannot evaluate itself, as a search adds."""

    q: str | None = None


class MemoryReader:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.pages: list[tuple[str | None, Filters]] = []

    def add(self, topic: str, n: int, payload: str = "{}") -> None:
        seq = len(self.rows) + 1
        self.rows.append(
            (seq, topic, f"e{n}", "2026-01-01T00:00:00Z", "src", payload, "2026-01-01T00:00:00Z")
        )

    async def page(
        self,
        topic: str | None,
        limit: int,
        after: int,
        descending: bool = False,
        filters: Filters = NO_FILTERS,
    ) -> Page:
        self.pages.append((topic, filters))
        rows = sorted(self.rows, key=lambda r: -r[0] if descending else r[0])
        rows = [r for r in rows if (r[0] < after if descending else r[0] > after)]
        rows = [r for r in rows if topic is None or r[1] == topic]
        if isinstance(filters, Searched) and filters.q is not None:
            rows = [r for r in rows if filters.q in r[5]]
        return Page(rows[:limit], rows[limit - 1][0] if len(rows) > limit else None)


async def drain(sub: object) -> list[int]:
    taken = []
    while (got := await sub.take(0.01)) is not None:  # type: ignore[attr-defined]
        taken.append(got[0])
    return taken


async def test_one_read_serves_every_stream_each_with_its_own_filter() -> None:
    reader = MemoryReader()
    reader.add("a", 0)
    hub = TailHub(reader, None, 1 << 20)  # type: ignore[arg-type]
    everything = [await hub.join(Selection(None, Filters()), None) for _ in range(50)]
    only_b = await hub.join(Selection("b", Filters()), None)
    assert everything[0].start == 1
    for n in range(1, 7):
        reader.add("ab"[n % 2], n)
    reader.pages.clear()
    await hub._read_new()
    assert reader.pages == [(None, Filters())]  # once, whatever the number of streams
    for sub in everything:
        assert await drain(sub) == [2, 3, 4, 5, 6, 7]
    assert await drain(only_b) == [2, 4, 6]
    await hub.close()


async def test_a_searched_selection_is_read_from_the_store_once_for_all_its_streams() -> None:
    reader = MemoryReader()
    hub = TailHub(reader, None, 1 << 20)  # type: ignore[arg-type]
    searched = Selection(None, Searched(q="boom"))
    subs = [await hub.join(searched, None) for _ in range(3)]
    for n in range(4):
        reader.add("a", n, '{"m":"boom"}' if n % 2 else "{}")
    reader.pages.clear()
    await hub._read_new()
    assert reader.pages.count((None, Searched(q="boom"))) == 1
    for sub in subs:
        assert await drain(sub) == [2, 4]
    await hub.close()


async def test_a_full_buffer_ends_the_stream_with_the_position_it_reached() -> None:
    reader = MemoryReader()
    hub = TailHub(reader, None, 16384)  # type: ignore[arg-type]
    slow = await hub.join(Selection(None, Filters()), None)
    fast = await hub.join(Selection(None, Filters()), None)
    for n in range(5):
        reader.add("a", n, '{"x":"' + "y" * 400 + '"}')
    await hub._read_new()
    assert (await slow.take(0.01) or (0, b""))[0] == 1
    assert await drain(fast) == [1, 2, 3, 4, 5]
    for n in range(5, 32):  # more than the slow one has room for, not the fast one
        reader.add("a", n, '{"x":"' + "y" * 400 + '"}')
    await hub._read_new()
    assert slow.overflowed and slow.buffered() == 0 and await slow.take(0.01) is None
    assert slow.taken == 1  # where it resumes: the last position it sent
    assert hub.streams() == 1 and hub.overflows == 1
    assert await drain(fast) == list(range(6, 33))
    await hub.close()


async def test_a_stream_that_keeps_up_is_not_ended_by_a_page_larger_than_its_buffer() -> None:
    reader = MemoryReader()
    hub = TailHub(reader, None, 16384)  # type: ignore[arg-type]
    sub = await hub.join(Selection(None, Filters()), None)
    taken: list[int] = []

    async def stream() -> None:  # as api/stream.py takes frames: as fast as they come
        while (got := await sub.take(5.0)) is not None:
            taken.append(got[0])
            if len(taken) == 200:
                return

    reading = asyncio.create_task(stream())
    for n in range(200):  # one page of about 94 KB: six buffers
        reader.add("a", n, '{"x":"' + "y" * 400 + '"}')
    await hub._read_new()
    await asyncio.wait_for(reading, 10)
    assert taken == list(range(1, 201))
    assert not sub.overflowed and hub.overflows == 0 and hub.streams() == 1
    await hub.close()


class Feed:
    """The commit feed as the hub hears it (api/commits.py): listeners, and whether notices flow."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.listeners: list[TailHub] = []

    def listen(self, listener: TailHub) -> None:
        self.listeners.append(listener)


async def test_a_notice_wakes_the_hub_and_without_notices_it_still_reads_from_where_it_stopped() -> None:
    reader = MemoryReader()
    feed = Feed(live=True)
    hub = TailHub(reader, feed, 1 << 20)  # type: ignore[arg-type]
    sub = await hub.join(Selection(None, Filters()), None)
    await eventually(lambda: hub.reads["new"] >= 1, 5, 0.01, message="the first read")
    reader.add("a", 0)
    hub.on_notice(Notice(("r",), 1))
    assert await eventually(lambda: drain(sub), 0.5, 0.01, message="woken by the notice") == [1]
    # The notices go down (and those of the gap are lost): the hub reads on its own, from its position.
    feed.live = False
    hub.on_live(False)
    reader.add("a", 1)
    reader.add("a", 2)
    assert await eventually(lambda: drain(sub), 5, 0.01, message="read without notices") == [2, 3]
    await hub.close()


async def test_a_stream_resuming_beyond_the_hubs_position_gets_nothing_twice() -> None:
    reader = MemoryReader()
    hub = TailHub(reader, None, 1 << 20)  # type: ignore[arg-type]
    sub = await hub.join(Selection(None, Filters()), 3)  # a position another replica already sent
    for n in range(5):
        reader.add("a", n)
    await hub._read_new()
    assert await drain(sub) == [4, 5]
    await hub.close()


class Refusing(MemoryReader):
    async def page(
        self,
        topic: str | None,
        limit: int,
        after: int,
        descending: bool = False,
        filters: Filters = NO_FILTERS,
    ) -> Page:
        if isinstance(filters, Searched):
            raise RuntimeError("this store cannot search")
        return await super().page(topic, limit, after, descending, filters)


async def test_a_selection_the_store_refuses_ends_its_own_streams_only() -> None:
    reader = Refusing()
    hub = TailHub(reader, None, 1 << 20)  # type: ignore[arg-type]
    refused = await hub.join(Selection(None, Searched(q="x")), None)
    plain = await hub.join(Selection(None, Filters()), None)
    reader.add("a", 0)
    await hub._read_new()
    assert refused.finished and await refused.take(0.01) is None
    assert await drain(plain) == [1]
    assert hub.streams() == 1
    await hub.close()
