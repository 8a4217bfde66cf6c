"""Exact observations of the broker for assertions: queue depth and consumers by passive declare."""

from __future__ import annotations

from aio_pika.abc import AbstractRobustConnection


async def queue_depth(connection: AbstractRobustConnection, queue: str) -> int:
    """Exact ready count by passive declare, on a throwaway channel (a missing queue closes it)."""
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        if not channel.is_closed:
            await channel.close()


async def consumer_count(connection: AbstractRobustConnection, queue: str) -> int:
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.consumer_count or 0)
    finally:
        if not channel.is_closed:
            await channel.close()
