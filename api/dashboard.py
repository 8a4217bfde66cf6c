"""GET /dashboard: one self-contained HTML page (inline script and SVG chart) that polls GET /stats and
shows a live tail of GET /events/stream."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()


@cache
def page() -> str:
    # Shipped beside this module: no CDN, no build step, nothing fetched but /stats and /events/stream.
    return files("api").joinpath("dashboard.html").read_text(encoding="utf-8")


@router.get(
    "/dashboard",
    response_class=HTMLResponse,
    summary="A live dashboard: rates, exact totals, topics, queue, dead letters, consumer, store, live tail",
    description="Updates itself every second from GET /stats; its live tail reads GET /events/stream. "
    "When reads need the API key, open it as "
    "`/dashboard#key=...` (the fragment never leaves the browser except as the X-API-Key of its requests).",
)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(page())
