"""Container healthcheck: a Caduceus service is healthy once it answers `caduceus.health.<name>` with ok.

    python /app/infra/docker/healthcheck.py identity
"""

from __future__ import annotations

import asyncio
import sys

import nats

from caduceus_bus import BusSettings, auth_options


async def answers(service: str, timeout: float = 3.0) -> bool:
    settings = BusSettings()  # the service's own credential: it may ask its own health subject
    nc = await nats.connect(settings.nats_url, connect_timeout=timeout, max_reconnect_attempts=0,
                            allow_reconnect=False, **auth_options(settings))
    try:
        reply = await nc.request(f"caduceus.health.{service}", b"", timeout=timeout)
        return reply.data == b"ok"
    finally:
        await nc.close()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: healthcheck.py <service>", file=sys.stderr)
        return 2
    try:
        healthy = asyncio.run(answers(argv[0]))
    except Exception as exc:  # any failure to get "ok" means unhealthy
        print(f"{argv[0]} is not answering: {exc!r}", file=sys.stderr)
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
