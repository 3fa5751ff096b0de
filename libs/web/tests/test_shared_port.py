"""Replicas on one machine share a web port: one killed, the others keep serving it."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from caduceus_embedded.ports import free_port
from caduceus_web import HttpServer, HttpUnavailable

pytestmark = pytest.mark.timeout(60)


def replica(name: str) -> Starlette:
    async def who(_request) -> PlainTextResponse:
        return PlainTextResponse(name)

    return Starlette(routes=[Route("/", who)])


async def answers(port: int, tries: int = 40) -> set[str]:
    async with httpx.AsyncClient() as client:
        # a new connection each time, so the kernel chooses a replica each time
        return {(await client.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"})).text
                for _ in range(tries)}


async def test_shared_replicas_split_the_port_and_one_stopped_leaves_it_served() -> None:
    port = free_port()
    one = HttpServer(replica("one"), "127.0.0.1", port, what="one", port_setting="-", shared=True)
    two = HttpServer(replica("two"), "127.0.0.1", port, what="two", port_setting="-", shared=True)
    await one.start()
    await two.start()
    try:
        assert await answers(port) == {"one", "two"}
        await one.stop()
        assert await answers(port) == {"two"}
    finally:
        await one.stop()
        await two.stop()


async def test_without_sharing_a_second_server_on_the_port_is_refused_clearly() -> None:
    port = free_port()
    first = HttpServer(replica("one"), "127.0.0.1", port, what="one", port_setting="CADUCEUS_X_PORT", shared=True)
    await first.start()
    try:
        second = HttpServer(replica("two"), "127.0.0.1", port, what="two", port_setting="CADUCEUS_X_PORT")
        with pytest.raises(HttpUnavailable, match="CADUCEUS_X_PORT"):
            await second.start()
    finally:
        await first.stop()
    await asyncio.sleep(0)
