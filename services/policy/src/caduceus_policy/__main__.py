"""`python -m caduceus_policy`: decide tool calls until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from caduceus_bus import ensure_event_stream
from caduceus_policy.app import PolicyService, build
from caduceus_policy.rulefile import RuleFileError
from caduceus_policy.settings import PolicySettings
from caduceus_telemetry import setup_telemetry, shutdown_telemetry

log = logging.getLogger("caduceus_policy")


async def serve(service: PolicyService) -> None:
    """Connect, make sure the event stream exists, start the subscribers, stop cleanly on a signal."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await service.broker.connect()
    await ensure_event_stream(service.broker, service.settings)
    await service.broker.start()
    log.info("policy ready: rules %s from %s", service.decider.engine.version, service.settings.policy_file)
    try:
        await stop.wait()
    finally:
        await service.broker.stop()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    provider = setup_telemetry("policy")
    try:
        service = build(PolicySettings())
    except RuleFileError as exc:
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
