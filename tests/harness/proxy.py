"""A TCP proxy in a thread whose broker-to-client direction can be frozen (a broker that stops answering),
whose traffic can be slowed (a delay before every chunk it forwards, both ways) and whose open connections
can be cut (a network that drops them) while it keeps accepting new ones."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class FreezableProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        # Seconds each chunk waits before it is forwarded, in both directions; 0: no delay.
        self.delay = 0.0
        # cut_when_sent(): the bytes whose first appearance from a client resets every connection.
        self._trigger: bytes | None = None
        self._ready = threading.Event()
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="proxy", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            broker_reader, broker_writer = await asyncio.open_connection(*self._target)
        except OSError:
            # The target is down (a killed broker node): the client sees its connection closed, as it would
            # see a refusal, and tries the next node.
            client_writer.transport.abort()
            return
        pair = {client_writer, broker_writer}
        self._writers |= pair

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gated: bool) -> None:
            try:
                while data := await reader.read(65536):
                    if not gated and self._trigger is not None and self._trigger in data:
                        self._trigger = None
                        for each in list(self._writers):
                            each.transport.abort()
                        return
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    if gated:
                        await self._flowing.wait()
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        try:
            await asyncio.gather(
                pump(client_reader, broker_writer, False), pump(broker_reader, client_writer, True)
            )
        finally:
            self._writers -= pair

    def start(self) -> FreezableProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Nothing from the broker reaches the client meanwhile (no confirms, no replies); then all flows."""
        self._loop.call_soon_threadsafe(self._flowing.clear)
        try:
            yield
        finally:
            self._loop.call_soon_threadsafe(self._flowing.set)

    def cut_when_sent(self, trigger: bytes) -> None:
        """The first time a client sends `trigger` (e.g. an AMQP method's class and method ids), every open
        connection is reset before it reaches the broker: a network lost at that exact step. Once only."""
        self._trigger = trigger

    def slow(self, delay: float) -> None:
        """Every chunk waits `delay` seconds before it is forwarded, both ways, until slow(0)."""
        self.delay = delay

    def cut(self) -> None:
        """Reset every connection open now, both sides, as a failed network would; new ones still work."""

        def abort_all() -> None:
            for writer in list(self._writers):
                writer.transport.abort()

        self._loop.call_soon_threadsafe(abort_all)

    def close(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
