"""Which events a read asks for: the query parameters GET /events, its live tail and its export share.

One dependency parses them for all three routes, so a filter added to it reaches the stream and the export
without another line. `Selection.matches` decides a row in memory for the filters it knows; for any other
(a search the store evaluates) it answers None and the live tail asks the store with the same filters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Query, Request

from api.search import QQuery, search_of
from store import Filters, Row
from store.clock import utc_text

# The Filters fields `matches` evaluates itself; a non-default value of any other makes it defer to the store.
_IN_MEMORY = frozenset({"source", "since", "until"})


@dataclass(frozen=True, slots=True)
class Selection:
    topic: str | None
    filters: Filters

    @property
    def in_memory(self) -> bool:
        """Whether `matches` decides every row (else the store must: see the module's docstring)."""
        return all(
            getattr(self.filters, f.name) == f.default
            for f in dataclasses.fields(self.filters)
            if f.name not in _IN_MEMORY
        )

    def matches(self, row: Row) -> bool | None:
        """Whether GET /events with this selection would list `row`; None when only the store can say."""
        if not self.in_memory:
            return None
        filters = self.filters
        received_at = row[6]
        return (
            (self.topic is None or row[1] == self.topic)
            and (filters.source is None or row[4] == filters.source)
            and (filters.since is None or received_at >= filters.since)
            and (filters.until is None or received_at < filters.until)
        )


def utc(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return utc_text(moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC))


async def selection(
    request: Request,
    topic: Annotated[str | None, Query(description="only this topic", max_length=255)] = None,
    source: Annotated[str | None, Query(description="only events from this source", max_length=255)] = None,
    since: Annotated[datetime | None, Query(description="stored at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="stored before (ISO 8601)")] = None,
    q: QQuery = None,
) -> Selection:
    """The filters of the request; `payload.<field>=` parameters are read from the query string (a family of
    names OpenAPI cannot declare: each route lists them with api.search.FIELD_PARAMETER)."""
    return Selection(topic, Filters(source, utc(since), utc(until), search_of(request, q)))


SelectionDep = Annotated[Selection, Depends(selection)]
