"""Reading back what the event stream stored on a few subjects since a while ago: for a process that must know
what happened before it started (a broker taking over a workspace, an MCP endpoint replica picking up a call another
replica took)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from caduceus_contracts import ContractError, Event, new_id, parse_event, utcnow

log = logging.getLogger(__name__)

# A message of a read-back not delivered within this is taken as the end of what the stream has.
READ_TIMEOUT_S = 5.0


async def read_back(nc: Client, js: JetStreamContext, stream: str, since_s: float, only: Sequence[str],
                    reader: str = "read-back") -> list[Event]:
    """The events on `only` stored in the last `since_s` seconds, in stream order (malformed ones left out).

    One short-lived consumer per subject (its filter is in the API subject, so a credential can be scoped to
    exactly these: routes.read_back_subjects), delivered without acknowledgements to this connection's inbox.
    """
    found: list[tuple[int, Event]] = []
    start = utcnow() - timedelta(seconds=since_s)
    for subject in only:
        found += await _read_subject(nc, js, stream, subject, start, reader)
    found.sort(key=lambda pair: pair[0])
    return [event for _, event in found]


async def _read_subject(nc: Client, js: JetStreamContext, stream: str, subject: str, start,
                        reader: str) -> list[tuple[int, Event]]:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)  # before the consumer: it delivers at once
    events: list[tuple[int, Event]] = []
    try:
        info = await js.add_consumer(stream, ConsumerConfig(
            name=f"{reader}-{new_id()[:12]}", filter_subject=subject, deliver_subject=inbox,
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
