"""What a starting broker missed: the turns and calls of the last while, read back from the event stream.

Every broker replica keeps in memory the turns and calls nobody has answered yet, so that whoever takes a workspace
over answers them. A broker that starts (or is restarted after a kill) would otherwise know only what was published
after it started: a turn sent while no broker ran, or one its dead owner had given to its planner, would be known to
nobody once this broker took the workspace's lease. The stream keeps every event, so a starting broker reads those
subjects back before it takes any lease.
"""

from __future__ import annotations

from collections.abc import Sequence

from nats.aio.client import Client
from nats.js import JetStreamContext

from caduceus_bus.read_back import read_back as read_subjects
from caduceus_contracts import Event, subjects

# What the broker tracks per workspace until it is answered (the subjects of its routes).
READ_BACK = (subjects.TURN_REQUESTED_ALL, subjects.TURN_ASSIGNED_ALL, subjects.CHAT_REPLY_ALL,
             subjects.TOOL_REQUESTED_ALL, subjects.TOOL_DECIDED_ALL, subjects.TOOL_DISPATCHED_ALL,
             subjects.MCP_DISPATCHED_ALL, subjects.TOOL_COMPLETED_ALL)


async def read_back(nc: Client, js: JetStreamContext, stream: str, since_s: float,
                    only: Sequence[str] = READ_BACK) -> list[Event]:
    """The events on the broker's subjects stored in the last `since_s` seconds, in stream order."""
    return await read_subjects(nc, js, stream, since_s, only, reader="broker-catch-up")
