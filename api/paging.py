"""Keyset paging as the paged routes (/events, /dead-letters) speak it: the `after` query, a bad cursor's
422, and the Link header to the next page."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import JSONResponse

from api.errors import jsonable_errors
from api.formats import CURSOR_PATTERN
from api.queries import BadCursor

# Declared once, so /openapi.json describes the cursor's format wherever one is accepted (schemathesis
# counts an undescribed format as a schema-valid request rejected).
AfterQuery = Annotated[
    str | None,
    Query(
        description="cursor from the previous page's Link header (URL-safe base64 of `v1:<seq>`)",
        json_schema_extra={"pattern": CURSOR_PATTERN},
    ),
]


def bad_cursor(exc: BadCursor, after: str | None) -> JSONResponse:
    error = {"type": "value_error", "loc": ["query", "after"], "msg": str(exc), "input": after}
    return JSONResponse({"detail": jsonable_errors([error])}, status_code=422)


def next_link(request: Request, cursor: str | None, limit: int) -> dict[str, str]:
    """The Link header naming the next page, present exactly when more follow."""
    if cursor is None:
        return {}
    url = request.url.include_query_params(after=cursor, limit=limit)
    return {"Link": f'<{url}>; rel="next"'}
