"""A live-tail client for tests: reads GET /events/stream in a task, parses Server-Sent Events, and can drop
its connection at any moment (cancelling the task closes the socket)."""

from __future__ import annotations

import asyncio
import json
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Sse:
    id: int | None
    event: str
    data: Any


@dataclass
class Tail:
    """One stream of the api's live tail; `events` fills as frames arrive."""

    url: str
    params: dict[str, str] = field(default_factory=dict)
    last_event_id: int | None = None
    events: list[Sse] = field(default_factory=list)
    start: int | None = None  # the position the api said the stream starts from
    ended: bool = False
    _task: asyncio.Task[None] | None = None

    def open(self) -> Tail:
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        headers = {} if self.last_event_id is None else {"Last-Event-ID": str(self.last_event_id)}
        timeout = httpx.Timeout(10, read=None)
        async with (
            httpx.AsyncClient(timeout=timeout) as client,
            client.stream("GET", f"{self.url}/events/stream", params=self.params, headers=headers) as answer,
        ):
            answer.raise_for_status()
            fields: dict[str, str] = {}
            async for line in answer.aiter_lines():
                if line == "":
                    if "data" in fields:
                        sse_id = int(fields["id"]) if "id" in fields else None
                        self.events.append(
                            Sse(sse_id, fields.get("event", "message"), json.loads(fields["data"]))
                        )
                    fields = {}
                elif line.startswith(": from "):
                    self.start = int(line[7:])
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
        self.ended = True

    def listening(self) -> bool:
        if self._task is not None and self._task.done() and self._task.exception() is not None:
            raise AssertionError(f"the stream failed: {self._task.exception()!r}")
        return self.start is not None

    def messages(self) -> list[Sse]:
        return [e for e in self.events if e.event == "message"]

    def last_id(self) -> int | None:
        ids = [e.id for e in self.events if e.id is not None]
        return ids[-1] if ids else self.last_event_id

    async def drop(self) -> None:
        """Cut the connection where it is."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError, httpx.HTTPError):
                await self._task


def keys(events: list[Sse]) -> list[tuple[str, str]]:
    return [(e.data["topic"], e.data["event_id"]) for e in events]
