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
    Decision,
    ErrorEvent,
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
    """Collects ToolCallDecided (allow/deny) and error events for the tenant."""

    def __init__(self, conn: EventConnection) -> None:
        self.conn = conn
        self.decided: dict[str, asyncio.Queue[ToolCallDecided]] = {}
        self.errors: asyncio.Queue[ErrorEvent] = asyncio.Queue()

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

    async def start(self) -> None:
        await self.conn.subscribe(f"cad.v1.tool.decided.{TENANT}", self._on_decided)
        await self.conn.subscribe(f"cad.v1.error.{TENANT}.*", self._on_error)

    async def verdict_on(self, call_id: str, timeout: float = 20.0) -> ToolCallDecided:
        return await asyncio.wait_for(self._queue(call_id).get(), timeout)


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
