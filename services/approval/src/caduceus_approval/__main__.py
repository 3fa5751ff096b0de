"""`python -m caduceus_approval`: run approvals until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys

from caduceus_approval.app import ApprovalService, build
from caduceus_bus import stop_event
from caduceus_telemetry import setup_telemetry, shutdown_telemetry
from caduceus_web import HttpUnavailable

log = logging.getLogger("caduceus_approval")


async def serve(service: ApprovalService) -> None:
    stop = stop_event()
    await service.start()
    log.info("approval started; Temporal at %s, task queue %s, UI %s", service.settings.temporal_address,
             service.settings.approval_task_queue, service.settings.ui_url or "disabled")
    try:
        await stop.wait()
    finally:
        await service.stop()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    provider = setup_telemetry("approval")
    try:
        service = build()
    except OSError as exc:
        print(f"caduceus-approval: cannot use the keys directory: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(service))
    except HttpUnavailable as exc:
        print(f"caduceus-approval: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown_telemetry(provider)
    return 0


if __name__ == "__main__":
    sys.exit(main())
