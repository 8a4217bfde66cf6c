"""What a deployable's command line shows: --help with the environment variables of its settings model, and
configuration errors that name the variable (`ENVELOPE_SIZE`), not the model's field."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import uvloop
from pydantic import ValidationError
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

# What each shared variable means, for --help (the README's configuration table says the same). A field's
# own `description` wins; variables of one deployable only are described next to their field.
MEANING = {
    "AMQP_URL": "broker URL; several, comma-separated, for a cluster (the password is never logged)",
    "DB_PATH": "SQLite store file",
    "DATABASE_URL": "postgresql://... store; wins over DB_PATH",
    "AMQP_EXCHANGE": "topic exchange; dead letters go to <exchange>.dlx -> <exchange>.dead",
    "AMQP_QUEUE": "quorum queue bound with #",
    "LOG_LEVEL": "DEBUG, INFO, WARNING or ERROR",
    "LOG_FORMAT": "text, or json: one JSON object per line",
    "MAX_PAYLOAD_BYTES": "serialised payload limit per event",
    "MAX_MESSAGE_BYTES": "message body limit",
    "PREFETCH": "unacked deliveries in hand; 0 means four times BATCH_SIZE",
    "RETRY_INITIAL": "first backoff (s) while the store fails",
    "RETRY_MAX": "longest backoff (s) while the store fails",
    "RECONNECT_INTERVAL": "seconds between broker reconnects",
    "API_HOST": "address to listen on",
    "API_PORT": "HTTP port",
    "PUBLISH_TIMEOUT": "seconds to wait for confirms before answering 503",
    "MAX_EVENTS_PER_REQUEST": "events per POST /publish (413 past it)",
    "MAX_BODY_BYTES": "request body limit (413 past it)",
    "ENVELOPE_SIZE": "events per message",
    "API_KEY": "when set, POST /publish needs it as X-API-Key",
    "API_KEY_READS": "also require API_KEY for the GET endpoints",
    "BROKER_PROBE_TTL": "seconds a queue-depth reading is reused",
    "CONSUMER_STALL_SECONDS": "no commit for this long while messages wait: consumer stalled",
    "API_COMPAT": "answer shapes: default, seed003 or seed004",
    "METRICS_PORT": "Prometheus metrics port; 0 turns it off",
}

T = TypeVar("T")

# Values that may hold a password or a key are never echoed back in an error.
SECRET_WORDS = ("URL", "KEY", "PASSWORD", "SECRET", "TOKEN")
ECHO_LIMIT = 80


def env_name(field: str) -> str:
    # The settings read the environment with no prefix, case-insensitively: the variable is the field's name.
    return field.upper()


def environment_help(model: type[BaseSettings]) -> str:
    rows = []
    for field, info in model.model_fields.items():
        name = env_name(field)
        if info.default is PydanticUndefined or info.default is None:
            default = "unset"
        elif isinstance(info.default, Path):
            default = str(info.default)
        else:
            default = str(info.default).lower() if isinstance(info.default, bool) else str(info.default)
        rows.append((name, default, info.description or MEANING.get(name, "")))
    width = max(len(name) for name, _, _ in rows) + 2
    lines = ["environment variables (default; see the README's configuration table):"]
    for name, default, meaning in rows:
        lines.append(f"  {name:<{width}}{default}")
        if meaning:
            lines.append(f"  {'':<{width}}  {meaning}")
    return "\n".join(lines)


def parse_args(
    prog: str, description: str, model: type[BaseSettings], argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """A deployable configured by environment only: --help prints usage and the variables and exits 0,
    before anything is read or connected; any argument is a usage error (exit 2)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=environment_help(model),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser.parse_args(argv)


def describe(exc: ValidationError, flags: Mapping[str, str] | None = None) -> str:
    """One line per problem, naming the environment variable (and the option, when one set it)."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        message = error["msg"].removeprefix("Value error, ")
        if not loc:  # a check across fields; its message names the variables itself
            lines.append(f"  {message}")
            continue
        field = str(loc[0])
        name = env_name(field)
        given = flags is not None and field in flags
        where = f"{name} (here {flags[field]})" if flags is not None and given else name
        raw = None if given else os.environ.get(name)
        got = ""
        if raw is not None and not any(word in name for word in SECRET_WORDS) and name not in message:
            shown = raw if len(raw) <= ECHO_LIMIT else raw[:ECHO_LIMIT] + "..."
            got = f" (got {shown!r})"
        lines.append(f"  {where}: {message}{got}")
    return "\n".join(lines)


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on uvloop's event loop, the one uvicorn runs the api on (Ctrl-C as asyncio.Runner's).

    Draining 50,000 queued single-event messages took the consumer process 3.05 s of CPU on asyncio's loop
    and 2.73 s on uvloop's (medians of 3 alternating runs on a shared machine): the loop's own share of each
    delivery (socket reads, callbacks, futures) is smaller in C.
    """
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
