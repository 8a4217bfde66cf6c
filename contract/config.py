"""Configuration every deployable shares: the environment variable names, their defaults, AMQP_URL's node list
with its passwords redacted for logs, and logging."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.event import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_PAYLOAD_BYTES, Limits
from contract.logs import formatter
from contract.topology import Topology

__all__ = [
    "BrokerUrlError",
    "CommonSettings",
    "configure_logging",
    "duration_seconds",
    "parse_duration",
    "parse_urls",
    "redact",
    "redact_all",
    "scrub",
]


class BrokerUrlError(ValueError):
    """AMQP_URL is not a comma-separated list of amqp:// or amqps:// URLs."""


def parse_urls(value: str) -> tuple[str, ...]:
    """The nodes of AMQP_URL: one URL, or several separated by commas (each with its own credentials).

    Errors show every URL redacted; a comma inside a password must be written %2C.
    """
    urls = tuple(part.strip() for part in value.split(","))
    count = len(urls)
    for position, url in enumerate(urls, 1):
        where = "AMQP_URL" if count == 1 else f"AMQP_URL entry {position} of {count}"
        if not url:
            raise BrokerUrlError(f"{where} is empty; give one URL, or several separated by commas")
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            hint = " (a comma inside a password must be written %2C)" if count > 1 else ""
            raise BrokerUrlError(f"{where} must start with amqp:// or amqps://, got {redact(url)!r}{hint}")
        try:
            port = parts.port
        except ValueError:
            port = -1
        if not parts.hostname or port == -1:
            raise BrokerUrlError(f"{where} has no valid host and port: {redact(url)!r}")
    if len(set(urls)) != count:
        raise BrokerUrlError(f"AMQP_URL names the same node twice: {redact_all(urls)}")
    return urls


def redact(url: str) -> str:
    """The URL with its password replaced, for logs and error messages; also safe on a malformed URL."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    authority, slash, tail = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    prefix = f"{scheme}://" if sep else ""
    if at and not sep:
        # "ss@host" is what is left of "amqp://user:pa,ss@host" split at the comma: all of it is password.
        return f"***@{hostport}{slash}{tail}"
    if at:
        user = userinfo.split(":", 1)[0]
        masked = f"{user}:***@{hostport}" if ":" in userinfo else authority
        return f"{prefix}{masked}{slash}{tail}"
    _host, colon, port = authority.rpartition(":")
    if colon and not port.isdigit() and not authority.endswith("]"):
        # "amqp://user:pa" is what is left of "amqp://user:pa,ss@host" split at the comma: not a port.
        return f"{prefix}***{slash}{tail}"
    if not sep and colon:
        # No scheme and no @: "x:y" may well be user:password.
        return "***"
    return url


def redact_all(urls: Sequence[str]) -> str:
    return ",".join(redact(url) for url in urls)


def scrub(text: str) -> str:
    """Error text with any URL in it redacted."""
    return " ".join(redact(word) if "://" in word else word for word in text.split(" "))


class CommonSettings(BaseSettings):
    """Read from the environment (`AMQP_URL`, `DB_PATH`, ...); tests construct it directly."""

    # Errors must not echo their input: AMQP_URL carries passwords. Our own messages say what was wrong.
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True, hide_input_in_errors=True)

    # One URL, or one per node of a cluster separated by commas; clients fail over between them.
    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    db_path: Path = Path("./data/events.db")
    # postgresql://... selects the PostgreSQL store and wins over DB_PATH (store/__init__.py checks it).
    database_url: str | None = None
    amqp_exchange: Annotated[str, Field(min_length=1, max_length=255)] = "events"
    amqp_queue: Annotated[str, Field(min_length=1, max_length=255)] = "events.aggregator"
    log_level: str = "INFO"
    # `json`: one JSON object per line (time, level, logger, message and the message's key=value fields).
    log_format: Literal["text", "json"] = "text"
    max_payload_bytes: Annotated[int, Field(gt=0)] = DEFAULT_MAX_PAYLOAD_BYTES
    max_message_bytes: Annotated[int, Field(gt=0)] = DEFAULT_MAX_MESSAGE_BYTES

    @field_validator("amqp_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parse_urls(value)  # BrokerUrlError is a ValueError, with every URL in it redacted
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError(f"LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR; got {value!r}")
        return level

    def topology(self) -> Topology:
        return Topology.named(self.amqp_exchange, self.amqp_queue)

    def limits(self) -> Limits:
        return Limits(max_payload_bytes=self.max_payload_bytes, max_message_bytes=self.max_message_bytes)

    def amqp_urls(self) -> tuple[str, ...]:
        """The broker nodes of AMQP_URL, in the order given."""
        return parse_urls(self.amqp_url)

    def safe_amqp_url(self) -> str:
        return redact_all(self.amqp_urls())


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?")


def parse_duration(value: object) -> timedelta | None:
    """`90s`, `15m`, `12h`, `30d`, `2w` (a bare number is seconds); unset, empty or 0 is None (forever)."""
    if value is None or isinstance(value, timedelta):
        return value if value else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value).strip().lower())
        if match is None:
            raise ValueError("must be a duration such as 90s, 15m, 12h or 30d (0 or unset: forever)")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds < 0:
        raise ValueError("must not be negative")
    return timedelta(seconds=seconds) if seconds > 0 else None


def duration_seconds(value: object) -> object:
    """A duration as seconds for a number field (`60`, `60s`, `5m`); 0 stays 0, for the field to refuse."""
    if isinstance(value, str):
        span = parse_duration(value)
        return span.total_seconds() if span else 0.0
    return value


# A duration setting: `RETENTION=30d`; None (unset or 0) means forever.
Duration = Annotated[timedelta | None, BeforeValidator(parse_duration)]


class _SaidByTheProduct(logging.Filter):
    """Drops aiormq's and aio-pika's ERROR lines for what broker/connection.py reports itself: a connect that
    failed ("error when creating transport", every reconnect interval while a broker is down), a close by
    the broker, and aio-pika's robust channel failing to close a channel whose connection is already gone
    (one ERROR from its `_on_close` callback at every connection loss)."""

    DROPPED = ("error when creating transport", "Unexpected connection close from remote")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "aio_pika.tools":
            text = record.getMessage()
            return "RobustChannel._on_close" not in text
        return not (isinstance(record.msg, str) and record.msg.startswith(self.DROPPED))


def configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler])
    # aiormq/aio-pika log every reconnect attempt with a traceback at WARNING; ours say it once, better.
    logging.getLogger("aiormq").setLevel(max(logging.getLevelName(level), logging.ERROR))
    logging.getLogger("aio_pika").setLevel(max(logging.getLevelName(level), logging.ERROR))
    # ...and aiormq logs each refused connect and each broker-side close at ERROR too: the product says each
    # change of the link's state once, at WARNING, with the same reason (broker/connection.py).
    for name in ("aiormq.connection", "aio_pika.tools"):
        said = logging.getLogger(name)
        if not any(isinstance(f, _SaidByTheProduct) for f in said.filters):
            said.addFilter(_SaidByTheProduct())
    # httpx logs every request at INFO; a load run would drown the summary.
    logging.getLogger("httpx").setLevel(max(logging.getLevelName(level), logging.WARNING))
