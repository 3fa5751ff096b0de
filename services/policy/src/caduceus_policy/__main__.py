"""`python -m caduceus_policy`: decide tool calls until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys

from caduceus_bus import stop_event
from caduceus_policy.app import PolicyService, build, start, stop
from caduceus_policy.pack import PackError
from caduceus_policy.settings import PolicySettings
from caduceus_telemetry import setup_telemetry, shutdown_telemetry

log = logging.getLogger("caduceus_policy")


async def serve(service: PolicyService) -> None:
    """Connect, start deciding, stop cleanly on a signal."""
    stop_requested = stop_event()
    await start(service)
    log.info("policy ready: pack %s (from %s)", service.decider.engine.version, service.settings.policy_file)
    try:
        await stop_requested.wait()
    finally:
        await stop(service)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    provider = setup_telemetry("policy")
    try:
        service = build(PolicySettings())
    except PackError as exc:
        print(f"caduceus-policy: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"caduceus-policy: cannot use the keys directory: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(service))
    finally:
        shutdown_telemetry(provider)
    return 0


if __name__ == "__main__":
    sys.exit(main())
