"""Search on both backends: q= words and phrases and payload.<field>= equality return exactly the events
the reference filter (tests/harness/search.py) selects from the events sent, with every other filter, both
orders and keyset paging; retention takes expired events out of the index in the same sweep."""

from __future__ import annotations

from datetime import timedelta

import pytest

from contract.event import Event
from store import Filters, Reader, Retention, Writer
from store.search import Search, SearchOff, parse
from tests.harness.search import SEARCHES, expected, sent
from tests.harness.stores import Peek, StoreSettings
from tests.harness.waiting import eventually


async def every_page(reader: Reader, topic: str | None, filters: Filters, descending: bool) -> list[str]:
    out: list[str] = []
    after: int | None = 2**63 - 1 if descending else 0
    while after is not None:
        page = await reader.page(topic, 3, after, descending, filters)
        out += [row[2] for row in page.rows]
        after = page.next_after
    return out


def search(q: str | None, pairs: list[tuple[str, str]]) -> Search:
    found = parse(q, pairs)
    assert found is not None
    return found


async def test_a_search_returns_exactly_the_matching_events_with_every_filter_order_and_paging(
    writer: Writer, reader: Reader
) -> None:
    assert await writer.record_search(True) is False
    events: list[Event] = []
    for batch in range(3):
        events += sent(batch)
        await writer.apply([sent(batch)[:5], sent(batch)[5:]])
    stored = (await reader.page(None, 100, 0)).rows
    assert [row[2] for row in stored] == [e.event_id for e in events]
    second = sorted({row[6] for row in stored})[1]
    later = [e for e, row in zip(events, stored, strict=True) if row[6] >= second]

    nonempty = 0
    for q, pairs in SEARCHES:
        for topic in (None, "orders"):
            for source in (None, "api"):
                want = expected(events, q, pairs, topic, source)
                nonempty += bool(want)
                filters = Filters(source=source, search=search(q, pairs))
                where = f"q={q!r} {pairs} topic={topic} source={source}"
                assert await every_page(reader, topic, filters, False) == want, where
                assert await every_page(reader, topic, filters, True) == want[::-1], where
        since = Filters(since=second, search=search(q, pairs))
        assert await every_page(reader, None, since, False) == expected(later, q, pairs, None, None)
    assert nonempty > 60  # the searches are not vacuous


async def test_retention_takes_expired_events_out_of_the_search_index_in_the_same_sweep(
    writer: Writer, reader: Reader, settings: StoreSettings, peek: Peek
) -> None:
    await writer.record_search(True)
    await writer.record_retention(Retention(timedelta(seconds=3)))
    old = sent(0)
    await writer.apply([old])

    async def expired() -> bool:
        return (await reader.page(None, 100, 0)).rows == []

    await eventually(expired, timeout=15, message="the old events expired")
    new = sent(1)
    await writer.apply([new])
    disk = Filters(search=search("disk", []))
    want = expected(new, "disk", [], None, None)
    assert await every_page(reader, None, disk, False) == want

    done = await writer.sweep()

    assert done.events == len(old)
    assert await every_page(reader, None, disk, False) == want
    if settings.database_url is None:  # PostgreSQL's index leaves with its partition
        assert await peek.rows("SELECT count(*) FROM events_search") == [(len(new),)]
        assert await peek.rows("SELECT min(rowid) FROM events_search") == await peek.rows(
            "SELECT min(seq) FROM events"
        )


@pytest.mark.parametrize("q", ["", "   ", "!!! ---", '""'])
def test_a_q_without_words_narrows_nothing(q: str) -> None:
    assert parse(q, []) is None
    assert parse(q, [("status", "ok")]) == parse(None, [("status", "ok")])


async def test_search_is_off_until_asked_for_and_turning_it_on_indexes_what_is_stored(
    writer: Writer, reader: Reader
) -> None:
    disk = Filters(search=search("disk", []))
    await writer.apply([sent(0)])
    with pytest.raises(SearchOff, match="SEARCH=on"):
        await reader.page(None, 10, 0, filters=disk)
    assert len((await reader.page(None, 100, 0)).rows) == 12  # reads without search are not affected

    assert await writer.record_search(True) is False
    await writer.apply([sent(1)])
    assert await every_page(reader, None, disk, False) == expected(sent(0) + sent(1), "disk", [], None, None)

    assert await writer.record_search(False) is True
    await writer.apply([sent(2)])
    with pytest.raises(SearchOff):
        await reader.page(None, 10, 0, filters=disk)

    assert await writer.record_search(True) is False
    assert await writer.record_search(True) is True
    everything = sent(0) + sent(1) + sent(2)
    for q, pairs in SEARCHES:
        assert await every_page(reader, None, Filters(search=search(q, pairs)), False) == expected(
            everything, q, pairs, None, None
        )
