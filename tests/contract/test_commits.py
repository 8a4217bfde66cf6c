"""Commit notices on the wire (contract/commits.py): figures carried and capped, and both releases' notices
understood by either side."""

from __future__ import annotations

import json

from contract import commits
from contract.commits import FIGURES_PER_NOTICE, Notice


def test_a_notice_carries_the_figures_of_its_receipts_and_an_older_api_reads_what_it_always_read() -> None:
    body = commits.encode(["r1", "r2", "r3"], 4, [("r1", 2, 0), ("r2", 0, 1)])

    assert commits.decode(body) == Notice(("r1", "r2", "r3"), 4, {"r1": (2, 0), "r2": (0, 1)})
    # An api of the earlier release takes "receipts" and "stored" alone, as they were.
    data = json.loads(body)
    assert (data["receipts"], data["stored"]) == (["r1", "r2", "r3"], 4)


def test_an_older_consumers_notice_has_no_figures_and_its_receipts_are_left_to_the_store() -> None:
    assert commits.decode(b'{"receipts":["r1"],"stored":1}') == Notice(("r1",), 1, {})
    assert commits.encode(["r1"], 1) == b'{"receipts":["r1"],"stored":1}'  # no figures: no key at all


def test_figures_beyond_the_cap_are_left_out_and_the_notice_stays_small() -> None:
    count = FIGURES_PER_NOTICE + 500
    receipts = [f"{i:032x}" for i in range(count)]  # receipt ids as the api makes them (uuid4().hex)
    body = commits.encode(receipts, count, [(r, 1, 0) for r in receipts])
    notice = commits.decode(body)

    assert notice is not None and notice.receipts == tuple(receipts)
    assert list(notice.figures) == receipts[:FIGURES_PER_NOTICE]
    figures_bytes = len(body) - len(commits.encode(receipts, count))
    assert figures_bytes <= 45 * FIGURES_PER_NOTICE


def test_figures_that_are_not_well_formed_are_dropped_but_the_receipts_still_count() -> None:
    for figures in (
        '{"r1":[1]}',
        '{"r1":[1,-1]}',
        '{"r1":[true,0]}',
        '{"r1":["1",0]}',
        '{"r1":[1,0],"r2":null}',
        '[["r1",1,0]]',
    ):
        body = f'{{"receipts":["r1","r2"],"stored":1,"figures":{figures}}}'.encode()
        assert commits.decode(body) == Notice(("r1", "r2"), 1, {}), figures
    assert commits.decode(b'{"receipts":"r1","stored":1,"figures":{"r1":[1,0]}}') is None


def test_a_commits_notice_in_parts_keeps_every_receipt_and_figure_once_each_part_within_the_limit() -> None:
    # 600 receipts of the longest kind a consumer takes (255 characters, some needing JSON escapes), half of
    # them inserted by the commit (with figures), 900 events stored.
    receipts = [f"{i:05d}" + '\u00e9"' * 125 for i in range(600)]
    figures = [(r, i % 3, 1) for i, r in enumerate(receipts) if i % 2 == 0]

    parts = commits.parts(receipts, 900, figures)

    assert len(parts) > 1
    assert all(len(part) <= commits.PART_LIMIT for part in parts)
    notices = [commits.decode(part) for part in parts]
    assert all(n is not None for n in notices)
    decoded = [n for n in notices if n is not None]
    assert [r for n in decoded for r in n.receipts] == receipts
    assert {r: f for n in decoded for r, f in n.figures.items()} == {r: (new, d) for r, new, d in figures}
    assert [n.stored for n in decoded] == [900] + [0] * (len(decoded) - 1)  # counted once


def test_a_commit_with_nothing_to_tell_has_no_notice_and_one_without_receipts_tells_its_stored_events() -> (
    None
):
    assert commits.parts([], 0, []) == []
    assert [commits.decode(p) for p in commits.parts([], 7, [])] == [Notice((), 7, {})]
