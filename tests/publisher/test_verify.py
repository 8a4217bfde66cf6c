"""--verify against a real HTTP server that drops connections: a lookup is repeated, and an api that keeps
failing is a clean FAILED outcome, not a traceback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from contract.schema import COUNTERS
from publisher.load import generate
from publisher.verify import LOOKUP_ATTEMPTS, Verifier

WORKLOAD = generate(40, 0.0, 2, seed=3).events


class FlakyApi:
    """/stats and /events over HTTP/1.1 keep-alive; the first `drops` event lookups get their connection
    closed without an answer, as a server closing an idle kept-alive connection does."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.lookups = 0
        self.stats_calls = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                if path == "/stats":
                    self.stats_calls += 1
                    received = 0 if self.stats_calls == 1 else len(WORKLOAD)
                    body = json.dumps({name: 0 for name in COUNTERS} | {"received": received}).encode()
                else:
                    self.lookups += 1
                    if self.lookups <= self.drops:
                        return
                    body = b"{}"
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            yield f"http://127.0.0.1:{port}"


async def test_a_lookup_whose_connection_is_dropped_is_repeated() -> None:
    api = FlakyApi(drops=2)
    async with api.serving() as url:
        verifier = Verifier(url, timeout=10, sample=None)
        await verifier.baseline()
        outcome = await verifier.check(WORKLOAD, len(WORKLOAD))
    assert outcome.ok, outcome.summary
    assert outcome.summary.startswith(
        f"ok: all {len(WORKLOAD)} unique events stored; received +{len(WORKLOAD)}"
    )
    assert api.lookups == len(WORKLOAD) + 2


async def test_an_api_that_keeps_dropping_lookups_is_a_failed_outcome() -> None:
    api = FlakyApi(drops=10**6)
    async with api.serving() as url:
        verifier = Verifier(url, timeout=10, sample=None)
        await verifier.baseline()
        outcome = await verifier.check(WORKLOAD[:1], 1)
    assert not outcome.ok
    assert outcome.summary.startswith(f"FAILED: looking up the events at {url}: "), outcome.summary
    assert api.lookups == LOOKUP_ATTEMPTS
