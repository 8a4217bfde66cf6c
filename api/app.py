"""The FastAPI application: its lifespan owns the read-only store connection and the broker link."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import TypeAdapter
from starlette.types import Receive, Scope, Send

from api import dashboard, deadletters, export, health, routes, stream
from api.broker import BrokerLink
from api.commits import FeedCollector
from api.compat import RESPONSE_MODELS
from api.deps import State
from api.docs import serve_docs
from api.errors import bound_validation_errors, search_off_is_409, store_errors_are_503
from api.fastpublish import PublishFastPath
from api.formats import TIMESTAMP_PATTERN
from api.metrics import ApiMetrics, HttpMetricsMiddleware
from api.metrics import router as metrics_router
from api.settings import ApiSettings
from api.tail import TailCollector
from store import open_reader

DESCRIPTION = """
Crash-safe event aggregator. Every event takes effect exactly once: `(topic, event_id)` is the dedup key,
counters are exact and survive restarts.

* `POST /publish` answers only after the broker confirmed every event (HTTP 200), so a 200 means durable.
  On 503 the client may simply re-send: the consumer drops duplicates.
* `GET /events`, `GET /events/{topic}/{event_id}`, `GET /stats` read the store and keep working while the
  broker is down.
"""


def _describe_event(event: dict[str, Any]) -> None:
    """What the Event model accepts beyond its fields' types: the timestamp's form and unknown fields."""
    event["additionalProperties"] = True
    event["description"] = (
        "One log event. Unknown top-level fields are accepted and not stored, as in the aggregators this "
        "replaces; `payload` holds anything else worth keeping."
    )
    event["properties"]["timestamp"]["pattern"] = TIMESTAMP_PATTERN
    event["properties"]["timestamp"]["description"] = (
        "ISO 8601: a date, optionally a time (`T` or a space; minutes, seconds or microseconds) and `Z` or "
        "an offset; no offset means UTC. Stored normalised to UTC with a `Z`."
    )


class EventApi(FastAPI):
    """FastAPI, with the publish fast path (api/fastpublish.py) in front of all of its per-request layers."""

    fast_path: PublishFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.fast_path is None:
            await super().__call__(scope, receive, send)
        else:
            await self.fast_path(scope, receive, send)

    def end_streams(self) -> None:
        """End the live tails (api/tail.py) at shutdown; before the lifespan started, there are none."""
        state = getattr(self.state, "api", None)
        if state is not None:
            state.tail.finish_all()

    async def behind_fast_path(self, scope: Scope, receive: Receive, send: Send) -> None:
        """What the fast path does not answer: FastAPI's middlewares, routes and handlers."""
        await super().__call__(scope, receive, send)


def create_app(settings: ApiSettings) -> EventApi:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reader = open_reader(settings)
        broker = BrokerLink(settings)
        try:
            async with broker.running():
                app.state.api = state = State(settings, reader, broker)
                notices = FeedCollector(state.commits, state.watcher.reads, state.watcher.found)
                tails = TailCollector(state.tail)
                app.state.metrics.registry.register(notices)
                app.state.metrics.registry.register(tails)
                try:
                    yield
                finally:
                    app.state.metrics.registry.unregister(tails)
                    app.state.metrics.registry.unregister(notices)
                    await state.close()
        finally:
            await reader.close()

    app = EventApi(
        title="Event aggregator",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    # Before routes: /events/stream and /events/export are not events of a topic.
    app.include_router(stream.router)
    app.include_router(export.router)
    app.include_router(routes.router)
    app.include_router(health.router)
    app.include_router(metrics_router)
    app.include_router(dashboard.router)
    app.include_router(deadletters.router)
    serve_docs(app)
    bound_validation_errors(app)
    store_errors_are_503(app)
    search_off_is_409(app)
    app.state.metrics = ApiMetrics()
    publish_routes = {
        route.path: route
        for route in routes.router.routes
        if isinstance(route, APIRoute) and route.path in ("/publish", "/events") and route.methods == {"POST"}
    }
    if set(publish_routes) != {"/publish", "/events"}:
        raise RuntimeError(f"the publish routes were not found: {sorted(publish_routes)}")
    app.add_middleware(HttpMetricsMiddleware, metrics=app.state.metrics)
    app.fast_path = PublishFastPath(app.behind_fast_path, publish_routes, app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            overrides = RESPONSE_MODELS[settings.api_compat]
            for (path, method), shaped in overrides.items():
                ref = {"$ref": f"#/components/schemas/{shaped.__name__}"}
                for code, answer in schema["paths"][path][method]["responses"].items():
                    if code in ("200", "202"):
                        answer["content"] = {"application/json": {"schema": ref}}
            models: list[Any] = [*routes.OPENAPI_MODELS, *overrides.values()]
            for model in models:
                extra = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
                components.update(extra.pop("$defs", {}))
                components[model.__name__] = extra
            _describe_event(components["Event"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
