"""Helpers for approval tests: policy-signed `approve` decisions, and a listener for what comes back on the bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    ChatNotice,
    Decision,
    ErrorEvent,
    Event,
    SignedDecision,
    Signer,
    ToolCallDecided,
    call_digest,
    ensure_signer,
    new_id,
    parse_event,
    utcnow,
)

TENANT = "acme"


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
