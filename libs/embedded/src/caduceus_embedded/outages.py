"""Telling the audit trail that the stack left a service down: an error event on the bus.

The event waits in the JetStream stream, so the audit service stores it even when it is the one that
was down, once someone brings it back.
"""

from __future__ import annotations

import asyncio

import nats.errors

from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import ErrorEvent, subjects

# Who reports: the supervisor of the embedded stack (`caduceus up`).
REPORTER = "stack"
REPORT_TIMEOUT_S = 10.0


class OutageNotReported(Exception):
    """The bus did not take the report (it may be what is down)."""


def left_down_event(service: str, health_subject: str, problem: str) -> ErrorEvent:
    """The error event saying the stack gave up restarting `service`, and why."""
    return ErrorEvent(tenant=subjects.SYSTEM_TENANT, service=REPORTER, subject=health_subject,
                      reason=f"service {service} is down: {problem}"[:1000])


async def report_left_down(settings: BusSettings, event: ErrorEvent) -> None:
    """Publish the event on `cad.v1.error._system.stack`. Raises OutageNotReported."""
    try:
        connection = await asyncio.wait_for(EventConnection.connect(settings, "caduceus-up-outage"),
                                            REPORT_TIMEOUT_S)
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise OutageNotReported(f"cannot reach NATS ({exc})") from None
    try:
        await connection.publish(subjects.error(subjects.SYSTEM_TENANT, REPORTER), event)
    except (TimeoutError, nats.errors.Error) as exc:
        raise OutageNotReported(f"the event stream did not take it ({exc})") from None
    finally:
        await connection.close()
