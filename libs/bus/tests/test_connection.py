"""Subscriptions against a real nats-server, and the routing probe the tests use after subscribing."""

from __future__ import annotations

import asyncio

import nats

from caduceus_bus import EventConnection
from caduceus_embedded.testing import until_routed


async def test_after_the_routing_probe_another_clients_first_message_always_arrives(
        connection: EventConnection, settings, tenant: str) -> None:
    other = await nats.connect(settings.nats_url)
    try:
        for round_ in range(100):
            subject = f"test.{tenant}.{round_}"
            got: asyncio.Queue = asyncio.Queue()

            async def on_message(msg, got=got) -> None:
                await got.put(msg.data)

            subscription = await connection.subscribe(subject, on_message)
            await until_routed(connection.nc, other)
            await other.publish(subject, b"first")  # from another client: only the server orders the two
            await other.flush()
            try:
                assert await asyncio.wait_for(got.get(), 5) == b"first"
            except TimeoutError:
                raise AssertionError(f"round {round_}: the first message was missed") from None
            await subscription.unsubscribe()
    finally:
        await other.close()
