"""GET /dead-letters: the messages the consumer rejected, as it recorded them, newest first in pages."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import StateDep, require_read_key
from api.paging import AfterQuery, bad_cursor, next_link
from api.queries import BadCursor, decode_cursor, encode_cursor
from store import DeadLetter

router = APIRouter()


class DeadLetterItem(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 17,
                    "at": "2026-11-22T10:15:00.123456Z",
                    "kind": "not_json",
                    "reason": "body: Invalid JSON: expected value at line 1 column 1",
                    "routing_key": "orders.created",
                    "body": "{not json",
                    "body_encoding": "utf-8",
                    "size": 9,
                    "truncated": False,
                }
            ]
        }
    )

    id: int
    at: str = Field(description="when the consumer rejected it, UTC")
    kind: Literal["not_json", "schema", "too_large"] | str = Field(description="the class of the reason")
    reason: str = Field(description="why, as the consumer logged it")
    routing_key: str
    body: str = Field(description="the body as it arrived (its first 64 KiB), as text or base64")
    body_encoding: Literal["utf-8", "base64"]
    size: int = Field(description="bytes of the whole body")
    truncated: bool = Field(description="the body was longer than the 64 KiB kept")


def item(letter: DeadLetter) -> DeadLetterItem:
    try:
        body, encoding = letter.body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(letter.body).decode("ascii"), "base64"
    return DeadLetterItem(
        id=letter.id,
        at=letter.at,
        kind=letter.kind,
        reason=letter.reason,
        routing_key=letter.routing_key,
        body=body,
        body_encoding=encoding,
        size=letter.size,
        truncated=letter.truncated,
    )


@router.get(
    "/dead-letters",
    response_model=list[DeadLetterItem],
    summary="Rejected messages, newest first, in pages (next page in the Link header)",
    description="Kept by the consumer in the transaction that counted each one `invalid`: the newest 100,000 "
    "(/stats counts the dropped ones). Fix the bodies and re-publish them with "
    "`python -m publisher dead-letters replay --file fixed.ndjson`.",
    dependencies=[Depends(require_read_key)],
    responses={422: {"description": "bad limit or cursor"}},
)
async def dead_letters(
    request: Request,
    st: StateDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="page size")] = 100,
    after: AfterQuery = None,
) -> Response:
    try:
        before = decode_cursor(after) if after else None
    except BadCursor as exc:
        return bad_cursor(exc, after)
    page = await st.reader.dead_letters(limit, before)
    cursor = None if page.next_before is None else encode_cursor(page.next_before)
    headers = next_link(request, cursor, limit)
    body = [item(letter).model_dump(mode="json") for letter in page.letters]
    return JSONResponse(body, headers=headers)
