"""The runtime of a route table: subscribe, parse into the contract, trace, bound concurrency, ack, drain.

On nats-py directly rather than a FastStream subscriber: FastStream's consume path cost a quarter of a
millisecond of every policy decision (bench/policy_decisions.py); this layer's own cost is measured
against raw nats-py in bench/routing_overhead.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import context as otel_context
from opentelemetry import trace

from caduceus_bus.connection import EventConnection, settle
from caduceus_bus.observability import MESSAGE_SECONDS, MESSAGES
from caduceus_bus.routes import Pull, Route, RouteTable
from caduceus_bus.tracing import extract_context
from caduceus_contracts import ContractError, Event, parse_event

log = logging.getLogger(__name__)
tracer = trace.get_tracer("caduceus.bus")
# Pause after a bus error (server restarting, consumer gone) before fetching again.
BUS_RETRY_S = 1.0


@dataclass
class Delivery:
    """One message as it arrived: for handlers that need more than the parsed event."""

    subject: str
    data: bytes
    headers: Mapping[str, str] | None
    connection: EventConnection
    route: Route
    msg: Msg | None = None
    event: Event | None = None
    problem: str = ""  # why the message does not parse (Pull routes deliver such messages too)
    stream_seq: int | None = None
    published_at: datetime | None = None

    async def refuse(self, reason: str) -> None:
        """Publish the audited error event for this message, its excerpt scrubbed as the route says."""
        body = self.route.scrub(self.data) if self.route.scrub else self.data
        await self.connection.refuse(self.subject, body, reason)

    async def ack(self) -> None:
        if self.msg is not None and not self.msg._ackd:
            with contextlib.suppress(Exception):  # a lost ack only means a redelivery
                await self.msg.ack()

    async def nak(self, delay_s: float | None = None) -> None:
        """Ask JetStream to deliver the message again (after `delay_s`)."""
        if self.msg is not None and not self.msg._ackd:
            with contextlib.suppress(Exception):
                await self.msg.nak(delay=delay_s)

    async def in_progress(self) -> None:
        """Tell JetStream the message is still being worked on, so it is not redelivered yet."""
        if self.msg is not None:
            with contextlib.suppress(Exception):
                await self.msg.in_progress()


@dataclass
class Router:
    """Runs one route table on one connection, calling handlers with `deps`."""

    table: RouteTable
    deps: Any
    connection: EventConnection
    subscriptions: list[Subscription] = field(default_factory=list)
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)
    pullers: list[asyncio.Task[None]] = field(default_factory=list)
    _pulling: dict[asyncio.Task[None], Route] = field(default_factory=dict)
    _replaced: set[asyncio.Task[None]] = field(default_factory=set)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Set once a stopping router's subscriptions are gone from the server: nothing more is delivered after it.
    unsubscribed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        """Subscribe every route; when this returns, every subscription is in place on the server."""
        nc = self.connection.nc
        for route in self.table.routes:
            if isinstance(route.delivery, Pull):
                self._start_puller(route)
            else:
                self.subscriptions.append(await nc.subscribe(route.subject, queue=route.queue or "",
                                                             cb=self._core_callback(route)))
        await settle(nc)

    def _start_puller(self, route: Route) -> None:
        assert isinstance(route.delivery, Pull)
        task = asyncio.create_task(self._pull(route), name=f"pull {route.delivery.durable}")
        self.pullers.append(task)
        self._pulling[task] = route
        task.add_done_callback(self._puller_ended)

    def _puller_ended(self, task: asyncio.Task[None]) -> None:
        """A pull loop only ends when the router stops or replaces it: any other end is said and mended."""
        route = self._pulling.pop(task, None)
        if task in self.pullers:
            self.pullers.remove(task)
        if self._stopping.is_set() or route is None:
            return
        if task in self._replaced:
            self._replaced.discard(task)
            return
        problem = "was cancelled" if task.cancelled() else f"raised {task.exception()!r}"
        log.error("%s: the pull loop of consumer %r ended (it %s); starting it again", self.table.role,
                  route.delivery.durable, problem, exc_info=None if task.cancelled() else task.exception())
        self._start_puller(route)

    def restart_pulls(self, reason: str) -> int:
        """Replace every pull loop with a new one that binds its consumer afresh (for a watchdog that saw no
        progress). A batch in hand is left unacknowledged: JetStream delivers it again. Returns how many."""
        if self._stopping.is_set():
            return 0
        restarted = 0
        for task, route in list(self._pulling.items()):
            assert isinstance(route.delivery, Pull)
            log.warning("%s: restarting the pull loop of consumer %r: %s", self.table.role, route.delivery.durable,
                        reason)
            self._replaced.add(task)
            task.cancel()
            self._start_puller(route)
            restarted += 1
        return restarted

    def _core_callback(self, route: Route):
        if route.concurrency == 1:
            return partial(self._handle, route)
        slots = asyncio.Semaphore(route.concurrency)

        async def bounded(msg: Msg) -> None:
            await slots.acquire()  # at the bound, the next message waits in the subscription's queue
            task = asyncio.create_task(self._handle(route, msg))
            self.in_flight.add(task)
            task.add_done_callback(lambda done: (self.in_flight.discard(done), slots.release()))

        return bounded

    async def _handle(self, route: Route, msg: Msg) -> None:
        """Handle one message in the sender's trace: in a consumer span when traces are exported, else in its
        context alone (what the handler publishes still carries the trace; a no-op span would only cost time)."""
        parent = extract_context(msg.headers)
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            token = otel_context.attach(parent)
            try:
                await self._dispatch(route, msg)
            finally:
                otel_context.detach(token)
            return
        with tracer.start_as_current_span(f"{msg.subject} process", context=parent, kind=trace.SpanKind.CONSUMER,
                                          attributes={"messaging.system": "nats",
                                                      "messaging.destination.name": msg.subject,
                                                      "messaging.operation.type": "process"}):
            await self._dispatch(route, msg)

    async def _dispatch(self, route: Route, msg: Msg) -> None:
        started = time.perf_counter()
        try:
            event = parse_event(msg.data, expect=route.receives, subject=msg.subject)
        except ContractError as exc:
            self._count(route, "malformed")
            if route.malformed == "refuse":
                await self._refuse(route, msg, str(exc))
            if route.salvage is not None:
                await self._salvage(route, msg, str(exc))
            return
        try:
            if route.wants_delivery:
                await route.handler(self.deps, event, Delivery(msg.subject, msg.data, msg.headers, self.connection,
                                                               route, msg=msg, event=event))
            else:
                await route.handler(self.deps, event)
        except Exception:  # one message's failure never stops the route
            self._count(route, "failed")
            log.exception("%s failed to handle a message on %s", self.table.role, msg.subject)
            return
        self._count(route, "handled", time.perf_counter() - started)

    def _count(self, route: Route, outcome: str, seconds: float | None = None, messages: int = 1) -> None:
        MESSAGES.labels(self.table.role, route.subject, outcome).inc(messages)
        if seconds is not None:
            MESSAGE_SECONDS.labels(self.table.role, route.subject).observe(seconds)

    async def _salvage(self, route: Route, msg: Msg, problem: str) -> None:
        assert route.salvage is not None
        try:
            await route.salvage(self.deps, Delivery(msg.subject, msg.data, msg.headers, self.connection, route,
                                                    problem=problem))
        except Exception:
            log.exception("%s failed to answer a malformed message on %s", self.table.role, msg.subject)

    async def _refuse(self, route: Route, msg: Msg, reason: str) -> None:
        try:
            await Delivery(msg.subject, msg.data, msg.headers, self.connection, route).refuse(reason)
        except Exception:
            log.exception("%s could not publish the error event for a message on %s", self.table.role, msg.subject)

    # --- JetStream pull consumers ---

    async def _pull(self, route: Route) -> None:
        pull = route.delivery
        assert isinstance(pull, Pull)
        subscription = None
        try:
            while not self._stopping.is_set():
                try:
                    if subscription is None:
                        subscription = await self._bind(route)
                    msgs = await subscription.fetch(pull.batch, timeout=pull.fetch_timeout_s)
                except TimeoutError:  # nothing to fetch (nats-py raises the builtin TimeoutError since 3.11)
                    continue
                except asyncio.CancelledError:
                    if self._stopping.is_set() or _cancelling():
                        raise
                    # nats-py cancels a fetch's wait under it (the connection closing, a reconnect): not this loop's
                    # end. Ending here, quietly, left a consumer with events and nobody fetching them.
                    log.warning("%s: a fetch from consumer %r was cancelled under it; binding it again", self.table.role,
                                pull.durable)
                    subscription = await _drop(subscription)
                    await asyncio.sleep(BUS_RETRY_S)
                    continue
                except Exception as exc:  # a bus error or anything else: never leave the consumer dead and quiet
                    log.warning("%s: fetching from consumer %r failed (%s: %s); binding it again", self.table.role,
                                pull.durable, type(exc).__name__, exc)
                    subscription = await _drop(subscription)
                    await asyncio.sleep(BUS_RETRY_S)
                    continue
                if not msgs:  # a pull request the server ended with a status (e.g. 408) and no message: idle
                    continue
                started = time.perf_counter()
                try:
                    batch = await self._accepted(route, [self._delivery(route, msg) for msg in msgs])
                    await route.handler(self.deps, batch)
                except asyncio.CancelledError:
                    raise
                except Exception:  # left unacknowledged: JetStream delivers the batch again
                    self._count(route, "failed", messages=len(msgs))
                    log.exception("%s failed to handle a batch of %d from %r", self.table.role, len(msgs), pull.durable)
                    continue
                self._count(route, "handled", time.perf_counter() - started, messages=len(batch))
                for delivery in batch:
                    await delivery.ack()
        finally:  # also when replaced or stopped mid-fetch: the inbox subscription goes with the loop
            await _drop(subscription)

    async def _accepted(self, route: Route, batch: list[Delivery]) -> list[Delivery]:
        """The batch for the handler: malformed messages refused (and acknowledged) unless the route wants them."""
        if route.malformed == "deliver":
            return batch
        accepted = []
        for delivery in batch:
            if not delivery.problem:
                accepted.append(delivery)
                continue
            self._count(route, "malformed")
            if route.malformed == "refuse":
                try:
                    await delivery.refuse(delivery.problem)
                except Exception:
                    log.exception("%s could not publish the error event for a message on %s", self.table.role,
                                  delivery.subject)
                    continue  # unacknowledged: delivered again, and refused then
            await delivery.ack()
        return accepted

    async def _bind(self, route: Route) -> JetStreamContext.PullSubscription:
        pull = route.delivery
        assert isinstance(pull, Pull)
        js, stream = self.connection.js, self.connection.settings.stream_name
        info = await js.add_consumer(stream, consumer_config(route.subject, pull))
        if info.paused:
            # A paused consumer answers no fetch and says nothing: the route's consumer must deliver.
            log.warning("%s: consumer %r was paused (until %s); resuming it", self.table.role, pull.durable,
                        info.config.pause_until)
            await js.resume_consumer(stream, pull.durable)
        return await js.pull_subscribe_bind(durable=pull.durable, stream=stream)

    def _delivery(self, route: Route, msg: Msg) -> Delivery:
        meta = msg.metadata
        delivery = Delivery(msg.subject, msg.data, msg.headers, self.connection, route, msg=msg,
                            stream_seq=meta.sequence.stream, published_at=meta.timestamp or datetime.now(UTC))
        try:
            delivery.event = parse_event(msg.data, expect=route.receives, subject=msg.subject)
        except ContractError as exc:
            delivery.problem = str(exc)
        return delivery

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking messages, let those in hand finish (up to `grace_s`), then stop the pull consumers.

        Each subscription is drained, not dropped: unsubscribing would cancel a handler in the middle of its
        message, and a core NATS message is not delivered again.
        """
        self._stopping.set()
        subscriptions, self.subscriptions = self.subscriptions, []
        nc = self.connection.nc
        for subscription in subscriptions:
            with contextlib.suppress(Exception):
                await nc._send_unsubscribe(subscription._id)  # private: UNSUB without dropping what is queued
        with contextlib.suppress(Exception):
            await settle(nc)  # the server has every UNSUB, and what it sent before them is read and queued
        self.unsubscribed.set()
        drains = [asyncio.create_task(_drain(subscription)) for subscription in subscriptions]
        if drains:
            await asyncio.wait(drains, timeout=grace_s)
        if self.in_flight:
            await asyncio.wait(set(self.in_flight), timeout=grace_s)
        if self.pullers:
            _, late = await asyncio.wait(self.pullers, timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*self.pullers, return_exceptions=True)
            self.pullers.clear()


def consumer_config(subject: str, pull: Pull) -> ConsumerConfig:
    """Every event on `subject` from the start of the stream, each acknowledged explicitly once handled."""
    return ConsumerConfig(name=pull.durable, durable_name=pull.durable, filter_subject=subject,
                          deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT,
                          ack_wait=pull.ack_wait_s, max_deliver=-1)


def _cancelling() -> bool:
    """Whether this task itself is being cancelled (not just an awaited future inside it)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _drain(subscription: Subscription) -> None:
    """Handle what was already delivered (the handler in progress included), then drop the subscription. Its
    UNSUB was sent and settled before (nats-py's own drain would round trip before its UNSUB is even written,
    and drop what arrives after)."""
    try:
        await subscription.drain()
    except Exception:  # the connection is gone or closing: nothing more can be handled
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()


async def _drop(subscription: JetStreamContext.PullSubscription | None) -> None:
    # A pull subscription never drains (nats-py keeps fetch status messages queued): unsubscribe it.
    if subscription is not None:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()
    return None
