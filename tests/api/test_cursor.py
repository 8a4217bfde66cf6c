"""The api's opaque keyset cursors (the store suite, tests/store/, pages with what they decode to)."""

from __future__ import annotations

import base64

import pytest

from api.queries import BadCursor, decode_cursor, encode_cursor


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# --- cursors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [0, 1, 9, 10, 12345, 2**62])
def test_a_cursor_decodes_to_the_seq_it_encodes(seq: int) -> None:
    assert decode_cursor(encode_cursor(seq)) == seq


def test_a_cursor_is_url_safe_and_unpadded() -> None:
    for seq in range(200):
        cursor = encode_cursor(seq)
        assert "=" not in cursor
        assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("", id="empty"),
        pytest.param("!!!", id="garbage"),
        pytest.param("not-a-cursor", id="words"),
        pytest.param("12", id="bare-number"),
        pytest.param(b64("v1:"), id="no-seq"),
        pytest.param(b64("v1:abc"), id="seq-not-a-number"),
        pytest.param(b64("v1:-1"), id="negative"),
        pytest.param(b64("v2:5"), id="other-version"),
        pytest.param(b64("5"), id="no-version"),
        pytest.param(base64.urlsafe_b64encode(b"\xff\xfe:1").decode(), id="not-utf8"),
    ],
)
def test_a_cursor_not_made_by_this_api_is_a_bad_cursor(cursor: str) -> None:
    with pytest.raises(BadCursor):
        decode_cursor(cursor)


def test_a_cursor_beyond_the_64_bit_integer_range_is_a_bad_cursor() -> None:
    with pytest.raises(BadCursor):
        decode_cursor(encode_cursor(2**63))
