"""GET /events' search parameters: `q=` and `payload.<field>=` read from the query string, as the store
understands them (store/search.py), or a 422 naming what cannot be searched for."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.exceptions import RequestValidationError

from store.search import FIELD_PREFIX, MAX_FIELDS, BadSearch, Search, parse_fields, parse_q

MAX_Q = 1000
MAX_FIELD_VALUE = 1000
MAX_FIELD_NAME = 255

QQuery = Annotated[
    str | None,
    Query(
        max_length=MAX_Q,
        description="words and quoted phrases, all of which must occur (case-insensitive) in the event's "
        'source or its payload\'s text values, e.g. `timeout "disk full"`; a word is a run of letters and '
        "digits, a phrase's words must follow each other within one value; a `q` without words narrows "
        "nothing",
    ),
]

# `payload.<field>` names a family of parameters, which OpenAPI cannot declare by pattern: one entry
# stands for them (a request naming the field `<field>` literally is a valid, if unlikely, search).
FIELD_PARAMETER: dict[str, Any] = {
    "name": f"{FIELD_PREFIX}<field>",
    "in": "query",
    "required": False,
    "description": f"`{FIELD_PREFIX}status=failed`: only events whose payload has a top-level field `status` "
    "equal to `failed`: a string equal to the value, or the JSON `true`, `false`, `null` or number the value "
    f"reads as (numbers by value: `code=500` matches 500 and 500.0); up to {MAX_FIELDS} such parameters, "
    "all must match",
    "schema": {"type": "string", "maxLength": MAX_FIELD_VALUE},
}


# The 409 of a search on a store without SEARCH, as JSON also on routes whose own answers are not (the live
# tail's event stream, the export's NDJSON): FastAPI would put a `model` under the route's media type.
SEARCH_OFF_RESPONSE: dict[str, Any] = {
    "description": "q or payload.<field> asked of a store whose SEARCH is off",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorMessage"}}},
}


def _refusal(loc: str, msg: str, value: str | None) -> RequestValidationError:
    # The 422 every other query parameter gets (api/errors.py bounds its echo), from the route's dependency.
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", loc), "msg": msg, "input": value}]
    )


def search_of(request: Request, q: str | None) -> Search | None:
    """The search the request asks for (None: none); RequestValidationError (a 422) naming what is wrong."""
    pairs: list[tuple[str, str]] = []
    for key, value in request.query_params.multi_items():
        if not key.startswith(FIELD_PREFIX):
            continue
        name = key[len(FIELD_PREFIX) :]
        if len(name) > MAX_FIELD_NAME:
            raise _refusal(key, f"a payload field name has at most {MAX_FIELD_NAME} characters", name)
        if len(value) > MAX_FIELD_VALUE:
            raise _refusal(key, f"a payload field value has at most {MAX_FIELD_VALUE} characters", value)
        pairs.append((name, value))
    phrases = parse_q(q) if q is not None else ()
    try:
        fields = parse_fields(pairs)
    except BadSearch as exc:
        raise _refusal(f"{FIELD_PREFIX}<field>", str(exc), None) from None
    found = Search(phrases, fields)
    return found if found else None
