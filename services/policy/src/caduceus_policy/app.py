"""Wiring: the broker, its subscribers, the decider, the shared counters and the pack sync.

Built the same way by `__main__` and tests: `build(settings)` then `await start(service)`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from faststream.nats import NatsBroker, NatsMessage
from nats.aio.msg import Msg
from opentelemetry import trace

from caduceus_bus import EventPublisher, ensure_event_stream, extract_context, make_broker
from caduceus_contracts import ErrorEvent, ModelUsage, ensure_signer, parse_event, subjects
from caduceus_contracts.models import ContractError
from caduceus_policy.adapters.counters import SharedCounters
from caduceus_policy.adapters.packs import LIVE, PackStore, PublishedPack
from caduceus_policy.domain import PolicyEngine
from caduceus_policy.engine import load_engine
from caduceus_policy.handlers import Decider, DecisionService, on_model_usage, on_tool_requested
from caduceus_policy.keys import TrustedKeys
from caduceus_policy.settings import PolicySettings

SERVICE = "policy"
HEALTH_SUBJECT = f"caduceus.health.{SERVICE}"
log = logging.getLogger(__name__)
tracer = trace.get_tracer("caduceus.policy")


@dataclass
class PolicyService:
    """A built policy service; `start` connects it, `stop` stops it."""

    broker: NatsBroker
    publisher: EventPublisher
    decider: Decider
    decisions: DecisionService
    settings: PolicySettings
    pack_store: PackStore | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    subscriptions: list[Any] = field(default_factory=list)
    deciding: set[asyncio.Task[None]] = field(default_factory=set)  # requests being decided now


def build(settings: PolicySettings, engine: PolicyEngine | None = None) -> PolicyService:
    """Load the pack (unless an engine is given), the keys, and register the subscribers.

    Raises PackError when the pack file is missing or invalid.
    """
    engine = engine or load_engine(settings.policy_file)
    decider = Decider(engine, TrustedKeys(settings.keys_dir), ensure_signer(settings.keys_dir, SERVICE),
                      settings.workspaces_dir, settings.decision_ttl_s, follow_symlinks=settings.follow_symlinks)
    broker = make_broker(settings, SERVICE)
    publisher = EventPublisher(broker, settings, SERVICE)
    decisions = DecisionService(decider, publisher, deadline_s=settings.decide_timeout_ms / 1000)

    # Registered last: once it answers, the subscriptions before it are in place.
    @broker.subscriber(HEALTH_SUBJECT)
    async def health(msg: NatsMessage) -> bytes:
        return b"ok"

    return PolicyService(broker=broker, publisher=publisher, decider=decider, decisions=decisions, settings=settings)


async def start(service: PolicyService) -> None:
    """Connect, make sure the event stream and KV buckets exist, sync packs, count usage, start deciding."""
    await service.broker.connect()
    await ensure_event_stream(service.broker, service.settings)
    js = service.broker.config.connection_state.stream  # type: ignore[attr-defined]
    service.decisions.counters = await SharedCounters.open(js, service.settings.limits_bucket)
    if service.settings.packs_from_bus:
        await sync_packs(service, await PackStore.open(js, service.settings.packs_bucket))
    service.tasks.append(asyncio.create_task(count_usage(service, js), name="policy-usage"))
    await subscribe_requests(service)
    await service.broker.start()  # health answers from here on: every subscription is in place


async def subscribe_requests(service: PolicyService) -> None:
    """Decide every tool call request, up to `decide_concurrency` at once, each in a span of the caller's trace.

    On the broker's NATS connection itself, like the workers' subscriptions, rather than as a FastStream
    subscriber: its consume path (middleware, context resolution) cost a quarter of a millisecond of every
    decision's latency (bench/policy_decisions.py). A queue group: each request goes to one replica.
    """
    nc = service.broker.config.connection_state.connection  # type: ignore[attr-defined]
    slots = asyncio.Semaphore(service.settings.decide_concurrency)

    async def decide(msg: Msg) -> None:
        try:
            with tracer.start_as_current_span(f"{msg.subject} process", context=extract_context(msg.headers),
                                              kind=trace.SpanKind.CONSUMER,
                                              attributes={"messaging.system": "nats",
                                                          "messaging.destination.name": msg.subject,
                                                          "messaging.operation.type": "process"}):
                await on_tool_requested(msg.subject, msg.data, service.publisher, service.decisions)
        except Exception:  # the planner's bound denies the call; this replica goes on deciding
            log.exception("no decision for a request on %s", msg.subject)
        finally:
            slots.release()

    async def on_request(msg: Msg) -> None:
        await slots.acquire()  # at the bound, the next request waits in the subscription's queue
        task = asyncio.create_task(decide(msg))
        service.deciding.add(task)
        task.add_done_callback(service.deciding.discard)

    service.subscriptions.append(await nc.subscribe(subjects.TOOL_REQUESTED_ALL, queue=SERVICE, cb=on_request))
    await nc.flush()


async def stop(service: PolicyService) -> None:
    for subscription in service.subscriptions:
        try:
            await subscription.unsubscribe()
        except Exception:
            pass  # already gone with the connection
    if service.deciding:  # requests taken are decided and answered before the connection closes
        await asyncio.wait(set(service.deciding), timeout=service.settings.decide_timeout_ms / 1000 + 5)
    for task in service.tasks:
        task.cancel()
    for task in service.tasks:
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
    if service.pack_store is not None:
        await service.pack_store.stop()
    await service.broker.stop()


async def sync_packs(service: PolicyService, store: PackStore) -> None:
    """Seed the bus with our pack if none is live, then follow every published change."""
    service.pack_store = store
    packs = service.decider.packs
    engine_pack = getattr(packs.live, "pack", None)
    if engine_pack is not None and await store.seed(packs.live.version, engine_pack.files):
        log.info("published pack %s from %s as the live pack", packs.live.version, service.settings.policy_file)

    async def on_update(key: str, pack: PublishedPack | None, problem: str | None) -> None:
        before = (packs.live.version, packs.shadow.version if packs.shadow else None)
        refused = packs.apply(key, pack, problem)
        if refused is not None:
            log.error("%s", refused)
            await service.publisher.publish(
                subjects.error(subjects.SYSTEM_TENANT, SERVICE),
                ErrorEvent(tenant=subjects.SYSTEM_TENANT, service=SERVICE, subject=f"$KV.packs.{key}",
                           reason=refused[:1000]))
            return
        after = (packs.live.version, packs.shadow.version if packs.shadow else None)
        if after != before:
            log.info("policy packs now: live %s, shadow %s", *after)

    current = None
    try:
        current = await store.get(LIVE)
    except ValueError as exc:
        await on_update(LIVE, None, f"not a published pack: {exc}")
    if current is not None:
        await on_update(LIVE, current, None)
    await store.watch(on_update)


async def count_usage(service: PolicyService, js) -> None:  # type: ignore[no-untyped-def]
    """Model usage events, from a durable consumer all replicas share, counted against budgets."""
    counters = service.decisions.counters
    assert counters is not None
    subscription = await js.pull_subscribe(subjects.MODEL_USAGE_ALL, durable=service.settings.usage_consumer,
                                           stream=service.settings.stream_name)
    service.subscriptions.append(subscription)  # unsubscribed on stop, or draining the connection waits on it
    while True:
        try:
            messages = await subscription.fetch(batch=64, timeout=1.0)
        except TimeoutError:  # nats-py's fetch timeout is a TimeoutError: no usage in the last second
            continue
        except Exception as exc:
            log.warning("usage consumer: %s", exc)
            await asyncio.sleep(1.0)
            continue
        for message in messages:
            try:
                usage = parse_event(message.data, expect=ModelUsage, subject=message.subject)
            except ContractError as exc:
                await service.publisher.refuse(message.subject, message.data, str(exc))
                await message.ack()
                continue
            try:
                await on_model_usage(usage, service.decider, counters)  # type: ignore[arg-type]
            except Exception:
                log.exception("could not count usage event %s", usage.event_id)
                await message.nak(delay=1.0)
                continue
            await message.ack()
