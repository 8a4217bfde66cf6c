"""The api's HTTP/1.1 protocol: a fixed-length response is one transport write; nothing else waits; and on a
real server it is in use on a verified uvicorn only."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from api import http1
from api.http1 import _HeadWithBody
from contract import versions
from tests.harness.processes import free_port
from tests.harness.waiting import eventually


class Transport:
    """Records what the cycle writes, one entry per write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, parts: Any) -> None:
        self.writes.append(b"".join(parts))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def cycle(transport: Transport, *, expect_100: bool = False, method: str = "POST") -> RequestResponseCycle:
    scope: Any = {"type": "http", "method": method, "path": "/publish", "http_version": "1.1", "headers": []}
    made = RequestResponseCycle(
        scope=scope,
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=expect_100,
        keep_alive=True,
        on_response=lambda: None,
    )
    made.transport = _HeadWithBody(transport, made)  # type: ignore[assignment]
    return made


START = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}


async def test_a_response_with_a_content_length_goes_out_in_one_write() -> None:
    transport = Transport()
    running = cycle(transport)
    await running.send(START)  # type: ignore[arg-type]
    assert transport.writes == []
    await running.send({"type": "http.response.body", "body": b"{}"})
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    assert running.response_complete


async def test_a_chunked_response_sends_its_head_at_once_and_its_chunks_as_they_come() -> None:
    transport = Transport()
    running = cycle(transport)
    await running.send({"type": "http.response.start", "status": 200, "headers": []})
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
    await running.send({"type": "http.response.body", "body": b"ab", "more_body": True})
    await running.send({"type": "http.response.body", "body": b""})
    assert transport.writes[1:] == [b"2\r\nab\r\n", b"0\r\n\r\n"]


async def test_a_100_continue_is_not_held_back() -> None:
    transport = Transport()
    running = cycle(transport, expect_100=True)
    running.more_body = False
    running.message_event.set()
    await running.receive()
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    await running.send(START)  # type: ignore[arg-type]
    await running.send({"type": "http.response.body", "body": b"{}"})
    assert transport.writes[1:] == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]


async def test_a_response_that_fails_after_its_head_still_sends_the_head_before_closing() -> None:
    transport = Transport()
    running = cycle(transport)
    await running.send(START)  # type: ignore[arg-type]
    running.transport.close()  # what uvicorn does when the app raises after starting the response
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"]
    assert transport.closed


async def test_a_body_in_several_parts_writes_the_head_once() -> None:
    transport = Transport()
    running = cycle(transport)
    await running.send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
    await running.send({"type": "http.response.body", "body": b"ab", "more_body": True})
    await running.send({"type": "http.response.body", "body": b"cd"})
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab", b"cd"]


async def test_the_answer_to_a_head_request_goes_out_at_once_having_no_body() -> None:
    transport = Transport()
    running = cycle(transport, method="HEAD")
    await running.send(START)  # type: ignore[arg-type]
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"]
    await running.send({"type": "http.response.body", "body": b""})
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"]
    assert running.response_complete


# ---- the canary: a real server, as `python -m api` configures it (api/http1.py's protocol()) ------------


class Counted:
    """The real socket transport, counting the writes a protocol makes on it."""

    def __init__(self, transport: asyncio.Transport, writes: list[int]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(1)
        self._transport.write(data)

    def writelines(self, parts: Any) -> None:
        self._writes.append(1)
        self._transport.writelines(parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def answer(scope: Any, receive: Any, send: Any) -> None:
    body = b'{"status":"ok"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("uvicorn_version", ["installed", "unverified"])
async def test_a_real_server_answers_each_request_in_one_write(
    uvicorn_version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if uvicorn_version == "unverified":
        monkeypatch.setenv(versions.ASSUME_ENV, f"uvicorn={http1.UVICORN.below}")
    else:
        monkeypatch.delenv(versions.ASSUME_ENV, raising=False)
    versions.forget()
    chosen = http1.protocol()
    versions.forget()
    base = AutoHTTPProtocol if chosen == "auto" else chosen
    assert isinstance(base, type)
    writes: list[int] = []

    class Counting(base):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(Counted(transport, writes))

    port = free_port()
    config = uvicorn.Config(answer, host="127.0.0.1", port=port, http=Counting, lifespan="off", ws="none")
    config.log_level = logging.WARNING
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started, 10, message="server up")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(20):
                reply = await client.get("/health")
                assert (reply.status_code, reply.json()) == (200, {"status": "ok"})
    finally:
        server.should_exit = True
        await serving
    if uvicorn_version == "installed":
        assert chosen is http1.OneWriteHttpToolsProtocol
        assert len(writes) == 20  # head and body of each response in one write
    else:
        assert chosen == "auto"
        assert len(writes) == 40  # uvicorn's own protocol: the head, then the body
