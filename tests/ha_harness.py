"""A steady load of governed tool calls against an embedded stack, and the checks a fault must not break.

Shared by tests/test_broker_lease.py and bench/broker_takeover.py (the fault suite's harness is bench/faults.py).
Each call is a real governed `terminal` call from a planner's gateway: policy decides and signs, the broker
dispatches, the executor runs `echo <call id> >> .ha-ledger` in the workspace. The ledger file is how the
checks see what ran: an id twice is a call executed twice; an id with no decision is a call that ran
without one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

LEDGER = ".ha-ledger"
# The default pack limits terminal calls per user (120 a minute): the load spreads its calls over this many users.
USERS = 40


@dataclass
class CallRecord:
    call_id: str
    sent_at: float
    answered_at: float | None = None
    status: str = ""
    reason: str = ""

    @property
    def latency_s(self) -> float | None:
        return None if self.answered_at is None else self.answered_at - self.sent_at


@dataclass
class Tally:
    """What one stretch of load saw."""

    sent: int = 0
    answered: int = 0
    ok: int = 0
    executed_twice: int = 0
    slowest_s: float = 0.0
    statuses: Counter = field(default_factory=Counter)


class GovernedLoad:
    """Governed calls from a planner gateway of tenant/workspace, issued from threads, recorded one by one."""

    def __init__(self, stack: Any, tenant: str = "acme", workspace: str = "default",
                 decision_s: float = 20.0, completion_s: float = 60.0) -> None:
        self.stack = stack
        self.tenant = tenant
        self.workspace = workspace
        self.decision_s = decision_s
        self.completion_s = completion_s
        self.records: list[CallRecord] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ha-load", daemon=True)
        self.gateway: Any = None
        run = uuid.uuid4().hex[:8]
        self.sessions = [f"ha-{run}-{n}" for n in range(USERS)]
        self._next = itertools.count()

    @property
    def workspace_dir(self) -> Path:
        return self.stack.layout.workspaces / self.tenant / self.workspace

    def start(self) -> None:
        """Start the tenant's worker pair with one real chat turn, then connect a planner gateway."""
        from caduceus_client import ChatClient
        from caduceus_identity.devtoken import mint_dev_token

        async def warm_up() -> None:
            client = await ChatClient.connect(self.stack.info.bus_settings("client"))
            try:
                token = mint_dev_token(self.stack.info.dev_issuer_url, self.tenant, "alice")
                await client.send(tenant=self.tenant, token=token, text="noop warm-up", timeout=120)
            finally:
                await client.close()

        asyncio.run(warm_up())
        self._thread.start()
        self.gateway = asyncio.run_coroutine_threadsafe(self._connect(), self._loop).result(30)

    async def _connect(self) -> Any:
        from caduceus_bus import EventConnection
        from caduceus_contracts import SessionGrant, SignedGrant, ensure_signer, load_keyring, utcnow
        from caduceus_hermes_plugin import GatewayTimeouts, ToolGateway

        keys = self.stack.layout.keys
        signer = ensure_signer(keys, "identity")
        settings = self.stack.worker_bus_settings("planner", self.tenant, self.workspace, "ha-load")
        conn = await EventConnection.connect(settings, "ha-load-planner")
        gateway = ToolGateway(conn, self._loop, tenant=self.tenant, workspace=self.workspace,
                              keyring=load_keyring(keys),
                              timeouts=GatewayTimeouts(self.decision_s, self.completion_s))
        await gateway.start()
        self._grant_for = lambda number, session: SignedGrant.issue(signer, SessionGrant(
            tenant=self.tenant, workspace=self.workspace, user=f"ha-user-{number}", roles=("member",),
            channel="ha-test", session_id=session, issued_at=utcnow(), expires_at=utcnow() + timedelta(hours=1)))
        return gateway

    def call(self) -> CallRecord:
        """One governed call, answered (result, denial or error) or not: recorded either way."""
        record = CallRecord(uuid.uuid4().hex[:12], time.monotonic())
        with self._lock:
            self.records.append(record)
        number = next(self._next) % len(self.sessions)
        session = self.sessions[number]
        # a fresh grant per call, as identity signs one per chat message: each call is a turn of its own, so the
        # pack's per-turn guardrails do not stop the load
        self.gateway.bind_session(session, self._grant_for(number, session))
        outcome = self.gateway.request_call("terminal", {"command": f"echo {record.call_id} >> {LEDGER}"},
                                            session_id=session)
        record.answered_at = time.monotonic()
        record.status, record.reason = outcome.status, outcome.reason or ""
        return record

    def run(self, seconds: float, concurrency: int = 2, during: Any = None) -> list[CallRecord]:
        """Calls from `concurrency` threads for `seconds`; `during()` runs (a fault) once the load is going."""
        first = len(self.records)
        stop = time.monotonic() + seconds

        def worker() -> None:
            while time.monotonic() < stop:
                self.call()

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        if during is not None:
            time.sleep(min(1.0, seconds / 4))
            during()
        for thread in threads:
            thread.join(seconds + self.decision_s * 2 + self.completion_s + 10)
        return self.records[first:]

    def executions(self) -> Counter:
        """How many times each call id ran, from the workspace's ledger."""
        path = self.workspace_dir / LEDGER
        if not path.exists():
            return Counter()
        return Counter(line.strip() for line in path.read_text().splitlines() if line.strip())

    def tally(self, records: list[CallRecord]) -> Tally:
        runs = self.executions()
        tally = Tally(sent=len(records))
        for record in records:
            if record.answered_at is not None:
                tally.answered += 1
                tally.slowest_s = max(tally.slowest_s, record.latency_s or 0.0)
            tally.statuses[record.status or "unanswered"] += 1
            tally.ok += record.status == "ok"
            tally.executed_twice += runs[record.call_id] > 1
        return tally

    def close(self) -> None:
        if self.gateway is not None:
            asyncio.run_coroutine_threadsafe(self.gateway.conn.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


async def stream_count(stack: Any) -> int:
    """Events in the stack's JetStream stream that audit stores as records (all but its checkpoints)."""
    from caduceus_bus import EventConnection

    connection = await EventConnection.connect(stack.bus_settings("operator"), "ha-count", role="operator")
    try:
        name = connection.settings.stream_name
        total = (await connection.js.stream_info(name)).state.messages
        # Audit keeps its own checkpoint events as checkpoints, not as records of the chain.
        checkpoints = (await connection.js.stream_info(name, subjects_filter="cad.v1.audit.checkpoint.>")).state
        return total - sum((checkpoints.subjects or {}).values())
    finally:
        await connection.nc.close()


def stored_equals_stream(stack: Any, timeout: float = 30.0) -> tuple[int, int]:
    """(events in the stream, records audit stored), once they agree or the timeout passes."""
    from caduceus_audit.adapters.store import AuditStore

    store = AuditStore(stack.info.audit_db_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            in_stream, stored = asyncio.run(stream_count(stack)), store.count()
            if in_stream == stored or time.monotonic() > deadline:
                return in_stream, stored
            time.sleep(0.5)
    finally:
        store.close()


# Broker replicas: a second broker process beside the stack's, and who owns a workspace.


def start_second_broker(stack: Any, name: str = "broker-2") -> Any:
    """Another broker process on the stack's bus and state (no health port of its own), once it says ready."""
    import dataclasses

    from caduceus_embedded.services import start_service

    spec = stack.services["broker"].spec
    spec = dataclasses.replace(spec, env={**spec.env, "CADUCEUS_HTTP_PORT": "0"})
    second = start_service(spec, stack.service_env(spec), stack.layout.logs / f"{name}.log")
    wait_until_ready(stack, second)
    return second


def wait_until_ready(stack: Any, second: Any, timeout: float = 60.0) -> None:
    """Both replicas answer `caduceus.health.broker` (the second one said so in its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert second.exit_code() is None, second.log_path.read_text()[-3000:]
        if "broker ready" in second.log_path.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"the second broker did not become ready: {second.log_path.read_text()[-3000:]}")


async def _holder(stack: Any, key: str) -> str | None:
    from caduceus_bus import EventConnection

    conn = await EventConnection.connect(stack.bus_settings("operator"), "lease-test", role="operator")
    try:
        kv = await conn.js.key_value("caduceus_broker_leases")
        try:
            entry = await kv.get(key)
        except Exception:
            return None
        return json.loads(entry.value)["broker"] if entry.value else None
    finally:
        await conn.nc.close()


def holder_pid(stack: Any, tenant: str = "acme", workspace: str = "default") -> int | None:
    """The pid of the broker holding a workspace's lease (a broker's id is host-pid-random)."""
    holder = asyncio.run(_holder(stack, f"{tenant}.{workspace}"))
    return int(holder.rsplit("-", 2)[1]) if holder else None


def parents() -> dict[int, int]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return found


def descendants(pid: int) -> set[int]:
    tree = parents()
    out, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in tree.items() if parent in frontier} - out
        out |= frontier
    return out


def planners_under(pid: int) -> int:
    """Planner processes a broker runs (in their sandboxes, below it in the process tree)."""
    count = 0
    for child in descendants(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        count += argv[1:3] == [b"-m", b"caduceus_broker.planner"]  # the planner itself, not its bwrap or launcher
    return count


