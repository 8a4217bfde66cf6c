"""Log output of every deployable: readable lines, or one JSON object per line with LOG_FORMAT=json."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# The house style writes identifiers into messages as `key=value`; a log shipper can index them as fields.
# A value runs to the next space; trailing punctuation belongs to the sentence, not the value.
_FIELD = re.compile(r"(?<![\w.=])([A-Za-z_][A-Za-z0-9_]*)=(\S+)")
_TRAILING = ",;:"
_RESERVED = frozenset({"time", "level", "logger", "message", "exception"})


def _value(raw: str) -> Any:
    text = raw.rstrip(_TRAILING)
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?\d+\.\d+", text):
        return float(text)
    return text


def fields(message: str) -> dict[str, Any]:
    """The `key=value` pairs of a message; a key that would shadow a standard one is left out."""
    found: dict[str, Any] = {}
    for key, raw in _FIELD.findall(message):
        if key not in _RESERVED and key not in found:
            found[key] = _value(raw)
    return found


class JsonFormatter(logging.Formatter):
    """time (UTC, ISO 8601), level, logger, message, the message's `key=value` fields, and a traceback as
    `exception` (one line of JSON even then, so a line-oriented shipper never splits a record)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            **fields(message),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
