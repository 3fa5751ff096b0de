"""What every Caduceus process under the broker shares: a health subject and a clean stop on signals."""

from __future__ import annotations

import asyncio
import signal

from nats.aio.client import Client
from nats.aio.msg import Msg


def health_subject(tenant: str, workspace: str, role: str) -> str:
    return f"caduceus.health.worker.{tenant}.{workspace}.{role}"


async def answer_health(nc: Client, subject: str) -> None:
    async def reply(msg: Msg) -> None:
        await msg.respond(b"ok")

    await nc.subscribe(subject, cb=reply)


def stop_event() -> asyncio.Event:
    """An event set on SIGINT or SIGTERM, so the process finishes its work and exits 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
