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


async def test_what_the_fast_path_does_not_take_goes_to_the_fastapi_route(
    client: tuple[httpx.AsyncClient, list[str]],
) -> None:
    http, taken = client
    no_key = await http.post("/publish", content=b"[]")
    plain = {"x-api-key": KEY, "content-type": "text/plain"}
    text = await http.post("/publish", content=b"[]", headers=plain)
    query = await http.post("/publish?wait=bogus", content=b"[]", headers={"x-api-key": KEY})
    assert (no_key.status_code, no_key.headers["www-authenticate"]) == (401, "Bearer")
    assert text.json() == {"detail": "content type must be application/json, got 'text/plain'"}
    assert query.status_code == 422
    assert taken == []
