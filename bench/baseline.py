"""`python -m bench.baseline`: BASELINE ONLY, not part of the product, never shipped or deployed.

A faithful small version of the design this product replaces: FastAPI, `POST /publish` with one event per
request into an in-memory `asyncio.Queue`, and one worker that writes each event with its own SQLite commit
(dedup by primary key, counters in the same commit). Same durability as the product (WAL,
`synchronous=FULL`) so the comparison is about the design, not the fsync setting. Everything still in the
queue is lost if the process dies; that is the point of the product, not measured here.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, Field


class BaselineEvent(BaseModel):
    topic: str = Field(min_length=1, max_length=255)
    event_id: str = Field(min_length=1, max_length=255)
    timestamp: str
    source: str = Field(min_length=1, max_length=255)
    payload: dict[str, Any] = Field(default_factory=dict)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    topic TEXT NOT NULL, event_id TEXT NOT NULL, timestamp TEXT NOT NULL, source TEXT NOT NULL,
    payload TEXT NOT NULL, PRIMARY KEY (topic, event_id)
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES
    ('received', 0), ('unique_processed', 0), ('duplicate_dropped', 0), ('invalid', 0), ('conflicts', 0);
"""


def open_store(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(_SCHEMA)
    return conn


def store_one(conn: sqlite3.Connection, event: BaselineEvent) -> None:
    conn.execute("BEGIN IMMEDIATE")
    cur = conn.execute(
        "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)",
        (
            event.topic,
            event.event_id,
            event.timestamp,
            event.source,
            event.model_dump_json(include={"payload"}),
        ),
    )
    outcome = "unique_processed" if cur.rowcount == 1 else "duplicate_dropped"
    conn.execute("UPDATE counters SET value = value + 1 WHERE name IN ('received', ?)", (outcome,))
    conn.execute("COMMIT")


def create_app(db_path: str) -> FastAPI:
    queue: asyncio.Queue[BaselineEvent] = asyncio.Queue()

    async def worker(conn: sqlite3.Connection) -> None:
        while True:
            event = await queue.get()
            store_one(conn, event)  # in the event loop, as the small aggregators do

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        conn = open_store(db_path)
        task = asyncio.create_task(worker(conn))
        yield
        task.cancel()
        conn.close()

    app = FastAPI(title="BASELINE (bench only)", lifespan=lifespan)

    @app.post("/publish")
    async def publish(event: BaselineEvent) -> dict[str, str]:
        await queue.put(event)
        return {"status": "accepted"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    return app


def main() -> int:
    db_path = os.environ["DB_PATH"]
    port = int(os.environ["API_PORT"])
    uvicorn.run(create_app(db_path), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
