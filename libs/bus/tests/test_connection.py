"""EventConnection against a real nats-server."""

from __future__ import annotations

import asyncio

import nats

from caduceus_bus import EventConnection


async def test_a_subscription_gets_what_another_client_publishes_right_after_subscribe_returns(
        connection: EventConnection, settings, tenant: str) -> None:
    other = await nats.connect(settings.nats_url)
    try:
        for round_ in range(30):
            subject = f"test.{tenant}.{round_}"
            got: asyncio.Queue = asyncio.Queue()

            async def on_message(msg, got=got) -> None:
                await got.put(msg.data)

            subscription = await connection.subscribe(subject, on_message)
            await other.publish(subject, b"first")  # from another client: only the server orders the two
            await other.flush()
            assert await asyncio.wait_for(got.get(), 5) == b"first", f"round {round_}: the message was missed"
            await subscription.unsubscribe()
    finally:
        await other.close()
