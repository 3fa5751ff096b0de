"""Helpers for tests that drive the audit service: a varied flow of events, a publisher, the service running
in-process, and waiting for a condition. For this repository's tests (like caduceus_embedded.testing)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta

from caduceus_audit.adapters.store import AuditStore
from caduceus_audit.app import AuditService
from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    ChatMessageIn,
    Event,
    SessionGrant,
    SignedGrant,
    Signer,
    ToolCallCompleted,
    TurnRequested,
    WorkerLifecycle,
    subjects,
    utcnow,
)

AWS = "AKIAIOSFODNN7EXAMPLE"
IDENTITY = Signer.generate("identity")
TENANTS = ("acme", "globex", "initech")


def grant_for(tenant: str, session: str) -> SignedGrant:
    now = utcnow()
    grant = SessionGrant(tenant=tenant, workspace="default", user="alice", roles=("member",), channel="cli",
                         session_id=session, issued_at=now, expires_at=now + timedelta(minutes=5))
    return SignedGrant.issue(IDENTITY, grant)


def flow(n: int, tenants: tuple[str, ...] = TENANTS[:2]) -> list[tuple[str, Event]]:
    """n events of several kinds, round-robin over tenants, each with the subject it travels on."""
    events: list[tuple[str, Event]] = []
    for i in range(n):
        tenant, session = tenants[i % len(tenants)], f"s{i % 3}"
        match (i // len(tenants)) % 4:
            case 0:
                event: Event = ChatMessageIn(tenant=tenant, session_id=session, token=f"oidc-token-{i}",
                                             text=f"message {i} with key {AWS}")
                subject = subjects.chat_in(tenant)
            case 1:
                event = TurnRequested(tenant=tenant, message_id=f"m{i}", grant=grant_for(tenant, session), text="hi")
                subject = subjects.turn_requested(tenant)
            case 2:
                event = ToolCallCompleted(tenant=tenant, call_id=f"c{i}", workspace="default", session_id=session,
                                          tool="terminal", status="ok", result=f"password=hunter{i}")
                subject = subjects.tool_completed(tenant, "default")
            case _:
                event = WorkerLifecycle(tenant=tenant, workspace="default", worker_id="w1", role="planner",
                                        state="started")
                subject = subjects.worker_event(tenant, "default")
        events.append((subject, event))
    return events


@asynccontextmanager
async def publisher(nats_url: str) -> AsyncIterator[EventConnection]:
    conn = await EventConnection.connect(BusSettings(nats_url=nats_url), "audit-test-publisher")
    await conn.ensure_stream()
    try:
        yield conn
    finally:
        await conn.close()


@asynccontextmanager
async def running(service: AuditService) -> AsyncIterator[AuditService]:
    """The service as `python -m caduceus_audit` runs it, in this process."""
    await service.start()
    stop = asyncio.Event()
    task = asyncio.create_task(service.consume(stop))
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await service.close()


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


def stored_count(store: AuditStore) -> Callable[[], Awaitable[int]]:
    async def count() -> int:
        return await asyncio.to_thread(store.count)
    return count


def async_equals(get: Callable[[], Awaitable[int]], expected: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await get() == expected
    return check
