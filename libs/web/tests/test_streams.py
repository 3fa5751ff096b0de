"""An event stream of a stopping service says what it still has, then ends; while quiet, it keeps the line alive."""

from __future__ import annotations

import asyncio

import pytest

from caduceus_web import until_stopped

pytestmark = pytest.mark.timeout(10)


async def test_what_was_queued_before_the_stop_is_still_given_then_the_stream_ends() -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    stopping = asyncio.Event()
    seen: list[str | None] = []

    async def follow() -> None:
        async for item in until_stopped(queue, stopping, keepalive_s=5):
            seen.append(item)

    following = asyncio.create_task(follow())
    queue.put_nowait("the call was decided")
    await asyncio.sleep(0.05)
    stopping.set()
    queue.put_nowait("the reply")  # arrived with the stop: still said
    await asyncio.wait_for(following, 1)
    assert seen == ["the call was decided", "the reply"]


async def test_a_quiet_stream_gets_keepalives_and_one_that_starts_stopped_ends_at_once() -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    stopping = asyncio.Event()
    stream = until_stopped(queue, stopping, keepalive_s=0.05)
    assert await anext(stream) is None
    stopping.set()
    assert [item async for item in stream] == []
    assert [item async for item in until_stopped(queue, stopping)] == []
