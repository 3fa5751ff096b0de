"""Helpers for approval tests: policy-signed `approve` decisions, and a listener for what comes back on the bus."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from caduceus_approval.app import ApprovalService, build
from caduceus_approval.settings import ApprovalSettings
from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    ApprovalTerms,
    ChatNotice,
    Decision,
    ErrorEvent,
    Event,
    RiskyFact,
    SessionGrant,
    SignedDecision,
    SignedGrant,
    Signer,
    ToolCallDecided,
    ToolCallRequested,
    TurnRequested,
    call_digest,
    ensure_signer,
    new_id,
    parse_event,
    subjects,
    utcnow,
)
from caduceus_directory import DirectorySource
from caduceus_embedded.ports import free_port
from caduceus_identity.adapters.dev_issuer import DevIssuer, DevIssuerServer, TokenRequest, load_or_create_key

TENANT = "acme"
TENANTS_YAML = """\
tenants:
  acme:
    display_name: Acme Corp
    workspaces: [default]
    users:
      alice: {email: alice@acme.example, roles: [member]}
      bob: {email: bob@acme.example, roles: [member]}
      carol: {email: carol@acme.example, roles: [admin]}
      dave: {email: dave@acme.example, roles: [admin]}
  globex:
    display_name: Globex
    workspaces: [default]
    users:
      gina: {email: gina@globex.example, roles: [admin]}
"""


@dataclass(frozen=True)
class AskedCall:
    """What the bus carries when alice's agent asks for a call that needs approval."""

    turn: TurnRequested
    requested: ToolCallRequested
    decided: ToolCallDecided

    @property
    def call_id(self) -> str:
        return self.requested.call_id

    @property
    def digest(self) -> str:
        return self.requested.digest

    async def publish(self, conn: EventConnection) -> None:
        await conn.publish(subjects.turn_requested(TENANT), self.turn)
        await conn.publish(subjects.tool_requested(TENANT), self.requested)
        await conn.publish(subjects.tool_decided(TENANT), self.decided)


def ask(identity: Signer, policy: Signer, *, user: str = "alice", command: str = "rm -rf build",
        terms: ApprovalTerms = ApprovalTerms(groups=("admin",), timeout_s=600), session: str = "sess-1",
        text: str = "please clean up the build directory") -> AskedCall:
    """A turn by `user`, its terminal call, and policy's signed `approve` decision for it."""
    now = utcnow()
    grant = SignedGrant.issue(identity, SessionGrant(
        tenant=TENANT, workspace="default", user=user, roles=("member",), channel="cli", session_id=session,
        issued_at=now, expires_at=now + timedelta(minutes=10)))
    turn = TurnRequested(tenant=TENANT, message_id=new_id(), grant=grant, text=text)
    args = {"command": command}
    digest = call_digest(tenant=TENANT, workspace="default", session=session, tool="terminal", args=args)
    requested = ToolCallRequested(tenant=TENANT, grant=grant, workspace="default", session_id=session,
                                  tool="terminal", args=args, digest=digest)
    decision = Decision(tenant=TENANT, workspace="default", session_id=session, call_id=requested.call_id,
                        tool="terminal", digest=digest, verdict="approve",
                        reason="commands that delete data need an admin's approval",
                        policy_ids=("destructive-commands-need-approval",), pack_version="acme-pack.7",
                        approver_group="admin",
                        quorum=terms.quorum, approval=terms, explanation="rm deletes files",
                        facts=(RiskyFact(name="destructive", value="rm -rf build", argument="command"),),
                        expires_at=now + timedelta(seconds=60))
    decided = ToolCallDecided(tenant=TENANT, call_id=requested.call_id, workspace="default",
                              decision=SignedDecision.issue(policy, decision))
    return AskedCall(turn, requested, decided)


def approve_decision(signer: Signer, *, call_id: str | None = None, args: dict | None = None) -> ToolCallDecided:
    """What policy publishes for a call that needs a person: verdict `approve`, signed by `signer`."""
    call_id = call_id or new_id()
    args = args if args is not None else {"path": "/etc/caduceus-demo.txt", "content": "note from the agent"}
    digest = call_digest(tenant=TENANT, workspace="default", session="sess-1", tool="write_file", args=args)
    decision = Decision(tenant=TENANT, workspace="default", session_id="sess-1", call_id=call_id, tool="write_file",
                        digest=digest, verdict="approve", reason="writes outside the workspace need an admin",
                        policy_ids=("approve-outside-workspace",), approver_group="admin", quorum=1,
                        expires_at=utcnow() + timedelta(seconds=60))
    return ToolCallDecided(tenant=TENANT, call_id=call_id, workspace="default",
                           decision=SignedDecision.issue(signer, decision))


class BusListener:
    """Collects ToolCallDecided (allow/deny), approval events, chat notices and error events for the tenant."""

    def __init__(self, conn: EventConnection) -> None:
        self.conn = conn
        self.decided: dict[str, asyncio.Queue[ToolCallDecided]] = {}
        self.errors: asyncio.Queue[ErrorEvent] = asyncio.Queue()
        self.approvals: list[Event] = []
        self.notices: list[ChatNotice] = []

    def _queue(self, call_id: str) -> asyncio.Queue[ToolCallDecided]:
        return self.decided.setdefault(call_id, asyncio.Queue())

    async def _on_decided(self, msg: Msg) -> None:
        event = parse_event(msg.data, expect=ToolCallDecided, subject=msg.subject)
        assert isinstance(event, ToolCallDecided)
        if event.decision.decision.verdict != "approve":
            await self._queue(event.call_id).put(event)

    async def _on_error(self, msg: Msg) -> None:
        event = parse_event(msg.data, expect=ErrorEvent)
        assert isinstance(event, ErrorEvent)
        await self.errors.put(event)

    async def _on_approval(self, msg: Msg) -> None:
        self.approvals.append(parse_event(msg.data, subject=msg.subject))

    async def _on_notice(self, msg: Msg) -> None:
        notice = parse_event(msg.data, expect=ChatNotice, subject=msg.subject)
        assert isinstance(notice, ChatNotice)
        self.notices.append(notice)

    async def start(self) -> None:
        await self.conn.subscribe(f"cad.v1.tool.decided.{TENANT}", self._on_decided)
        await self.conn.subscribe(f"cad.v1.error.{TENANT}.*", self._on_error)
        await self.conn.subscribe(f"cad.v1.approval.*.{TENANT}", self._on_approval)
        await self.conn.subscribe(f"cad.v1.chat.notice.{TENANT}.>", self._on_notice)

    async def verdict_on(self, call_id: str, timeout: float = 20.0) -> ToolCallDecided:
        return await asyncio.wait_for(self._queue(call_id).get(), timeout)

    async def approval_event(self, call_id: str, kind: str, timeout: float = 20.0) -> Event:
        """The first approval event of `kind` for the call, waiting for it to arrive."""
        async with asyncio.timeout(timeout):
            while True:
                found = [e for e in self.approvals if e.kind == kind and getattr(e, "call_id", None) == call_id]
                if found:
                    return found[0]
                await asyncio.sleep(0.05)

    async def notices_for(self, call_id: str, count: int, timeout: float = 20.0) -> list[ChatNotice]:
        """The first `count` chat notices about the call, in order."""
        async with asyncio.timeout(timeout):
            while len(found := [n for n in self.notices if n.call_id == call_id]) < count:
                await asyncio.sleep(0.05)
        return found[:count]


@pytest.fixture()
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture()
def policy_signer(keys_dir: Path) -> Signer:
    return ensure_signer(keys_dir, "policy")


@pytest.fixture()
def make_approve():
    """`make_approve(signer, call_id=..., args=...)`: a policy-style `approve` ToolCallDecided."""
    return approve_decision


@pytest.fixture()
async def bus(nats_server) -> AsyncIterator[BusListener]:
    conn = await EventConnection.connect(BusSettings(nats_url=nats_server.url), "approval-test")
    await conn.ensure_stream()
    listener = BusListener(conn)
    await listener.start()
    yield listener
    await conn.close()


@dataclass
class ApprovalStack:
    """The approval service (bus, Temporal worker, web UI) beside a dev OIDC issuer for its tenants file."""

    service: ApprovalService
    issuer: DevIssuerServer
    identity: Signer
    policy: Signer
    keys_dir: Path

    @property
    def ui_url(self) -> str:
        assert self.service.settings.ui_url is not None
        return self.service.settings.ui_url

    @property
    def issuer_url(self) -> str:
        return self.issuer.issuer.issuer_url

    def ask(self, **kwargs) -> AskedCall:
        return ask(self.identity, self.policy, **kwargs)

    def token(self, user: str, tenant: str = TENANT) -> str:
        return self.issuer.issuer.mint(TokenRequest(tenant=tenant, user=user))


def approval_settings(base: Path, nats_url: str, temporal_address: str, **overrides) -> ApprovalSettings:
    values = dict(nats_url=nats_url, state_dir=base, keys_dir=base / "keys", tenants_file=base / "tenants.yaml",
                  temporal_address=temporal_address, approval_task_queue=f"approvals-{new_id()}",
                  temporal_retry_s=0.2, temporal_rpc_timeout_s=2.0, ui_port=free_port())
    return ApprovalSettings(**{**values, **overrides})


@contextlib.asynccontextmanager
async def approval_stack(base: Path, nats_url: str, temporal_address: str, *, wait_for_temporal: bool = True,
                         **overrides) -> AsyncIterator[ApprovalStack]:
    (base / "tenants.yaml").write_text(TENANTS_YAML)
    issuer_port = free_port()
    issuer_url = f"http://127.0.0.1:{issuer_port}"
    issuer = DevIssuerServer(DevIssuer(load_or_create_key(base / "keys" / "dev-issuer.pem"), issuer_url, "caduceus",
                                       DirectorySource(base / "tenants.yaml")), "127.0.0.1", issuer_port)
    await issuer.start()
    identity, policy = ensure_signer(base / "keys", "identity"), ensure_signer(base / "keys", "policy")
    service = build(approval_settings(base, nats_url, temporal_address, oidc_issuer_url=issuer_url, **overrides))
    await service.start()
    try:
        if wait_for_temporal:
            async with asyncio.timeout(30):
                await service.temporal.connected.wait()
        yield ApprovalStack(service, issuer, identity, policy, base / "keys")
    finally:
        await service.stop()
        await issuer.stop()


@pytest.fixture(scope="module")
async def approval(tmp_path_factory: pytest.TempPathFactory, nats_server, temporal_server) -> AsyncIterator[ApprovalStack]:
    async with approval_stack(tmp_path_factory.mktemp("approval"), nats_server.url, temporal_server.address) as running:
        yield running


async def wait_until(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)
