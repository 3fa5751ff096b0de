"""A service built on the routing layer: valid events reach the handler parsed, anything else becomes an audited
ErrorEvent on cad.v1.error.<tenant>.<service> and never reaches it; concurrency is bounded; a stop answers
what is in hand; a pull consumer acknowledges only what its handler handled."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from caduceus_bus import (
    BusService,
    BusSettings,
    Delivery,
    EventConnection,
    Pull,
    Route,
    RouteTable,
)
from caduceus_contracts import (
    ChatMessageIn,
    ChatReply,
    ErrorEvent,
    parse_event,
    subjects,
)

SERVICE = "probe"
WAIT_S = 5.0


async def accept(probe: "ProbeService", event: ChatMessageIn) -> None:
    await probe.accepted.put(event)


class ProbeService(BusService):
    """The smallest service: accepts ChatMessageIn on every tenant's chat.in subject."""

    table = RouteTable(SERVICE, (Route(subjects.CHAT_IN_ALL, ChatMessageIn, accept, queue=SERVICE),),
                       grants=("stream-setup",))

    def __init__(self, settings: BusSettings) -> None:
        super().__init__(settings)
        self.accepted: asyncio.Queue[ChatMessageIn] = asyncio.Queue()


@pytest.fixture()
async def service(settings) -> AsyncIterator[ProbeService]:
    probe = ProbeService(settings)
    await probe.start()
    yield probe
    await probe.stop()


async def collect(connection: EventConnection, subject: str) -> asyncio.Queue:
    queue: asyncio.Queue = asyncio.Queue()

    async def on_message(msg) -> None:
        await queue.put(msg)

    await connection.subscribe(subject, on_message)
    await connection.nc.flush()
    return queue


async def next_error(queue: asyncio.Queue, subject: str) -> ErrorEvent:
    msg = await asyncio.wait_for(queue.get(), WAIT_S)
    return parse_event(msg.data, expect=ErrorEvent, subject=msg.subject)  # type: ignore[return-value]


async def test_valid_event_reaches_the_handler(service, connection, tenant):
    event = ChatMessageIn(tenant=tenant, session_id="s-1", token="tok", text="hello")
    await connection.publish(subjects.chat_in(tenant), event)
    assert await asyncio.wait_for(service.accepted.get(), WAIT_S) == event


async def test_malformed_json_becomes_an_error_event(service, connection, tenant):
    errors = await collect(connection, subjects.error(tenant, SERVICE))
    await connection.nc.publish(subjects.chat_in(tenant), b'{"kind": "chat.message.in", oops')
    error = await next_error(errors, subjects.error(tenant, SERVICE))
    assert error.tenant == tenant and error.service == SERVICE
    assert error.subject == subjects.chat_in(tenant)
    assert "Invalid JSON" in error.reason
    assert error.excerpt.startswith('{"kind"')
    assert service.accepted.empty()


async def test_event_for_another_tenant_becomes_an_error_on_the_subject_tenant(service, connection, tenant):
    errors = await collect(connection, subjects.error(tenant, SERVICE))
    intruder = ChatMessageIn(tenant="acme", session_id="s-1", token="tok", text="let me in")
    await connection.nc.publish(subjects.chat_in(tenant), intruder.model_dump_json().encode())
    error = await next_error(errors, subjects.error(tenant, SERVICE))
    assert "tenant 'acme'" in error.reason
    assert service.accepted.empty()


async def test_wrong_kind_becomes_an_error_event(service, connection, tenant):
    errors = await collect(connection, subjects.error(tenant, SERVICE))
    reply = ChatReply(tenant=tenant, message_id="m-1", session_id="s-1", text="not a chat message")
    await connection.nc.publish(subjects.chat_in(tenant), reply.model_dump_json().encode())
    error = await next_error(errors, subjects.error(tenant, SERVICE))
    assert "expected chat.message.in event, got chat.reply" in error.reason


async def test_message_without_a_valid_tenant_is_reported_under_the_system_tenant(service, connection, tenant):
    system_errors = await collect(connection, subjects.error(subjects.SYSTEM_TENANT, SERVICE))
    bad_subject = f"cad.v1.chat.in.{tenant.upper()}"
    await connection.nc.publish(bad_subject, json.dumps({"kind": "chat.message.in"}).encode())
    while True:  # other tests may report system errors too; find ours
        error = await next_error(system_errors, subjects.error(subjects.SYSTEM_TENANT, SERVICE))
        if error.subject == bad_subject:
            break
    assert error.tenant == subjects.SYSTEM_TENANT


async def test_error_events_are_kept_in_the_stream(service, connection, tenant):
    errors = await collect(connection, subjects.error(tenant, SERVICE))
    await connection.nc.publish(subjects.chat_in(tenant), b"not json")
    await next_error(errors, subjects.error(tenant, SERVICE))
    stored = await connection.js.get_last_msg(connection.settings.stream_name, subjects.error(tenant, SERVICE))
    assert parse_event(stored.data, expect=ErrorEvent).subject == subjects.chat_in(tenant)


# --- the layer's own promises: concurrency bound, drain, queue groups, pull consumers, permissions ---

class Gate:
    """Handlers that wait until released, counting how many run at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.running = 0
        self.most = 0
        self.done: list[str] = []

    async def handle(self, event: ChatMessageIn) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.release.wait()
            self.done.append(event.text)
        finally:
            self.running -= 1


def gated_service(settings: BusSettings, tenant: str, concurrency: int, role: str = "gated") -> BusService:
    class Gated(BusService):
        table = RouteTable(role, (Route(subjects.chat_in(tenant), ChatMessageIn, Gate.handle, queue=role,
                                        concurrency=concurrency),))

        async def prepare(self, connection: EventConnection) -> Gate:
            self.gate = Gate()
            return self.gate

    return Gated(settings)


async def started(service: BusService, connection: EventConnection) -> BusService:
    from caduceus_embedded.testing import until_routed

    await service.start()
    assert service.connection is not None
    await until_routed(service.connection.nc, connection.nc)
    return service


async def until(predicate, timeout: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_a_route_handles_at_most_its_concurrency_at_once(settings, connection, tenant):
    service = await started(gated_service(settings, tenant, concurrency=3), connection)
    try:
        for i in range(8):
            await connection.publish(subjects.chat_in(tenant), ChatMessageIn(tenant=tenant, session_id="s",
                                                                              token="t", text=str(i)))
        await until(lambda: service.gate.running == 3)
        service.gate.release.set()
        await until(lambda: len(service.gate.done) == 8)
        assert service.gate.most == 3
    finally:
        await service.stop()


async def test_a_stop_lets_the_messages_in_hand_finish_and_takes_no_more(settings, connection, tenant):
    service = await started(gated_service(settings, tenant, concurrency=4), connection)
    for i in range(2):
        await connection.publish(subjects.chat_in(tenant), ChatMessageIn(tenant=tenant, session_id="s", token="t",
                                                                          text=f"in hand {i}"))
    await until(lambda: service.gate.running == 2)
    gate = service.gate
    router = service.router
    assert router is not None
    stopping = asyncio.create_task(service.stop())
    await asyncio.wait_for(router.unsubscribed.wait(), WAIT_S)  # it takes no more from here on
    assert not stopping.done()  # waiting for the two in hand
    await connection.publish(subjects.chat_in(tenant), ChatMessageIn(tenant=tenant, session_id="s", token="t",
                                                                      text="after the stop"))
    gate.release.set()
    await asyncio.wait_for(stopping, WAIT_S)
    assert sorted(gate.done) == ["in hand 0", "in hand 1"]


async def test_a_queue_group_gives_each_message_to_one_replica(settings, connection, tenant):
    replicas = [await started(gated_service(settings, tenant, concurrency=8), connection) for _ in range(2)]
    try:
        for replica in replicas:
            replica.gate.release.set()
        for i in range(20):
            await connection.publish(subjects.chat_in(tenant), ChatMessageIn(tenant=tenant, session_id="s",
                                                                              token="t", text=str(i)))
        await until(lambda: sum(len(r.gate.done) for r in replicas) >= 20)
        # A second copy of any of the 20 would reach its replica before a later message does: send later ones
        # until each replica has handled one.
        late = 20
        while not all(any(int(t) >= 20 for t in r.gate.done) for r in replicas) and late < 200:
            await connection.publish(subjects.chat_in(tenant), ChatMessageIn(tenant=tenant, session_id="s",
                                                                              token="t", text=str(late)))
            late += 1
            await until(lambda n=late: sum(len(r.gate.done) for r in replicas) >= n)
        handled = [text for r in replicas for text in r.gate.done]
        assert sorted(handled, key=int) == [str(i) for i in range(late)]
        assert all(r.gate.done for r in replicas)  # both replicas took a share
    finally:
        for replica in replicas:
            await replica.stop()


class Ledger:
    """A pull route's handler: fails the first time it sees a message marked `flaky`; the first time it sees one
    marked `cut`, a future it awaits is cancelled under it (as nats-py does to a fetch when its connection goes)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int | None]] = []
        self.failed_once = False
        self.cut_once = False
        self.problems: list[str] = []

    async def handle(self, batch: list[Delivery]) -> None:
        for delivery in batch:
            if delivery.problem:
                self.problems.append(delivery.problem)
                continue
            assert isinstance(delivery.event, ChatMessageIn)
            if delivery.event.text == "flaky" and not self.failed_once:
                self.failed_once = True
                raise RuntimeError("the store is down")
            if delivery.event.text == "cut" and not self.cut_once:
                self.cut_once = True
                waited = asyncio.get_running_loop().create_future()
                waited.cancel()
                await waited
            self.seen.append((delivery.event.text, delivery.stream_seq))


def pull_service(settings: BusSettings, tenant: str, malformed: str = "refuse") -> BusService:
    class Puller(BusService):
        table = RouteTable("puller", (Route(subjects.chat_in(tenant), ChatMessageIn, Ledger.handle,
                                            delivery=Pull(f"puller-{tenant}", batch=10, ack_wait_s=2,
                                                          fetch_timeout_s=0.2), malformed=malformed),))

        async def prepare(self, connection: EventConnection) -> Ledger:
            self.ledger = Ledger()
            return self.ledger

    return Puller(settings)


async def test_a_pull_route_gets_stored_events_and_a_failed_batch_again(settings, connection, tenant):
    for text in ("one", "flaky", "three"):  # stored before the consumer exists: it starts from the beginning
        await connection.publish(subjects.chat_in(tenant), ChatMessageIn(tenant=tenant, session_id="s", token="t",
                                                                          text=text))
    service = pull_service(settings, tenant)
    await service.start()
    try:
        await until(lambda: {"one", "flaky", "three"} <= {text for text, _ in service.ledger.seen}, timeout=15)
        assert service.ledger.failed_once
        assert all(seq is not None for _, seq in service.ledger.seen)
    finally:
        await service.stop()
    info = await connection.js.consumer_info(settings.stream_name, f"puller-{tenant}")
    assert info.num_ack_pending == 0 and info.num_pending == 0  # everything handled was acknowledged


async def test_a_pull_loop_outlives_a_cancellation_it_did_not_ask_for(settings, connection, tenant, caplog):
    service = pull_service(settings, tenant)
    await service.start()
    try:
        for text in ("one", "cut", "after"):
            await connection.publish(subjects.chat_in(tenant), ChatMessageIn(tenant=tenant, session_id="s", token="t",
                                                                              text=text))
        # Before, the loop ended there in silence: "cut" and everything after it was never handled.
        await until(lambda: {"one", "cut", "after"} <= {text for text, _ in service.ledger.seen}, timeout=15)
        assert service.ledger.cut_once
        assert any("pull loop of consumer" in r.getMessage() and "starting it again" in r.getMessage()
                   for r in caplog.records)
    finally:
        await service.stop()


async def test_a_pull_route_refuses_malformed_messages_or_delivers_them_when_asked(settings, connection, tenant):
    errors = await collect(connection, subjects.error(tenant, "puller"))
    await connection.nc.publish(subjects.chat_in(tenant), b"not json")  # core publish: the stream keeps it too
    await connection.publish(subjects.chat_in(tenant), ChatMessageIn(tenant=tenant, session_id="s", token="t",
                                                                      text="good"))
    service = pull_service(settings, tenant)
    await service.start()
    try:
        error = await next_error(errors, subjects.error(tenant, "puller"))
        assert "Invalid JSON" in error.reason
        await until(lambda: [text for text, _ in service.ledger.seen] == ["good"])
        assert service.ledger.problems == []
    finally:
        await service.stop()


def test_permissions_follow_the_route_table():
    table = RouteTable(
        "probe",
        (Route(subjects.CHAT_IN_ALL, ChatMessageIn, accept, queue="probe"),
         Route(subjects.MODEL_USAGE_ALL, None, Ledger.handle, delivery=Pull("probe-usage", reads_back=True))),
        publishes=(subjects.TURN_REQUESTED_ALL,), grants=("stream-setup",))
    publish, subscribe = table.permission_grant("CADUCEUS")
    assert subscribe == [subjects.CHAT_IN_ALL, "caduceus.health.probe"]
    assert {"caduceus.health.probe", "cad.v1.error.*.probe", subjects.TURN_REQUESTED_ALL,
            "$JS.API.CONSUMER.MSG.NEXT.CADUCEUS.probe-usage", "$JS.ACK.CADUCEUS.probe-usage.>",
            "$JS.API.STREAM.MSG.GET.CADUCEUS"} <= set(publish)
    assert not any(subject.startswith("cad.v1.model") for subject in subscribe)  # pulled, not subscribed


def test_a_worker_table_is_a_template_over_its_tenant_and_workspace():
    table = RouteTable("planner", (Route("cad.v1.turn.assigned.{tenant}.{workspace}", ChatMessageIn, accept),),
                       publishes=("cad.v1.chat.reply.{tenant}.*",), worker=True)
    publish, subscribe = table.permission_grant("CADUCEUS")
    assert "cad.v1.turn.assigned.{tenant}.{workspace}" in subscribe
    assert "cad.v1.error.{tenant}.planner" in publish
    bound = table.bound(tenant="acme", workspace="web")
    assert [route.subject for route in bound.routes] == ["cad.v1.turn.assigned.acme.web"]
    assert bound.publishes == ("cad.v1.chat.reply.acme.*",)


def test_a_handler_of_the_wrong_shape_is_refused_when_the_table_is_built():
    async def no_event(deps) -> None: ...

    with pytest.raises(TypeError, match="must take"):
        Route(subjects.CHAT_IN_ALL, ChatMessageIn, no_event)


async def test_readyz_says_what_a_service_waits_for_and_metrics_count_its_messages(settings, connection, tenant):
    import httpx

    from caduceus_embedded.ports import free_port

    class Waiting(ProbeService):
        waiting_for = "waiting for Temporal at 127.0.0.1:1"

        def health(self) -> str:
            return self.waiting_for

    port = free_port()
    service = Waiting(settings.model_copy(update={"http_port": port}))
    await service.start()
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            assert (await http.get("/healthz")).status_code == 200
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json() == {"ready": False, "checks": {"bus": "ok", "service": service.waiting_for}}
            service.waiting_for = "ok"
            assert (await http.get("/readyz")).status_code == 200
            assert service.connection is not None
            await until_routed_from(service, connection)
            await connection.nc.publish(subjects.chat_in(tenant), b"not json")
            await connection.publish(subjects.chat_in(tenant), ChatMessageIn(tenant=tenant, session_id="s", token="t",
                                                                              text="hi"))
            await asyncio.wait_for(service.accepted.get(), WAIT_S)
            metrics = (await http.get("/metrics")).text
            assert f'caduceus_messages_total{{outcome="handled",service="{SERVICE}",subject="cad.v1.chat.in.*"}}' in metrics
            assert f'caduceus_messages_total{{outcome="malformed",service="{SERVICE}",subject="cad.v1.chat.in.*"}}' in metrics
    finally:
        await service.stop()
    with pytest.raises(httpx.ConnectError):  # the endpoint goes with the service
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


async def until_routed_from(service: BusService, connection: EventConnection) -> None:
    from caduceus_embedded.testing import until_routed

    assert service.connection is not None
    await until_routed(service.connection.nc, connection.nc)


async def test_a_stop_does_not_cut_short_a_message_being_handled_one_at_a_time(settings, connection, tenant):
    service = await started(gated_service(settings, tenant, concurrency=1, role="one-at-a-time"), connection)
    for i in range(2):
        await connection.publish(subjects.chat_in(tenant), ChatMessageIn(tenant=tenant, session_id="s", token="t",
                                                                          text=f"in hand {i}"))
    await until(lambda: service.gate.running == 1)  # the first in its handler, the second delivered behind it
    gate = service.gate
    stopping = asyncio.create_task(service.stop())
    assert service.router is not None
    await asyncio.wait_for(service.router.unsubscribed.wait(), WAIT_S)
    gate.release.set()
    await asyncio.wait_for(stopping, WAIT_S)
    assert gate.done == ["in hand 0", "in hand 1"]  # neither cut short nor dropped

