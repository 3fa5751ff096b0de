"""What a starting broker missed: the turns and calls of the last while, read back from the event stream.

Every broker replica keeps in memory the turns and calls nobody has answered yet, so that whoever takes a workspace
over answers them. A broker that starts (or is restarted after a kill) would otherwise know only what was published
after it started: a turn sent while no broker ran, or one its dead owner had given to its planner, would be known to
nobody once this broker took the workspace's lease. The stream keeps every event, so a starting broker reads those
subjects back before it takes any lease.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from caduceus_contracts import ContractError, Event, new_id, parse_event, subjects, utcnow

log = logging.getLogger("caduceus.broker.catch_up")

# What the broker tracks per workspace until it is answered (the subjects of its routes).
READ_BACK = (subjects.TURN_REQUESTED_ALL, subjects.TURN_ASSIGNED_ALL, subjects.CHAT_REPLY_ALL,
             subjects.TOOL_REQUESTED_ALL, subjects.TOOL_DECIDED_ALL, subjects.TOOL_DISPATCHED_ALL,
             subjects.MCP_DISPATCHED_ALL, subjects.TOOL_COMPLETED_ALL)
# A message of a read-back not delivered within this is taken as the end of what the stream has.
READ_TIMEOUT_S = 5.0


async def read_back(nc: Client, js: JetStreamContext, stream: str, since_s: float,
                    only: tuple[str, ...] = READ_BACK) -> list[Event]:
    """The events on `only` stored in the last `since_s` seconds, in stream order (malformed ones left out).

    One short-lived consumer per subject (its filter is in the API subject, so the broker's credential can be
    scoped to exactly these), delivered without acknowledgements to this connection's inbox.
    """
    found: list[tuple[int, Event]] = []
    start = utcnow() - timedelta(seconds=since_s)
    for subject in only:
        found += await _read_subject(nc, js, stream, subject, start)
    found.sort(key=lambda pair: pair[0])
    return [event for _, event in found]


async def _read_subject(nc: Client, js: JetStreamContext, stream: str, subject: str, start) -> list[tuple[int, Event]]:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)  # before the consumer: it delivers at once
    events: list[tuple[int, Event]] = []
    try:
        info = await js.add_consumer(stream, ConsumerConfig(
            name=f"broker-catch-up-{new_id()[:12]}", filter_subject=subject, deliver_subject=inbox,
            deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start, ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0, mem_storage=True, num_replicas=1))
        for _ in range(info.num_pending or 0):
            msg = await sub.next_msg(timeout=READ_TIMEOUT_S)
            try:
                event = parse_event(msg.data, subject=msg.subject)
            except ContractError:
                continue  # its route's "ignore"/"refuse" already dealt with it live
            events.append((msg.metadata.sequence.stream, event))
        return events
    except TimeoutError:  # nats-py's too
        log.warning("reading back %s from stream %s stopped early (no message within %g s)", subject, stream,
                    READ_TIMEOUT_S)
        return events
    finally:
        await sub.unsubscribe()  # the consumer goes by itself once nobody listens (inactive_threshold)
