"""The JSON log format: one object per record, the message's key=value fields as keys."""

from __future__ import annotations

import json
import logging
import sys

from contract.logs import JsonFormatter, fields


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("consumer.service", logging.WARNING, __file__, 1, message, args, exc_info)


def test_key_value_fields_become_keys_with_numbers_as_numbers() -> None:
    message = "store unavailable attempt=%d error=%s; retrying in %.1fs delay=%.1f"
    line = JsonFormatter().format(record(message, 3, "disk full", 0.5, 2.5))
    assert "\n" not in line
    out = json.loads(line)
    assert out["time"].endswith("Z") and out["time"][10] == "T"
    assert {k: v for k, v in out.items() if k != "time"} == {
        "level": "WARNING",
        "logger": "consumer.service",
        "message": "store unavailable attempt=3 error=disk full; retrying in 0.5s delay=2.5",
        "attempt": 3,
        "error": "disk",
        "delay": 2.5,
    }


def test_standard_keys_are_never_shadowed_and_urls_are_not_split_into_fields() -> None:
    assert fields("x level=DEBUG message=hi url=amqp://u:***@h:5672/?a=b queue=q, n=-2") == {
        "url": "amqp://u:***@h:5672/?a=b",
        "queue": "q",
        "n": -2,
    }


def test_a_traceback_stays_inside_the_one_line() -> None:
    line = JsonFormatter().format(record("failed batch=%d", 7, exc=True))
    out = json.loads(line)
    assert "\n" not in line
    assert out["batch"] == 7
    assert out["exception"].startswith("Traceback") and "ValueError: boom" in out["exception"]
