"""Server-sent event streams that end when their service stops, rather than hold its stop for the whole grace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

Item = TypeVar("Item")


async def until_stopped(queue: asyncio.Queue[Item], stopping: asyncio.Event, *,
                        keepalive_s: float = 15.0) -> AsyncIterator[Item | None]:
    """What arrives on `queue`, for an event stream: each item as it comes, and None after `keepalive_s` of quiet
    (send a keepalive comment then). Once `stopping` is set, what was queued before is still given, then the
    stream ends cleanly: the browser reconnects (to another replica, or to this service once it is back)."""
    stopped = asyncio.ensure_future(stopping.wait())
    try:
        while not stopped.done():
            arriving = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({arriving, stopped}, timeout=keepalive_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if arriving in done:
                yield arriving.result()
                continue
            arriving.cancel()  # Queue.get gives up its place without losing an item
            if not stopped.done():
                yield None
        while not queue.empty():
            yield queue.get_nowait()
    finally:
        stopped.cancel()
