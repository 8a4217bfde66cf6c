"""Which publish requests the plain-ASGI fast path answers itself, and that its answers are the route's."""

from __future__ import annotations

import types
from collections.abc import AsyncIterator

import httpx
import pytest

from api import fastpublish
from api.app import create_app
from api.settings import ApiSettings

KEY = "k-123"


@pytest.fixture
async def client(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[httpx.AsyncClient, list[str]]]:
    taken: list[str] = []
    original = fastpublish.PublishFastPath._publish

    async def counted(self: fastpublish.PublishFastPath, *args: object) -> object:
        taken.append("fast")
        return await original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(fastpublish.PublishFastPath, "_publish", counted)
    settings = ApiSettings(api_key=KEY)
    app = create_app(settings)
    # An empty array publishes nothing, so no broker or store is needed to answer it.
    app.state.api = types.SimpleNamespace(settings=settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        yield http, taken


@pytest.fixture
async def route_alone() -> AsyncIterator[httpx.AsyncClient]:
    """The same app without the fast path in front: the FastAPI route answers everything."""
    settings = ApiSettings(api_key=KEY)
    app = create_app(settings)
    app.state.api = types.SimpleNamespace(settings=settings)
    transport = httpx.ASGITransport(app=app.behind_fast_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        yield http


@pytest.mark.parametrize("path", ["/publish", "/events"])
async def test_a_plain_publish_is_answered_by_the_fast_path(
    client: tuple[httpx.AsyncClient, list[str]], path: str
) -> None:
    http, taken = client
    ok = await http.post(path, content=b"[]", headers={"x-api-key": KEY, "content-type": "application/json"})
    bad = await http.post(path, content=b"{bad", headers={"x-api-key": KEY})
    assert (ok.status_code, ok.json()) == (
        200,
        {"status": "accepted", "received": 0, "accepted": 0, "rejected": 0, "enqueued": 0, "count": 0},
    )
    assert ok.headers["content-type"] == "application/json"
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["type"] == "json_invalid"
    assert taken == ["fast", "fast"]


async def test_refusals_by_header_are_answered_in_front_exactly_as_the_fastapi_route_answers_them(
    client: tuple[httpx.AsyncClient, list[str]], route_alone: httpx.AsyncClient
) -> None:
    # api/publish.py's refuse_headers decides for both; the fast path answers before any body is read or any
    # query string is validated, so a missing key is a 401 whatever else is wrong.
    http, taken = client
    too_long = str(ApiSettings().max_body_bytes + 1)
    requests: list[tuple[str, dict[str, str]]] = [
        ("/publish", {}),
        ("/publish?wait=bogus", {}),
        ("/events", {"x-api-key": "wrong"}),
        ("/publish", {"authorization": "Bearer wrong"}),
        ("/publish", {"x-api-key": KEY, "content-type": "text/plain"}),
        ("/publish?wait=stored", {"x-api-key": KEY, "content-type": "text/plain"}),
        ("/publish", {"x-api-key": KEY, "content-length": too_long}),
    ]
    answers = []
    for path, headers in requests:
        front = await http.post(path, content=b"[]", headers=headers)
        route = await route_alone.post(path.split("?")[0], content=b"[]", headers=headers)
        assert (front.status_code, front.json(), front.headers.get("www-authenticate")) == (
            route.status_code,
            route.json(),
            route.headers.get("www-authenticate"),
        ), (path, headers)
        answers.append((front.status_code, front.json()["detail"]))
    unauthorized = (401, "missing or wrong API key (send it as X-API-Key)")
    assert answers == [
        unauthorized,
        unauthorized,
        unauthorized,
        unauthorized,
        (415, "content type must be application/json, got 'text/plain'"),
        (415, "content type must be application/json, got 'text/plain'"),
        (413, f"request body of {too_long} bytes is over the limit of {ApiSettings().max_body_bytes} bytes"),
    ]
    assert taken == []  # no body was read


async def test_a_query_string_goes_on_to_the_fastapi_route(
    client: tuple[httpx.AsyncClient, list[str]],
) -> None:
    http, taken = client
    query = await http.post("/publish?wait=bogus", content=b"[]", headers={"x-api-key": KEY})
    assert query.status_code == 422
    assert query.json()["detail"][0]["loc"] == ["query", "wait"]
    assert taken == []
