"""The locked-down bus, attacked with real credentials on a real nats-server configured from permissions.yaml.

Every forbidden publish is checked twice: the server reports a permissions violation to the
offender, and a spy allowed to read everything never receives the message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.js.errors import NoStreamResponseError

from caduceus_bus import (
    BusAuthority,
    BusSettings,
    CallClaims,
    EventConnection,
    PermissionsError,
    WorkerCredentialIssuer,
    ensure_used_decisions,
    load_permissions,
)
from caduceus_bus.permissions import PermissionFile, Role, covers
from caduceus_contracts import subjects
from caduceus_embedded.ports import free_port
from caduceus_embedded.servers import ServerProcess, start_nats
from caduceus_embedded.testing import RecordingClient, connect_recording_errors

PERMISSIONS = load_permissions()
# The shipped file plus a test-only role that may read every event, to see what got through.
WITH_SPY = PERMISSIONS.model_copy(update={"services": {**PERMISSIONS.services,
                                                       "spy": Role(subscribe=("cad.v1.>", "caduceus.>"))}})


@dataclass
class SecuredBus:
    url: str
    authority: BusAuthority
    issuer: WorkerCredentialIssuer
    directory: Path
    server: ServerProcess


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBus]:
    base = tmp_path_factory.mktemp("secured-nats")
    authority = BusAuthority(base / "keys", WITH_SPY)
    config = authority.server_config()
    port = free_port()
    server = start_nats(port, base / "store", base / "nats.log", config_file=config)
    issuer = WorkerCredentialIssuer.load(authority.worker_signing())
    yield SecuredBus(f"nats://127.0.0.1:{port}", authority, issuer, base, server)
    server.stop()


@pytest.fixture()
async def connect(bus: SecuredBus) -> AsyncIterator:
    opened: list[RecordingClient] = []

    async def as_role(role: str, tenant: str = "acme", workspace: str = "default") -> RecordingClient:
        if role in WITH_SPY.workers:
            credential = bus.issuer.issue(role, tenant, workspace, "w1")
            path = bus.directory / f"{role}-{tenant}-{workspace}.creds"
            path.write_text(credential.text)
        else:
            path = bus.authority.service_credentials(role)
        client = await connect_recording_errors(bus.url, BusSettings(nats_url=bus.url, nats_credentials=path))
        opened.append(client)
        return client

    yield as_role
    for client in opened:
        await client.nc.close()


class Spy:
    """Everything the spy sees on cad.v1."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes]] = []

    async def on(self, msg) -> None:
        self.seen.append((msg.subject, msg.data))

    def got(self, subject: str) -> bool:
        return any(s == subject for s, _ in self.seen)


@pytest.fixture()
async def spy(connect) -> Spy:
    client = await connect("spy")
    watcher = Spy()
    await client.nc.subscribe("cad.v1.>", cb=watcher.on)
    await client.nc.flush()
    return watcher


async def refused_connection(bus: SecuredBus, **options) -> str:
    with pytest.raises(Exception) as refused:
        await nats.connect(bus.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3, **options)
    return str(refused.value)


async def test_a_client_without_a_credential_cannot_connect(bus: SecuredBus) -> None:
    assert "authorization violation" in (await refused_connection(bus)).lower()


async def test_a_credential_from_another_authority_cannot_connect(bus: SecuredBus, tmp_path: Path) -> None:
    stranger = BusAuthority(tmp_path / "other", PERMISSIONS)
    forged = stranger.service_credentials("policy")
    reason = await refused_connection(bus, user_credentials=str(forged))
    assert "authorization violation" in reason.lower()


async def test_a_worker_cannot_publish_a_decision(connect, spy: Spy) -> None:
    planner = await connect("planner")
    executor = await connect("executor")
    for worker in (planner, executor):
        await worker.nc.publish(subjects.tool_decided("acme"), b'{"verdict": "allow"}')
    assert await planner.violations() and await executor.violations()
    assert not spy.got(subjects.tool_decided("acme"))


async def test_identity_cannot_publish_a_decision_but_policy_and_approval_can(connect, spy: Spy) -> None:
    identity = await connect("identity")
    await identity.nc.publish(subjects.tool_decided("acme"), b"forged")
    assert "cad.v1.tool.decided.acme" in " ".join(await identity.violations())
    for role in ("policy", "approval"):
        decider = await connect(role)
        await decider.nc.publish(subjects.tool_decided("acme"), role.encode())
        assert await decider.violations() == []
    decided = lambda: sorted(data for s, data in spy.seen if s == subjects.tool_decided("acme"))  # noqa: E731
    async with asyncio.timeout(5):
        while len(decided()) < 2:
            await asyncio.sleep(0.01)
    assert decided() == [b"approval", b"policy"]  # identity's forgery was refused before these were sent


def test_only_policy_and_approval_may_publish_decisions_in_the_shipped_file() -> None:
    assert sorted(PERMISSIONS.roles_publishing(subjects.tool_decided("acme"))) == ["approval", "policy"]
    assert PERMISSIONS.roles_publishing(subjects.tool_dispatched("acme", "default")) == ["broker"]
    assert PERMISSIONS.roles_publishing(subjects.turn_requested("acme")) == ["identity"]


async def test_a_worker_cannot_publish_on_another_tenants_subjects(connect, spy: Spy) -> None:
    planner = await connect("planner", "acme")
    await planner.nc.publish(subjects.tool_requested("globex"), b"{}")
    await planner.nc.publish(subjects.chat_reply("globex", "s1"), b"{}")
    executor = await connect("executor", "acme")
    await executor.nc.publish(subjects.tool_completed("globex", "default"), b"{}")
    await executor.nc.publish(subjects.tool_completed("acme", "research"), b"{}")
    assert len(await planner.violations()) == 2 and len(await executor.violations()) == 2
    assert not [s for s, _ in spy.seen if "globex" in s or "research" in s]


async def test_a_worker_cannot_subscribe_to_another_tenant_or_workspace(connect) -> None:
    planner = await connect("planner", "acme", "default")
    broker = await connect("broker")
    received: list[str] = []

    async def on(msg) -> None:
        received.append(msg.subject)

    for subject in (subjects.turn_assigned("globex", "default"), subjects.turn_assigned("acme", "research"),
                    subjects.tool_decided("globex"), "cad.v1.>", "_INBOX.>", "_INBOX.policy.>"):
        await planner.nc.subscribe(subject, cb=on)
    assert len(await planner.violations()) == 6
    own: asyncio.Queue = asyncio.Queue()

    async def on_own(msg) -> None:
        await own.put(msg.data)

    await planner.nc.subscribe(subjects.turn_assigned("acme", "default"), cb=on_own)
    async with asyncio.timeout(5):  # the planner's own subscription is routed once one of these arrives
        while own.empty():
            await broker.nc.publish(subjects.turn_assigned("acme", "default"), b"ready")
            await asyncio.sleep(0.01)
    await broker.nc.publish(subjects.turn_assigned("globex", "default"), b"{}")
    await broker.nc.publish(subjects.turn_assigned("acme", "research"), b"{}")
    # Sent last on the same connection: once it arrives, anything the planner could get of the two has arrived.
    await broker.nc.publish(subjects.turn_assigned("acme", "default"), b"last")
    async with asyncio.timeout(5):
        while await own.get() != b"last":
            pass
    assert received == []


async def test_a_worker_does_its_own_job(bus: SecuredBus, connect) -> None:
    planner = await connect("planner", "acme", "default")
    broker = await connect("broker")
    turns: asyncio.Queue = asyncio.Queue()

    async def on_turn(msg) -> None:
        await turns.put(msg.data)

    await planner.nc.subscribe(subjects.turn_assigned("acme", "default"), cb=on_turn)
    await planner.nc.flush()
    await broker.nc.publish(subjects.turn_assigned("acme", "default"), b"turn")
    assert await asyncio.wait_for(turns.get(), 3) == b"turn"
    planner_bus = EventConnection(planner.nc, BusSettings(nats_url=bus.url))
    admin = await connect("operator")
    await EventConnection(admin.nc, BusSettings(nats_url=bus.url)).ensure_stream()
    ack = await planner_bus.js.publish(subjects.tool_requested("acme"), b"request")  # stored, acknowledged
    assert ack.stream == "CADUCEUS"
    assert await planner.violations() == []


async def test_an_executor_cannot_read_the_planners_turns(connect) -> None:
    executor = await connect("executor", "acme", "default")
    await executor.nc.subscribe(subjects.turn_assigned("acme", "default"))
    await executor.nc.publish(subjects.tool_requested("acme"), b"{}")
    assert len(await executor.violations()) == 2


async def test_only_the_operator_may_change_the_event_stream(bus: SecuredBus, connect) -> None:
    admin = await connect("operator")
    await EventConnection(admin.nc, BusSettings(nats_url=bus.url)).ensure_stream()
    for role in ("planner", "broker", "identity"):
        client = await connect(role)
        js = client.nc.jetstream(timeout=1)
        with pytest.raises((TimeoutError, NoStreamResponseError, nats.errors.Error)):
            await js.delete_stream("CADUCEUS")
        assert await client.violations(), role
    info = await admin.nc.jetstream().stream_info("CADUCEUS")
    assert info.config.name == "CADUCEUS"


async def test_the_audit_credential_reads_the_stream_through_its_consumer_only(bus: SecuredBus, connect) -> None:
    admin = await connect("operator")
    await EventConnection(admin.nc, BusSettings(nats_url=bus.url)).ensure_stream()
    audit = await connect("audit")
    js = audit.nc.jetstream(timeout=2)
    from nats.js.api import AckPolicy, ConsumerConfig

    await js.add_consumer("CADUCEUS", ConsumerConfig(name="audit", durable_name="audit", filter_subject="cad.v1.>",
                                                     ack_policy=AckPolicy.EXPLICIT))
    assert await audit.violations() == []
    with pytest.raises((TimeoutError, nats.errors.Error)):
        await js.add_consumer("CADUCEUS", ConsumerConfig(name="thief", durable_name="thief"))
    await audit.nc.publish(subjects.tool_decided("acme"), b"forged")
    assert len(await audit.violations()) == 2


def test_a_worker_subject_outside_its_tenant_is_refused_on_load(tmp_path: Path) -> None:
    path = tmp_path / "permissions.yaml"
    path.write_text("stream: CADUCEUS\nservices: {}\nworkers:\n  planner:\n    publish: [cad.v1.tool.requested.*]\n")
    with pytest.raises(PermissionsError) as refused:
        load_permissions(path)
    assert "must name {tenant} in its tenant position" in str(refused.value)


def test_the_shipped_file_confines_every_worker_subject_to_its_tenant() -> None:
    for role in PERMISSIONS.workers:
        grant = PERMISSIONS.worker_grant(role, "acme", "default")
        for subject in [*grant.publish, *grant.subscribe]:
            if subject.startswith("cad.v1."):
                assert subjects.tenant_of(subject.replace("*", "s1")) == "acme", (role, subject)
        assert not any(covers(subject, subjects.tool_decided("acme")) for subject in grant.publish), role


@pytest.mark.parametrize(("pattern", "subject", "expected"), [
    ("cad.v1.tool.decided.*", "cad.v1.tool.decided.acme", True),
    ("cad.v1.tool.decided.*", "cad.v1.tool.decided.acme.x", False),
    ("cad.v1.>", "cad.v1.tool.decided.acme", True),
    ("cad.v1.tool.*", "cad.v1.>", False),
    ("cad.v1.tool.>", "cad.v1.tool.*.acme", True),
])
def test_subject_patterns_cover_what_nats_would_match(pattern: str, subject: str, expected: bool) -> None:
    assert covers(pattern, subject) is expected


def test_a_permission_file_cannot_give_a_service_a_placeholder() -> None:
    with pytest.raises(ValueError, match="only workers have them"):
        PermissionFile.model_validate({"stream": "CADUCEUS",
                                       "services": {"policy": {"publish": ["cad.v1.tool.decided.{tenant}"]}}})


async def test_only_the_broker_may_take_a_workspace_lease(bus: SecuredBus, connect) -> None:
    """A worker that could write `caduceus_broker_leases` could keep its own workspace from being taken over
    (or hand another to a broker of its choosing): only the broker's credential reaches the bucket."""
    from nats.js.api import KeyValueConfig

    broker = await connect("broker")
    kv = await broker.nc.jetstream().create_key_value(KeyValueConfig(bucket="caduceus_broker_leases", ttl=30))
    await kv.create("acme.default", b'{"broker": "replica-1"}')
    for role in ("planner", "executor"):
        worker = await connect(role)
        await worker.nc.publish("$KV.caduceus_broker_leases.acme.default", b'{"broker": "mine"}')
        await worker.nc.publish("$JS.API.STREAM.PURGE.KV_caduceus_broker_leases", b"{}")
        assert len(await worker.violations()) == 2, role
    assert (await kv.get("acme.default")).value == b'{"broker": "replica-1"}'
    assert await broker.violations() == []


async def test_the_broker_reads_back_the_subjects_it_routes_and_nothing_else(bus: SecuredBus, connect) -> None:
    """A starting broker reads back unanswered turns and calls (caduceus_broker.catch_up): its credential creates a
    consumer filtered on one of its routes' subjects, never one over the rest of the stream (audit, approvals)."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    admin = await connect("operator")
    await EventConnection(admin.nc, BusSettings(nats_url=bus.url)).ensure_stream()
    broker = await connect("broker")
    js = broker.nc.jetstream(timeout=2)

    def reading(name: str, subject: str | None) -> ConsumerConfig:
        return ConsumerConfig(name=name, filter_subject=subject, deliver_subject=broker.nc.new_inbox(),
                              deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=5.0)

    await js.add_consumer("CADUCEUS", reading("broker-catch-up-1", subjects.TURN_REQUESTED_ALL))
    assert await broker.violations() == []
    for name, subject in (("broker-catch-up-2", "cad.v1.audit.>"), ("broker-catch-up-3", None)):
        with pytest.raises((TimeoutError, nats.errors.Error)):
            await js.add_consumer("CADUCEUS", reading(name, subject))
    assert len(await broker.violations()) == 2


async def test_a_planner_closes_its_own_calls_and_writes_nothing_else_in_the_ledger(bus: SecuredBus, connect) -> None:
    """A planner that stops waiting for a decision closes the call (caduceus_bus.claims). Its credential reaches
    its own tenant/workspace's call keys only: not a decision's key (it could use up a decision), not another
    workspace's calls (it could keep them from running), and it cannot take the bucket down."""
    broker = await connect("broker")
    await ensure_used_decisions(broker.nc.jetstream())
    planner = await connect("planner", "acme", "default")
    claims = CallClaims(planner.nc.jetstream(timeout=2), within_s=1)
    assert await claims.close("acme", "default", "c-1")
    assert not await claims.close("acme", "default", "c-1")  # closed once: the second write is refused
    for subject in ("$KV.caduceus_used_decisions.acme.default.d-1",
                    "$KV.caduceus_used_decisions.acme.other.call.c-2",
                    "$KV.caduceus_used_decisions.globex.default.call.c-3",
                    "$JS.API.STREAM.PURGE.KV_caduceus_used_decisions"):
        await planner.nc.publish(subject, b"closed")
    assert len(await planner.violations()) == 4
    mcp = CallClaims((await connect("mcp")).nc.jetstream(timeout=2), within_s=1)
    assert await mcp.take("globex", "default", "c-3", "d-9")  # the MCP gateway takes calls of every tenant


async def test_the_mcp_endpoint_shares_its_calls_in_progress_and_reads_back_their_answers(
        bus: SecuredBus, connect) -> None:
    """Replicas of the MCP endpoint record their waiting calls in `caduceus_mcp_calls` and read back a call's
    decisions and outcome (caduceus_mcp.shared_calls): its credential reaches both, and a worker's reaches neither."""
    from nats.js.api import KeyValueConfig

    from caduceus_bus.read_back import read_back

    admin = await connect("operator")
    await EventConnection(admin.nc, BusSettings(nats_url=bus.url)).ensure_stream()
    mcp = await connect("mcp")
    js = mcp.nc.jetstream(timeout=2)
    kv = await js.create_key_value(KeyValueConfig(bucket="caduceus_mcp_calls", ttl=60))
    await kv.create("acme.default.action", b'{"call_id": "c-1"}')
    assert (await kv.get("acme.default.action")).value == b'{"call_id": "c-1"}'
    await read_back(mcp.nc, js, "CADUCEUS", 60, (subjects.tool_completed("acme", "default"),
                                                 subjects.tool_decided("acme")))
    assert await mcp.violations() == []
    planner = await connect("planner")
    await planner.nc.publish("$KV.caduceus_mcp_calls.acme.default.action", b'{"call_id": "mine"}')
    assert len(await planner.violations()) == 1
