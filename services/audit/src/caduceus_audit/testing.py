"""Helpers for tests of the audit plane: a varied flow of events, a governed session told as the bus carries it,
recording events the way the consumer does, a publisher, the service running in-process, and waiting for a
condition. For this repository's tests (like caduceus_embedded.testing)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from caduceus_audit.adapters.store import AuditStore
from caduceus_audit.adapters.stream import CONSUMER_NAME, StreamMessage
from caduceus_audit.app import HEALTH_SUBJECT, AuditService
from caduceus_audit.domain.checkpoints import checkpoint_for
from caduceus_audit.domain.entries import AuditEntry, entry_for_message
from caduceus_audit.handlers import entry_for
from caduceus_audit.settings import AuditSettings
from caduceus_bus import BusSettings, EventConnection, Pull
from caduceus_bus.router import consumer_config
from caduceus_contracts import (
    AuditCheckpointed,
    ChatMessageIn,
    ChatReply,
    Decision,
    Event,
    Keyring,
    SessionGrant,
    SignedCheckpoint,
    SignedDecision,
    SignedGrant,
    Signer,
    ToolCallCompleted,
    ToolCallDecided,
    ToolCallDispatched,
    ToolCallRequested,
    TurnRequested,
    WorkerLifecycle,
    call_digest,
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


def quick_settings(nats_url: str, db_url: str, state_dir: Path) -> AuditSettings:
    """The audit service with short waits (fetch, ack, retry), so tests see redeliveries and outages quickly."""
    return AuditSettings(nats_url=nats_url, state_dir=state_dir, audit_db_url=db_url, audit_batch_size=25,
                         audit_fetch_timeout_s=0.2, audit_ack_wait_s=2.0, audit_retry_max_s=0.5)


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
    try:
        yield service
    finally:
        await service.stop()


def spawn_audit(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`python -m caduceus_audit` with these environment variables added, its output appended to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "caduceus_audit"], env={**os.environ, **env},
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


async def wait_healthy(conn: EventConnection, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"audit exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
        with suppress(Exception):
            if (await conn.nc.request(HEALTH_SUBJECT, b"", timeout=0.3)).data == b"ok":
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"audit did not become healthy:\n{log_path.read_text()[-3000:]}")


async def redelivered_after_commit(service: AuditService, conn: EventConnection, expected: int) -> None:
    """A previous run committed a fetched batch of `expected` messages and then lost its acks (a crash between
    commit and ack); start the service and consume until JetStream's redelivery of them is acknowledged."""
    stream = service.settings.stream_name
    await conn.js.add_consumer(stream, consumer_config(subjects.ALL, Pull(CONSUMER_NAME, ack_wait_s=2.0)))
    previous = await conn.js.pull_subscribe_bind(durable=CONSUMER_NAME, stream=stream)
    msgs = await previous.fetch(expected + 10, timeout=2)
    assert len(msgs) == expected
    await asyncio.to_thread(service.store.append_batch, [entry_for(StreamMessage.delivered(m)) for m in msgs])
    for msg in msgs:
        await msg.nak()
    await previous.unsubscribe()

    async def all_acknowledged() -> bool:
        info = await conn.js.consumer_info(stream, CONSUMER_NAME)
        return info.num_ack_pending == 0 and info.num_pending == 0 and info.num_redelivered == 0

    async with running(service):
        await eventually(all_acknowledged, what="redelivered messages acknowledged")


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


# Text that tries to break out of every export format: CEF pipes/equals/backslashes, syslog SD brackets and quotes,
# log-line injection, HTML.
HOSTILE = 'a|b=c\\d\nCEF:0|forged|x act=allow ] "quoted" <script>alert(1)</script>'
POLICY, APPROVAL = Signer.generate("policy"), Signer.generate("approval")
STORY_START = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Published:
    """An event as it travelled: its subject and headers (message id, trace context)."""

    subject: str
    event: Event
    headers: dict[str, str]


def governed_session(tenant: str = "acme", session: str = "s1", *, user: str = "alice",
                     roles: tuple[str, ...] = ("member",), trace_id: str = "4bf92f3577b34da6a3ce929d0e0e4736",
                     start: datetime = STORY_START) -> list[Published]:
    """One chat turn with three tool calls: allowed and run, denied by policy, held for approval then approved."""
    clock = iter(start + timedelta(seconds=n) for n in range(1000))
    grant = SignedGrant.issue(IDENTITY, SessionGrant(tenant=tenant, workspace="default", user=user, roles=roles,
                                                     channel="cli", session_id=session, issued_at=start,
                                                     expires_at=start + timedelta(minutes=5)))
    story: list[tuple[str, Event]] = [
        (subjects.chat_in(tenant), ChatMessageIn(tenant=tenant, session_id=session, token="eyJ.secret.token",
                                                 text=f"tidy up {HOSTILE}", occurred_at=next(clock))),
        (subjects.turn_requested(tenant), TurnRequested(tenant=tenant, message_id="m1", grant=grant,
                                                        text=f"tidy up {HOSTILE}", occurred_at=next(clock))),
    ]
    calls = [("terminal", {"command": f"echo {HOSTILE}"}, [(POLICY, "allow", "members may use workspace tools",
                                                             ("members-use-workspace-tools",), None)], "ok"),
             ("write_file", {"path": "/etc/caduceus-demo.txt", "content": "x"},
              [(POLICY, "deny", "writes must stay inside the workspace", ("writes-stay-in-workspace",), None)],
              "denied"),
             ("patch", {"path": "notes.md", "patch": "+ done"},
              [(POLICY, "approve", "patches need a lead", ("patches-need-approval",), "leads"),
               (APPROVAL, "allow", "approved by carol", (), "leads")], "ok")]
    for n, (tool, args, decisions, outcome) in enumerate(calls, 1):
        digest = call_digest(tenant=tenant, workspace="default", session=session, tool=tool, args=args)
        call_id = f"{session}-call{n}"
        story.append((subjects.tool_requested(tenant), ToolCallRequested(
            tenant=tenant, call_id=call_id, grant=grant, workspace="default", session_id=session, tool=tool, args=args,
            digest=digest, occurred_at=next(clock))))
        last = None
        for signer, verdict, reason, ids, group in decisions:
            moment = next(clock)
            last = SignedDecision.issue(signer, Decision(
                tenant=tenant, workspace="default", session_id=session, call_id=call_id, tool=tool, digest=digest,
                verdict=verdict, reason=reason, policy_ids=ids, pack_version="v7" if signer is POLICY else "",
                approver_group=group, issued_at=moment, expires_at=moment + timedelta(minutes=1)))
            story.append((subjects.tool_decided(tenant), ToolCallDecided(
                tenant=tenant, call_id=call_id, workspace="default", decision=last, occurred_at=moment)))
        if outcome == "ok":
            assert last is not None
            story.append((subjects.tool_dispatched(tenant, "default"), ToolCallDispatched(
                tenant=tenant, call_id=call_id, workspace="default", session_id=session, tool=tool, args=args,
                decision=last, occurred_at=next(clock))))
        story.append((subjects.tool_completed(tenant, "default"), ToolCallCompleted(
            tenant=tenant, call_id=call_id, workspace="default", session_id=session, tool=tool, status=outcome,
            result=f"ran {tool}" if outcome == "ok" else "",
            reason="" if outcome == "ok" else "writes must stay inside the workspace", occurred_at=next(clock))))
    story.append((subjects.chat_reply(tenant, session), ChatReply(tenant=tenant, message_id="m1", session_id=session,
                                                                  text="done, one write was refused",
                                                                  occurred_at=next(clock))))
    return [Published(subject, event, {"Nats-Msg-Id": event.event_id,
                                       "traceparent": f"00-{trace_id}-{n + 1:016x}-01"})
            for n, (subject, event) in enumerate(story)]


def record_published(store: AuditStore, published: list[Published]) -> None:
    """Store events exactly as the audit consumer would have (redacted, chained, trace id kept)."""
    entries = [entry_for_message(p.subject, p.event.model_dump_json().encode(), p.headers, stream_seq=n,
                                 received_at=p.event.occurred_at) for n, p in enumerate(published, 1)]
    store.append_batch(entries)


# --- a signed trail, for verification and retention tests --------------------------------------------------------

AUDIT = Signer.generate("audit")
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def entry(tenant: str, n: int) -> AuditEntry:
    """Record n of a tenant: a tool request n seconds after T0, its text full of characters exports must escape."""
    return AuditEntry(tenant=tenant, event_id=f"{tenant}-{n}", kind="tool.requested",
                      subject=f"cad.v1.tool.requested.{tenant}", session_id="s1", call_id=f"c{n}",
                      occurred_at=T0 + timedelta(seconds=n), trace_id="ab" * 16,
                      body=f'{{"n":{n},"text":"line\\nwith | pipes = and \\\\ slashes"}}')


def keyring() -> Keyring:
    """A keyring trusting AUDIT, the test audit key."""
    ring = Keyring()
    ring.trust("audit", AUDIT.private_key.public_key())
    return ring


def checkpoint(store: AuditStore, tenant: str, prev_seq: int, seq: int) -> AuditCheckpointed:
    """A checkpoint of the tenant's stored records prev_seq+1..seq, signed by AUDIT."""
    signed = SignedCheckpoint.issue(AUDIT, checkpoint_for(tenant, prev_seq, store.hashes(tenant, prev_seq, seq), T0))
    return AuditCheckpointed.of(signed)
