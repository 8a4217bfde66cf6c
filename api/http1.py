"""The api's HTTP/1.1 protocol: uvicorn's httptools protocol, writing a fixed-length response in one write.

uvicorn writes a response's status line and headers as soon as the app sends `http.response.start`, and the
body with the next message: two socket writes, and a client that is woken twice. Measured with `python -m
bench --only pika_roundtrip,shim_sequential` (py-spy and time stamps in the api): from the head's write to
the body's took a median 101 us of a 720 us request, most of it the first write waking the client. Here the
head of a response that declares its Content-Length waits, inside the request's cycle, for the first body
message and goes out in the same write (Starlette's `Response` sends both in one step of the loop, so it
waits for nothing). A chunked (streaming) response's head still goes out at once, and so do a `100
Continue` and the answer to a HEAD request, which has no body to wait for.

The subclass leans on uvicorn's internals (`HttpToolsProtocol.on_headers_complete`, `self.cycle`, the cycle's
`transport`, `response_started`, `chunked_encoding` and `scope`), so `protocol()` hands it to uvicorn only on
a uvicorn it was verified on (UVICORN, the range pyproject.toml declares): on any other, one WARNING, and
uvicorn's own `auto` protocol (two writes per response). Canary: tests/api/test_http1.py's
test_a_real_server_answers_each_request_in_one_write.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from contract.versions import Verified, hooks_allowed

# Verified on 0.54.0 (requirements.lock) and 0.55.0 (the newest `make test-upgrade` installs).
UVICORN = Verified("uvicorn", "0.54.0", "0.56")


def protocol() -> type[asyncio.Protocol] | str:
    """The HTTP protocol for uvicorn.Config(http=...): the one-write protocol on a verified uvicorn, else
    uvicorn's own choice."""
    if hooks_allowed(UVICORN, "the one-write HTTP/1.1 response"):
        return OneWriteHttpToolsProtocol
    return "auto"


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        # The cycle's task is created but has not run yet, so it only ever writes through the wrapper.
        if cycle is not before and cycle is not None:
            cycle.transport = cast(asyncio.Transport, _HeadWithBody(self.transport, cycle))


class _HeadWithBody:
    """The transport as one response cycle sees it: holds the head of a fixed-length response."""

    __slots__ = ("_cycle", "_head_seen", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        self._cycle = cycle
        self._held: bytes | None = None
        self._head_seen = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines((held, data))  # one writev under uvloop
            return
        cycle = self._cycle
        # The cycle marks the response started and decides its framing before it writes the head. A HEAD
        # request's response has no body, and uvicorn writes nothing for it: its head goes out at once.
        if not self._head_seen and cycle.response_started:
            self._head_seen = True
            if cycle.chunked_encoding is False and cycle.scope["method"] != "HEAD":
                self._held = bytes(data)
                return
        self._transport.write(data)

    def close(self) -> None:
        # A response that failed after its head closes the connection; the head still goes first, as before.
        held, self._held = self._held, None
        if held is not None:
            self._transport.write(held)
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
