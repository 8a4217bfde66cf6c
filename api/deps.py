"""What the routes share: the app state (settings, store reader, broker link, start) and the key checks."""

from __future__ import annotations

import hmac
import time
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from api.broker import BrokerLink
from api.commits import CommitFeed
from api.settings import ApiSettings
from api.stored import ReceiptPublisher, ReceiptWatcher
from api.tail import TailHub
from store import Reader


class State:
    """Built by the app's lifespan; one per app."""

    def __init__(self, settings: ApiSettings, reader: Reader, broker: BrokerLink) -> None:
        self.settings = settings
        self.reader = reader
        self.broker = broker
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        # ?wait=stored: its own confirm channel, and the one watcher of the store's receipts, woken by the one
        # subscription to the consumers' commit notices.
        self.receipts = ReceiptPublisher(settings.topology(), settings.envelope_size)
        self.commits = CommitFeed(broker, settings.topology(), settings.reconnect_interval, settings)
        self.watcher = ReceiptWatcher(reader, self.commits, replay_window=settings.publish_timeout)
        # The live tail's one reader of new rows, woken by the same notices (api/tail.py).
        self.tail = TailHub(reader, self.commits, settings.tail_buffer_bytes)
        self.commits.start()

    async def close(self) -> None:
        await self.commits.close()
        await self.watcher.close()
        await self.tail.close()
        await self.receipts.close()

    def uptime(self) -> float:
        return round(time.monotonic() - self.started, 3)


async def state(request: Request) -> State:
    value: State = request.app.state.api
    return value


# The dependencies are `async def` although they never wait: FastAPI runs a plain `def` dependency in its
# thread pool, and two thread hops per request cost more than everything else a small GET does.
StateDep = Annotated[State, Depends(state)]


def key_ok(given: str | None, authorization: str, expected: str) -> bool:
    """The API key check, on the raw header values: `X-API-Key`, else `Authorization: Bearer`."""
    if given is None and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


async def require_read_key(request: Request, st: StateDep) -> None:
    # The publish routes decide on their key with everything else they decide (api/publish.py).
    headers = request.headers
    if (
        st.settings.api_key
        and st.settings.api_key_reads
        and not key_ok(headers.get("x-api-key"), headers.get("authorization", ""), st.settings.api_key)
    ):
        raise HTTPException(
            401, "missing or wrong API key (send it as X-API-Key)", headers={"WWW-Authenticate": "Bearer"}
        )
