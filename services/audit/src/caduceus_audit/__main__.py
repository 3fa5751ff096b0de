"""`python -m caduceus_audit`: store every bus event in the audit trail until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

from pydantic import ValidationError
from sqlalchemy.exc import ArgumentError

from caduceus_audit.app import AuditService, build
from caduceus_audit.settings import AuditSettings
from caduceus_bus import stop_event
from caduceus_contracts import SignatureError
from caduceus_telemetry import setup_telemetry, shutdown_telemetry

log = logging.getLogger("caduceus_audit")

# How long a stopping service lets the batch in hand finish (it is redelivered if cut short).
STOP_GRACE_S = 5.0


async def serve(service: AuditService) -> None:
    """Start, consume until a signal, then stop: the batch in hand is finished or left for redelivery."""
    stop = stop_event()
    try:
        await service.start(stop)
        if stop.is_set():
            return
        consumer = asyncio.create_task(service.consume(stop))
        # A consumer that dies ends the process (loudly, for the supervisor) instead of leaving it healthy but idle.
        await asyncio.wait([consumer, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(consumer, STOP_GRACE_S)
    finally:
        await service.close()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = AuditSettings()
        service = build(settings)
    except (ValidationError, ArgumentError) as exc:
        print(f"caduceus-audit: invalid settings: {exc}\nCheck CADUCEUS_AUDIT_DB_URL and the other CADUCEUS_AUDIT_* "
              "variables.", file=sys.stderr)
        return 2
    except (OSError, SignatureError) as exc:
        print(f"caduceus-audit: cannot load or create the audit signing key (audit.key in CADUCEUS_KEYS_DIR): {exc}",
              file=sys.stderr)
        return 2
    provider = setup_telemetry("audit")
    try:
        asyncio.run(serve(service))
    except OSError as exc:
        print(f"caduceus-audit: cannot reach NATS at {settings.nats_url}: {exc}", file=sys.stderr)
        return 1
    finally:
        shutdown_telemetry(provider)
    return 0


if __name__ == "__main__":
    sys.exit(main())
