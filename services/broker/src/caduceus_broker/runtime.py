"""What every worker process under the broker shares: a health subject it answers on."""

from __future__ import annotations

from nats.aio.client import Client
from nats.aio.msg import Msg


def health_subject(tenant: str, workspace: str, role: str) -> str:
    return f"caduceus.health.worker.{tenant}.{workspace}.{role}"


async def answer_health(nc: Client, subject: str) -> None:
    async def reply(msg: Msg) -> None:
        await msg.respond(b"ok")

    await nc.subscribe(subject, cb=reply)
