"""Route tables: every message a process handles, and every subject it publishes, declared in one place.

Each service (and worker role) declares one `RouteTable` in its handlers module. The table is read three ways:
the runner (`caduceus_bus.router`) subscribes and dispatches by it, the bus permission file is generated
from it (`permission_grant`), and a newcomer reads it to learn what the process does.

A handler is a plain async function (or an unbound method) called as `handler(deps, event)`, where `deps` is
what the process wired for it and `event` is the contract model the route receives, already parsed. A
handler that also needs the raw delivery (subject, headers, stream position, a way to refuse it) takes a
third parameter and is called `handler(deps, event, delivery)`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from caduceus_contracts import Event

Handler = Callable[..., Awaitable[Any]]
Malformed = Literal["refuse", "ignore", "deliver"]


@dataclass(frozen=True)
class Core:
    """Core NATS delivery: at most once, straight from the publisher; fast, for live work."""


@dataclass(frozen=True)
class Pull:
    """A durable JetStream pull consumer on the event stream: every stored event, acknowledged once handled.

    The handler gets a batch (a list of deliveries) and the whole batch is acknowledged when it returns, or
    left for redelivery when it raises. `reads_back` also lets the process read stored messages by position.
    """

    durable: str
    batch: int = 100
    ack_wait_s: float = 30.0
    fetch_timeout_s: float = 1.0
    reads_back: bool = False


CORE = Core()


@dataclass(frozen=True)
class Route:
    """One subscription: which subject, what it carries, who handles it, and how it is delivered.

    `receives` is the contract model (None: any contract event). `queue` names a queue group so each message
    goes to one replica; None means every replica gets every message. `concurrency` bounds how many messages
    of this route are handled at once (1 keeps their order). `malformed` says what a message that does not
    parse as `receives` becomes: "refuse" publishes an audited error event (once, by the one route that owns
    the subject), "ignore" drops it (another route, or the audit trail, reports it), "deliver" hands it to
    a Pull route's handler with its `problem` (the audit trail keeps such messages as rejected records).
    `salvage`, called as `salvage(deps, delivery)` after a malformed message is refused, may still answer it
    (policy denies a call whose request it cannot read, so the planner learns why at once).
    `scrub` removes what must not be quoted in an error event's excerpt (a token, say).
    """

    subject: str
    receives: type[Event] | None
    handler: Handler
    queue: str | None = None
    concurrency: int = 1
    delivery: Core | Pull = CORE
    malformed: Malformed = "refuse"
    scrub: Callable[[bytes], bytes] | None = None
    salvage: Handler | None = None
    wants_delivery: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if self.malformed == "deliver" and not isinstance(self.delivery, Pull):
            raise ValueError(f"route {self.subject}: only a Pull route can deliver malformed messages")
        if self.concurrency < 1:
            raise ValueError(f"route {self.subject}: concurrency must be at least 1")
        parameters = inspect.signature(self.handler).parameters
        if len(parameters) not in (2, 3):
            raise TypeError(f"route {self.subject}: {self.handler.__qualname__} must take (deps, event) or "
                            "(deps, event, delivery)")
        object.__setattr__(self, "wants_delivery", len(parameters) == 3)


@dataclass(frozen=True)
class RouteTable:
    """Everything one process (a service, or a worker role) receives and publishes on the bus.

    `role` is the name of its bus credential and of its error subject (`cad.v1.error.<tenant>.<role>`).
    `publishes` lists the subjects it publishes (beyond its error events and health answers); `grants` names
    shared sets from the permission file (e.g. `stream-setup`); `extra_subscribes` are subscriptions made by
    code that is not a route (e.g. a key-value watch); `reads_back` are subjects it reads back from the event
    stream with short-lived consumers filtered on exactly those subjects (`read_back_subjects`). A worker
    table's subjects are templates over `{tenant}` and `{workspace}`, filled from the worker's credential.
    """

    role: str
    routes: Sequence[Route]
    publishes: Sequence[str] = ()
    grants: Sequence[str] = ()
    extra_subscribes: Sequence[str] = ()
    reads_back: Sequence[str] = ()
    worker: bool = False

    @property
    def health_subject(self) -> str:
        if self.worker:
            return worker_health_subject(self.role, "{tenant}", "{workspace}")
        return f"caduceus.health.{self.role}"

    @property
    def error_subject(self) -> str:
        return f"cad.v1.error.{'{tenant}' if self.worker else '*'}.{self.role}"

    def bound(self, **values: str) -> "RouteTable":
        """A worker table with `{tenant}` and `{workspace}` filled in (a service table is returned as is)."""
        if not self.worker:
            return self
        routes = [_replace_subject(route, route.subject.format(**values)) for route in self.routes]
        return RouteTable(self.role, routes, tuple(s.format(**values) for s in self.publishes), self.grants,
                          tuple(s.format(**values) for s in self.extra_subscribes), worker=False)

    def tuned(self, subject: str, **changes: Any) -> "RouteTable":
        """The same table with the route on `subject` changed (e.g. its concurrency, from settings)."""
        if not any(route.subject == subject for route in self.routes):
            raise KeyError(f"{self.role} has no route on {subject}")
        routes = [dataclasses.replace(r, **changes) if r.subject == subject else r for r in self.routes]
        return dataclasses.replace(self, routes=tuple(routes))

    def permission_grant(self, stream: str) -> tuple[list[str], list[str]]:
        """(publish, subscribe) subjects this process needs: the routes', the declared ones, errors and health."""
        # A service's own credential asks its health (a container healthcheck); the broker asks its workers'.
        publish: list[str] = [self.error_subject, *self.publishes] if self.worker else [
            self.health_subject, self.error_subject, *self.publishes]
        subscribe: list[str] = []
        for route in self.routes:
            if isinstance(route.delivery, Pull):
                publish += pull_consumer_subjects(stream, route.delivery)
            else:
                subscribe.append(route.subject)
        publish += read_back_subjects(stream, self.reads_back)
        subscribe += [*self.extra_subscribes, self.health_subject]
        return _unique(publish), _unique(subscribe)


def worker_health_subject(role: str, tenant: str, workspace: str) -> str:
    """Where a worker of `role` answers whether it is ready (the broker asks before giving it work)."""
    return f"caduceus.health.worker.{tenant}.{workspace}.{role}"


def pull_consumer_subjects(stream: str, pull: Pull) -> list[str]:
    """The JetStream API subjects a durable pull consumer needs: create, inspect, fetch, acknowledge."""
    name = pull.durable
    subjects = [
        f"$JS.API.CONSUMER.CREATE.{stream}.{name}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{name}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}",
        f"$JS.API.CONSUMER.INFO.{stream}.{name}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
        f"$JS.API.CONSUMER.PAUSE.{stream}.{name}",  # to resume it when found paused
        f"$JS.ACK.{stream}.{name}.>",
    ]
    if pull.reads_back:
        subjects += [f"$JS.API.STREAM.MSG.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>"]
    return subjects


def read_back_subjects(stream: str, filters: Sequence[str]) -> list[str]:
    """The JetStream API subjects to create a consumer (of any name) that reads only `filters` (one each) from the
    stream; it delivers to the process's inbox, unacknowledged, and goes away by itself when idle."""
    return [f"$JS.API.CONSUMER.CREATE.{stream}.*.{subject}" for subject in filters]


def kv_bucket_subjects(bucket: str, *, watch: bool = False) -> list[str]:
    """The JetStream API subjects to create, read and write a key-value bucket (and to watch it)."""
    stream = f"KV_{bucket}"
    subjects = [f"$JS.API.STREAM.CREATE.{stream}", f"$JS.API.STREAM.INFO.{stream}",
                f"$JS.API.STREAM.MSG.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>"]
    if watch:
        subjects += [f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}.>",
                     f"$JS.API.CONSUMER.DELETE.{stream}.>", f"$JS.API.CONSUMER.INFO.{stream}.>", f"$JS.FC.{stream}.>"]
    return [*subjects, f"$KV.{bucket}.>"]


def _replace_subject(route: Route, subject: str) -> Route:
    return dataclasses.replace(route, subject=subject)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
