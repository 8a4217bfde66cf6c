"""/docs and /redoc without a CDN: FastAPI's pages, their assets served from the fastapi-offline package."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"


def serve_docs(app: FastAPI) -> None:
    """Needs `FastAPI(docs_url=None, redoc_url=None)`: FastAPI's own pages load their assets from a CDN, which
    a machine without internet access (or behind a strict content policy) never reaches.

    Only the package's asset directory is used, not its FastAPI subclass: the app stays a plain FastAPI.
    """
    assets = files("fastapi_offline").joinpath("static")
    app.mount(ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        )

    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )

    app.add_api_route("/docs", docs, include_in_schema=False)
    app.add_api_route("/redoc", redoc, include_in_schema=False)
