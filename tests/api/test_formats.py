"""The patterns /openapi.json gives for the cursor and the timestamp describe only strings the api accepts,
and every cursor the api hands out (in the range a store reaches) matches its pattern."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from api.formats import CURSOR_PATTERN, TIMESTAMP_PATTERN
from api.queries import decode_cursor, encode_cursor
from contract.event import normalise_timestamp


@settings(max_examples=200, deadline=None, database=None)
@given(st.from_regex(CURSOR_PATTERN, fullmatch=True))
def test_every_string_of_the_cursor_pattern_is_a_cursor(cursor: str) -> None:
    assert 0 <= decode_cursor(cursor) < 10**18


@settings(max_examples=200, deadline=None, database=None)
@given(st.integers(min_value=0, max_value=10**18 - 1))
def test_every_cursor_up_to_18_digits_matches_the_cursor_pattern(seq: int) -> None:
    assert re.fullmatch(CURSOR_PATTERN, encode_cursor(seq))


@settings(max_examples=200, deadline=None, database=None)
@given(st.from_regex(TIMESTAMP_PATTERN, fullmatch=True))
def test_every_string_of_the_timestamp_pattern_is_a_valid_timestamp(timestamp: str) -> None:
    assert normalise_timestamp(timestamp).endswith("Z")


def test_the_timestamp_pattern_covers_the_usual_forms() -> None:
    for value in (
        "2026-11-22",
        "2026-11-22T10:15",
        "2026-11-22T10:15:00Z",
        "2026-11-22 10:15:00.123456+01:00",
        "2024-12-31T23:59:59-05:30",
    ):
        assert re.fullmatch(TIMESTAMP_PATTERN, value), value
