"""Reading real events from NDJSON (a file or stdin): good lines become events, bad ones are reported."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO

from pydantic import ValidationError

from contract.event import Event, InvalidEvent, Limits, check_payload_size, describe


@dataclass(frozen=True, slots=True)
class BadLine:
    number: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.number}: {self.reason}"


def parse_line(number: int, line: bytes, limits: Limits) -> Event | BadLine | None:
    text = line.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return BadLine(number, f"not valid JSON ({exc})")
    if not isinstance(data, dict):
        return BadLine(number, f"expected one JSON object per line, got {type(data).__name__}")
    try:
        item = Event.model_validate(data)
        check_payload_size(item, limits)
    except ValidationError as exc:
        return BadLine(number, describe(exc))
    except InvalidEvent as exc:
        return BadLine(number, str(exc))
    return item


async def read_ndjson(stream: IO[bytes], limits: Limits, interactive: bool) -> AsyncIterator[Event | BadLine]:
    """Yield events and bad lines in order. `interactive` (stdin) reads line by line so linger applies."""
    number = 0
    while True:
        if interactive:
            lines = [await asyncio.to_thread(stream.readline)]
            if lines == [b""]:
                return
        else:
            lines = stream.readlines(1 << 20)
            if not lines:
                return
        for line in lines:
            number += 1
            parsed = parse_line(number, line, limits)
            if parsed is not None:
                yield parsed
