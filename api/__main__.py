"""Composition root of the api: `python -m api` serves on API_PORT."""

from __future__ import annotations

import logging
import signal
import socket
import sys
from types import FrameType

import uvicorn
from pydantic import ValidationError

from api import http1
from api.app import EventApi, create_app
from api.settings import ApiSettings
from contract.cli import describe, parse_args
from contract.config import configure_logging
from store import StoreConfigError, locate

log = logging.getLogger("api")


DESCRIPTION = """The aggregator's HTTP api: reads the store (GET /events, /stats, /dashboard, /metrics) and
publishes through the broker with confirms (POST /publish). Configured by environment variables; /docs is
its manual."""


def cli(argv: list[str] | None = None) -> int:
    parse_args("python -m api", DESCRIPTION, ApiSettings, argv)
    try:
        settings = ApiSettings()
    except ValidationError as exc:
        print(f"api: invalid configuration:\n{describe(exc)}", file=sys.stderr)
        return 2
    try:
        store = locate(settings).describe()
    except StoreConfigError as exc:
        print(f"api: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    log.info(
        "api starting port=%d store=%s exchange=%s url=%s publish_key=%s",
        settings.api_port,
        store,
        settings.amqp_exchange,
        settings.safe_amqp_url(),
        "set" if settings.api_key else "off",
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        http=http1.protocol(),
        log_level=settings.log_level.lower(),
        access_log=settings.log_level == "DEBUG",
        # uvicorn's own logging config formats its loggers itself; for JSON they go through ours instead.
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
    )
    server = _Server(config, app)
    server.run()
    return 0 if server.started else 1


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown, so the process would die of it; SIGTERM is how
    a service is normally stopped, so after the shutdown completes we exit 0 instead."""

    def __init__(self, config: uvicorn.Config, app: EventApi) -> None:
        super().__init__(config)
        self._app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's graceful shutdown waits for every response to end; a live tail ends only when told.
        self._app.end_streams()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM:
            self.should_exit = True
            return
        super().handle_exit(sig, frame)


if __name__ == "__main__":
    sys.exit(cli())
