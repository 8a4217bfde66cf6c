"""GET /events/export: any filtered range of stored events as NDJSON, streamed page by page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from api.deps import StateDep, require_read_key
from api.queries import row_json
from api.search import FIELD_PARAMETER, SEARCH_OFF_RESPONSE
from api.selection import Selection, SelectionDep
from store import Page, Reader

router = APIRouter()

# Rows read per query: the export's memory is one page, however many events it writes.
EXPORT_PAGE = 1000


class Ndjson(StreamingResponse):
    media_type = "application/x-ndjson"


@router.get(
    "/events/export",
    response_class=Ndjson,
    summary="Export stored events as NDJSON, in the order they were stored, with no page limit",
    description="One event per line, each as `GET /events` gives it, for every event the filters select "
    "(the same filters as `GET /events`), oldest first. Streamed in constant memory: any range, any size. "
    "`python -m publisher replay FILE` publishes such a file again.",
    dependencies=[Depends(require_read_key)],
    responses={
        200: {"content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
        409: SEARCH_OFF_RESPONSE,
        422: {"description": "bad filter or position"},
    },
    openapi_extra={"parameters": [FIELD_PARAMETER]},
)
async def export(
    st: StateDep,
    chosen: SelectionDep,
    after: Annotated[int | None, Query(ge=0, lt=2**63, description="only events after this position")] = None,
) -> Ndjson:
    # The first page before the answer starts: what the store refuses (down, a search it cannot do) is this
    # request's error status (api/errors.py), not an export cut short.
    first = await st.reader.page(chosen.topic, EXPORT_PAGE, after or 0, filters=chosen.filters)
    return Ndjson(_lines(st.reader, chosen, first), headers={"Cache-Control": "no-store"})


async def _lines(reader: Reader, chosen: Selection, page: Page) -> AsyncIterator[bytes]:
    while True:
        if page.rows:
            yield "".join(row_json(row) + "\n" for row in page.rows).encode()
        if page.next_after is None:
            return
        page = await reader.page(chosen.topic, EXPORT_PAGE, page.next_after, filters=chosen.filters)
