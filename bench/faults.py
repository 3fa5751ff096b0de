"""Fault injection: the embedded stack with replicas, a steady load of governed calls from two tenants, and one
process killed (SIGKILL) at a time, or PostgreSQL restarted; after each fault the claims of DESIGN.md are checked.

With --postgres (the default where PostgreSQL's binaries are), the stack keeps every store (audit, identity, the
web chat's conversations, MCP pins) in a throwaway local PostgreSQL, as `caduceus up --database-url` does, and
one phase restarts that PostgreSQL (a fast shutdown, down for POSTGRES_DOWN_S, started again on its data).

Every governed call is a `terminal` call `echo <tag> >> fault-ledger.txt` in its tenant's workspace, sent as the
planner sends it (ToolGateway): policy decides and signs, the broker dispatches, the executor verifies the decision
and runs the command, and every event goes to audit. The ledger the tool writes is the record of what ran. Each
phase also sends one chat turn per tenant (identity admits it, the planner asks the model through the inference
gateway). A phase kills one process, keeps the load on for `phase_s`, then pauses it and checks:

- lost: calls sent that got no answer (result, denial or error) at all: must be 0;
- executed twice: tags in a ledger more than once: must be 0;
- ran without a decision: tags in a ledger with no `allow` decision for their call's digest in audit: must be 0;
- every call answered within BOUND_S (the gateway's own limits; the slowest answer is shown);
- `caduceus audit verify` passes, and the stream holds as many events as audit stored;
- time to recover: from the kill until a call sent after it succeeded for every tenant;
- web ports: right after the kill, the approvals UI, web chat, MCP endpoint and inference gateway each answer new
  connections (their replicas share the port).

Short form: tests/test_faults.py. Long form (longer phases, every fault twice):

    .venv/bin/python bench/faults.py [--replicas 2] [--nats-nodes 3] [--phase-s 20] [--rounds 2] [--first-replica 1]
                                     [--postgres | --no-postgres]

It writes bench/results/faults-<date>.md (machine and command recorded) and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from caduceus_audit import AuditStore, verify_trail
from caduceus_bus import EventConnection
from caduceus_client import ApprovalsClient, ChatClient
from caduceus_contracts import SessionGrant, SignedGrant, ensure_signer, load_keyring, parse_event, utcnow
from caduceus_embedded.layout import copy_default_files
from caduceus_embedded.ports import StackPorts
from caduceus_embedded.stack import EmbeddedStack
from caduceus_embedded.testing import PG_BIN, PostgresServer, running_postgres
from caduceus_hermes_plugin import GatewayTimeouts, ToolGateway
from caduceus_identity import mint_dev_token

RESULTS = Path(__file__).parent / "results"
LEDGER = "fault-ledger.txt"
# (tenant, the members who send its calls, one caller each): acme ships with the stack, globex is added here.
TENANTS = (("acme", ("alice", "bob")), ("globex", ("gina", "hank")))
# The shipped policy allows a member 120 terminal calls a minute: each caller stays under it, so every denial
# the table shows is the fault's doing.
CALLER_INTERVAL_S = 0.6
# Every APPROVAL_INTERVAL_S, each tenant's first member also asks for a call policy sends to an admin (`rm -rf`),
# which the tenant's admin approves through the approvals API as soon as it is listed.
APPROVERS = {"acme": "carol", "globex": "greta"}
APPROVAL_INTERVAL_S = 3.0
# The gateway's limits: a decision within 10 s (else denied), a result within 30 s (else an error), no call
# waits for people. Every call is answered within their sum plus its own slack: the bound checked.
TIMEOUTS = GatewayTimeouts(decision_s=10.0, completion_s=30.0, approval_s=30.0)
BOUND_S = TIMEOUTS.decision_s * 2 + TIMEOUTS.approval_s + TIMEOUTS.completion_s + 5
TURN_BOUND_S = 120.0
# What is killed, in order: one replica of each replicated service, then the Temporal dev server (and its restart).
SERVICE_FAULTS = ("policy", "identity", "approval", "audit", "gateway", "mcp", "inference")
# The suite's short form kills the stateless web-facing services' replicas together, in one phase (`a+b+c`): the
# same checks, three phases' worth of restarts in one.
SHORT_SERVICE_FAULTS = ("policy", "identity+gateway+inference", "approval", "audit", "mcp")
# The broker replica holding the lease of the first tenant's workspace (the load's calls and turns run there): the
# other takes the workspace over about one lease TTL later. Not in the suite's short form (it adds the TTL and a
# pair's start to a phase); bench/faults.py runs it after the services.
BROKER_OWNER = "broker-owner"
# The nats-server node leading the event stream, on a 3-node cluster (`--nats-nodes 3`): killed, then started again
# after NATS_DOWN_S on its own store (it catches up from the others). In the suite's short form too.
NATS_LEADER = "nats-leader"
NATS_DOWN_S = 5.0
# PostgreSQL, when the stack keeps its stores there: stopped (every connection dropped), down for a while under the
# load, started again on its data. Audit holds events in the stream meanwhile and stores them once it is back.
POSTGRES = "postgres"
POSTGRES_DOWN_S = 3.0


def add_second_tenant(state_dir: Path) -> None:
    """The shipped tenants plus globex (one workspace, one member, acme's policy), before the stack first starts."""
    state_dir.mkdir(parents=True, exist_ok=True)
    copy_default_files(state_dir)
    path = state_dir / "tenants.yaml"
    tenants = yaml.safe_load(path.read_text())
    tenants["tenants"]["globex"] = {"display_name": "Globex", "workspaces": ["default"], "memory": "user",
                                    "users": {**{user: {"email": f"{user}@globex.example", "roles": ["member"]}
                                                 for user in dict(TENANTS)["globex"]},
                                              APPROVERS["globex"]: {"email": "greta@globex.example",
                                                                    "roles": ["admin"]}}}
    path.write_text(yaml.safe_dump(tenants, sort_keys=False))
    path = state_dir / "policy.yaml"
    policy = yaml.safe_load(path.read_text())
    policy["tenants"]["globex"] = policy["tenants"]["acme"]
    path.write_text(yaml.safe_dump(policy, sort_keys=False))


@contextmanager
def replicated_stack(state_dir: Path, replicas: int, say: Callable[[str], None] = lambda _: None,
                     nats_nodes: int = 1, database_url: str | None = None) -> Iterator[EmbeddedStack]:
    """The embedded stack with `replicas` of each service (the model stays single) on `nats_nodes` nats-servers,
    on free ports, two tenants; every store in `database_url` (PostgreSQL) when given, else SQLite files."""
    add_second_tenant(state_dir)
    stack = EmbeddedStack(state_dir, StackPorts.free(replicas), replicas=replicas, nats_nodes=nats_nodes,
                          database_url=database_url, ready_timeout=180, stop_grace=15, on_progress=say,
                          on_problem=say)
    with stack:
        yield stack


@dataclass
class Sent:
    tenant: str
    tag: str
    sent_at: float
    answered_at: float | None = None
    status: str | None = None
    reason: str = ""
    needs_approval: bool = False


@dataclass
class Load:
    """Steady governed calls from each tenant's members (one caller each), until paused or stopped."""

    stack: EmbeddedStack
    interval_s: float = CALLER_INTERVAL_S
    calls: list[Sent] = field(default_factory=list)
    turns: list[tuple[str, float, str]] = field(default_factory=list)  # tenant, seconds, "ok" or what failed

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="faults-loop", daemon=True)
        self._running = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._gateways: dict[str, ToolGateway] = {}
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self._counter = 0

    def warm_up(self) -> None:
        """One chat turn per tenant: it starts the tenant's planner and executor, as in production.

        Tokens for the turns are minted now: the dev issuer runs in the first identity replica only, which a
        fault kills.
        """
        for tenant, users in TENANTS:
            self._tokens[tenant] = mint_dev_token(self.stack.info.dev_issuer_url, tenant, users[0])
            self._tokens[APPROVERS[tenant]] = mint_dev_token(self.stack.info.dev_issuer_url, tenant,
                                                             APPROVERS[tenant])
            seconds, problem = self.turn(tenant)
            if problem != "ok":
                raise RuntimeError(f"the warm-up turn for {tenant} failed: {problem}")

    def start(self) -> None:
        """Warm up, then start one caller per member."""
        self.warm_up()
        self._loop_thread.start()
        identity = ensure_signer(self.stack.layout.keys, "identity")
        for tenant, users in TENANTS:
            self._gateways[tenant] = self._on_loop(self._gateway(tenant, users, identity)).result(30)
        self._running.set()
        for tenant, users in TENANTS:
            for user in users:
                thread = threading.Thread(target=self._call_forever, args=(tenant, user),
                                          name=f"faults-{tenant}-{user}", daemon=True)
                thread.start()
                self._threads.append(thread)
            asker = threading.Thread(target=self._call_forever, args=(tenant, users[0], True),
                                     name=f"faults-{tenant}-asks", daemon=True)
            asker.start()
            self._threads.append(asker)
        approver = threading.Thread(target=lambda: asyncio.run(self._approve_forever()), name="faults-approvers",
                                    daemon=True)
        approver.start()
        self._threads.append(approver)

    async def _approve_forever(self) -> None:
        """Each tenant's admin approves every call listed for them, through the approvals API (any replica)."""
        clients = {tenant: ApprovalsClient(self.stack.info.approval_ui_url, self._tokens[APPROVERS[tenant]])
                   for tenant, _ in TENANTS}
        try:
            while not self._stopping.is_set():
                for client in clients.values():
                    try:
                        for view in await client.pending():
                            await client.answer(view.call_id, "approve", digest=view.digest)
                    except Exception:  # a replica killed under the request: ask again on the next round
                        pass
                await asyncio.sleep(0.3)
        finally:
            for client in clients.values():
                await client.close()

    def _on_loop(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _gateway(self, tenant: str, users: tuple[str, ...], identity) -> ToolGateway:
        conn = await EventConnection.connect(
            self.stack.worker_bus_settings("planner", tenant, "default", "faults"), f"faults-planner-{tenant}")
        gateway = ToolGateway(conn, self._loop, tenant=tenant, workspace="default",
                              keyring=load_keyring(self.stack.layout.keys), timeouts=TIMEOUTS)
        await gateway.start()
        self._identity = identity
        return gateway

    def _bind_turn(self, gateway: ToolGateway, tenant: str, user: str) -> str:
        """A fresh grant for one call, as identity signs one per chat message: each call is a turn of its own, so
        the pack's per-turn guardrails (a turn's tool calls) do not stop the load; the session stays the member's."""
        grant = SignedGrant.issue(self._identity, SessionGrant(
            tenant=tenant, workspace="default", user=user, roles=("member",), channel="faults",
            session_id=f"faults-{user}", issued_at=utcnow(), expires_at=utcnow() + timedelta(hours=2)))
        gateway.bind_session(f"faults-{user}", grant)
        return f"faults-{user}"

    def _call_forever(self, tenant: str, user: str, needs_approval: bool = False) -> None:
        gateway = self._gateways[tenant]
        interval = APPROVAL_INTERVAL_S if needs_approval else self.interval_s
        while not self._stopping.is_set():
            if not self._running.wait(0.2):
                continue
            with self._lock:
                self._counter += 1
                sent = Sent(tenant, f"{tenant}-{self._counter}", time.monotonic(), needs_approval=needs_approval)
                self.calls.append(sent)
            command = f"echo {sent.tag} >> {LEDGER}"
            if needs_approval:  # destructive: policy asks an admin first
                command = f"rm -rf scratch-{sent.tag} && {command}"
            outcome = gateway.request_call("terminal", {"command": command},
                                           session_id=self._bind_turn(gateway, tenant, user))
            sent.status, sent.reason, sent.answered_at = outcome.status, outcome.reason or "", time.monotonic()
            time.sleep(max(0.0, sent.sent_at + interval - time.monotonic()))

    def turn(self, tenant: str) -> tuple[float, str]:
        """One chat turn (`noop`: one tool call, then a reply); how long it took and "ok", "reply <status>: <text>"
        (answered, but not with a result: an error that says to send it again) or what went wrong (no reply)."""
        async def one() -> str:
            client = await ChatClient.connect(self.stack.info.bus_settings("client"))
            try:
                token = self._tokens[tenant]
                transcript = await client.send(tenant=tenant, token=token, text="noop", timeout=TURN_BOUND_S)
                reply = transcript.reply
                if reply is None or not reply.text:
                    return "no reply text"
                return "ok" if reply.status == "ok" else f"reply {reply.status}: {reply.text[:160]}"
            finally:
                await client.close()

        started = time.monotonic()
        try:
            problem = asyncio.run(one())
        except Exception as exc:  # a turn that fails is a finding of the phase, not a crash of the harness
            problem = f"{type(exc).__name__}: {exc}"
        seconds = time.monotonic() - started
        self.turns.append((tenant, seconds, problem))
        return seconds, problem

    def pause(self, timeout: float = BOUND_S + 10) -> None:
        """Stop sending new calls; return once every call sent has its answer (or the timeout passed)."""
        self._running.clear()
        deadline = time.monotonic() + timeout
        while any(c.answered_at is None for c in self.calls) and time.monotonic() < deadline:
            time.sleep(0.1)

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self.pause()
        self._stopping.set()
        for thread in self._threads:
            thread.join(BOUND_S + 5)
        for gateway in self._gateways.values():
            self._on_loop(gateway.conn.close()).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


@dataclass
class Phase:
    """What one fault did to the calls sent from its kill until the checks."""

    fault: str
    sent: int
    answered: int
    ok: int
    lost: int
    executed_twice: int
    ran_without_decision: int
    ran_after_a_denial: int  # told "denied" or "refused" (nothing ran), and it ran: must be 0
    ran_after_an_error_answer: int
    slowest_s: float
    recovered_s: float | None
    turns: str
    turns_unanswered: int  # turns sent in the phase that got no reply at all
    approved: str  # calls that needed an admin: "ran/asked"
    audit_verify: str
    stream_events: int
    stored_events: int
    not_ok: dict[str, int] = field(default_factory=dict)  # "status: reason" -> calls answered so
    turn_problems: list[str] = field(default_factory=list)
    web_ports: str = "ok"

    @property
    def holds(self) -> bool:
        return (self.lost == 0 and self.executed_twice == 0 and self.ran_without_decision == 0
                and self.slowest_s <= BOUND_S and self.recovered_s is not None and self.audit_verify == "ok"
                and self.stream_events == self.stored_events and self.web_ports == "ok"
                and self.turns_unanswered == 0)


def ledger(stack: EmbeddedStack) -> collections.Counter[str]:
    """How often each tag ran, from the lines the tool wrote into each tenant's workspace."""
    counts: collections.Counter[str] = collections.Counter()
    for tenant, _ in TENANTS:
        path = stack.layout.workspaces / tenant / "default" / LEDGER
        if path.exists():
            counts.update(line.strip() for line in path.read_text().splitlines() if line.strip())
    return counts


def allowed_tags(stack: EmbeddedStack) -> set[str]:
    """Tags whose call has an `allow` decision for the very digest of its request, in the audit trail."""
    store = AuditStore(stack.info.audit_db_url)
    requested: dict[str, tuple[str, str]] = {}  # call_id -> (tag, digest)
    allowed: set[tuple[str, str]] = set()  # (call_id, digest)
    for tenant, _ in TENANTS:
        for record in store.records(tenant=tenant):
            if record.kind == "tool.requested":
                event = parse_event(record.body)
                command = str(event.args.get("command", ""))
                if command.endswith(f">> {LEDGER}"):
                    requested[event.call_id] = (command.split()[-3], event.digest)
            elif record.kind == "tool.decided":
                decision = parse_event(record.body).decision.decision
                if decision.verdict == "allow":
                    allowed.add((decision.call_id, decision.digest))
    return {tag for call_id, (tag, digest) in requested.items() if (call_id, digest) in allowed}


def stream_and_stored(stack: EmbeddedStack, settle_s: float = 60.0) -> tuple[int, int]:
    """Events in the stream and records audit stored, once they agree (or settle_s passed).

    Audit's own checkpoints are not counted: they are kept beside the chains, never appended to one.
    """
    store = AuditStore(stack.info.audit_db_url)

    async def in_stream() -> int:
        conn = await EventConnection.connect(stack.bus_settings("operator"), "faults-count")
        try:
            name = stack.bus_settings().stream_name
            total = (await conn.js.stream_info(name)).state.messages
            checkpoints = await conn.js.stream_info(name, subjects_filter="cad.v1.audit.checkpoint.>")
            return total - sum((checkpoints.state.subjects or {}).values())
        finally:
            await conn.close()

    deadline = time.monotonic() + settle_s
    while True:
        stream, stored = asyncio.run(in_stream()), store.count()
        if stream == stored or time.monotonic() > deadline:
            return stream, stored
        time.sleep(0.5)


def audit_verify(stack: EmbeddedStack) -> str:
    """What `caduceus audit verify` checks (its verify_trail, in this process: a CLI start costs seconds a phase)
    over the stack's audit database: "ok", or its findings. `audit_verify_cli` runs the command itself."""
    store = AuditStore(stack.info.audit_db_url)
    try:
        verdicts = verify_trail(store, load_keyring(stack.layout.keys))
    finally:
        store.close()
    bad = [f"{v.tenant}: {v.reason} (record {v.first_bad_seq})" for v in verdicts if not v.ok]
    return "ok" if not bad else "; ".join(bad)[-800:]


def audit_verify_cli(stack: EmbeddedStack) -> str:
    """`caduceus audit verify` over the stack's audit database: "ok", or its findings."""
    done = subprocess.run([sys.executable, "-m", "caduceus.cli", "audit", "verify", "--db", stack.info.audit_db_url,
                           "--keys-dir", str(stack.layout.keys), "--json"], capture_output=True, text=True, timeout=120)
    return "ok" if done.returncode == 0 else f"exit {done.returncode}: {(done.stdout + done.stderr)[-800:]}"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect (to sign in) is the port's answer
        return None


def web_ports(stack: EmbeddedStack, tries: int = 8) -> str:
    """"ok" when the stack's shared web ports each answer `tries` new connections (any HTTP status below 500,
    redirects not followed): with one replica killed, the kernel hands them to the live one. Else which did not."""
    opener = urllib.request.build_opener(_NoRedirects)
    ports = stack.ports
    urls = {"approvals UI": f"http://127.0.0.1:{ports.approval_ui}/", "web chat": f"http://127.0.0.1:{ports.webchat}/",
            "MCP endpoint": f"http://127.0.0.1:{ports.mcp_endpoint}/mcp/acme",
            "inference": f"http://127.0.0.1:{ports.inference}/v1/models"}
    failed = []
    for what, url in urls.items():
        for _ in range(tries):
            try:
                with opener.open(url, timeout=5) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError as exc:
                failed.append(f"{what}: {exc}")
                break
            if status >= 500:
                failed.append(f"{what}: HTTP {status}")
                break
    return "ok" if not failed else "; ".join(failed)


def lease_owner(stack: EmbeddedStack, tenant: str = TENANTS[0][0], workspace: str = "default") -> str:
    """The service key (`broker`, `broker-2`, ...) of the broker holding a workspace's lease (its id is host-pid-random)."""
    async def holder() -> str | None:
        conn = await EventConnection.connect(stack.bus_settings("operator"), "faults-lease", role="operator")
        try:
            kv = await conn.js.key_value("caduceus_broker_leases")
            entry = await kv.get(f"{tenant}.{workspace}")
            return json.loads(entry.value)["broker"] if entry.value else None
        except Exception:
            return None
        finally:
            await conn.close()

    deadline = time.monotonic() + 30
    while (owner := asyncio.run(holder())) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no broker holds the lease of {tenant}/{workspace}")
        time.sleep(0.5)
    pid = int(owner.rsplit("-", 2)[1])
    return next(key for key, running in stack.services.items() if running.name == "broker" and running.pid == pid)


def stream_leader(stack: EmbeddedStack) -> int:
    """The 0-based number of the nats-server node leading the event stream."""
    async def leader() -> str:
        conn = await EventConnection.connect(stack.bus_settings("operator"), "faults-leader", role="operator")
        try:
            return (await conn.js.stream_info(stack.bus_settings().stream_name)).cluster.leader
        finally:
            await conn.close()

    return int(asyncio.run(leader()).rsplit("-", 1)[1]) - 1


def kill(stack: EmbeddedStack, fault: str, database: PostgresServer | None = None) -> Callable[[], bool]:
    """SIGKILL what the fault names (a key of `caduceus status`; already resolved for the broker owner and the
    stream leader's node), or restart `database` for POSTGRES; returns a check that says when it is back
    (restarted by the stack, or by us)."""
    if fault == POSTGRES:
        if database is None or database.restart is None:
            raise ValueError("the postgres fault needs the stack on a PostgreSQL this harness can restart")
        restarting = threading.Thread(target=database.restart, args=(POSTGRES_DOWN_S,), name="faults-postgres")
        restarting.start()
        return lambda: not restarting.is_alive()
    if fault.startswith("nats-"):
        number = int(fault.removeprefix("nats-")) - 1
        stack.kill_nats_node(number)
        down_until = time.monotonic() + NATS_DOWN_S
        restarted = threading.Event()

        def back() -> bool:  # down for a while under the load, then started again on its own store
            if not restarted.is_set() and time.monotonic() >= down_until:
                stack.start_nats_node(number)
                restarted.set()
            return restarted.is_set()

        return back
    if fault == "temporal":
        stack.kill_temporal()  # held down: the stack's watcher would start it again at once
        time.sleep(2)  # down for a moment: the approval workers lose it and must reconnect
        stack.restart_temporal()
        return lambda: True
    if "+" in fault:  # several processes at once: back when all are
        checks = [kill(stack, one, database) for one in fault.split("+")]
        return lambda: all(check() for check in checks)
    running = stack.services[fault]
    old_pid = running.pid
    running.kill()

    def back() -> bool:
        fresh = stack.services.get(fault)
        return fresh is not None and fresh.pid != old_pid and stack.info.services.get(fault) == fresh.pid

    return back


def run_phase(stack: EmbeddedStack, load: Load, fault: str, phase_s: float,
              say: Callable[[str], None] = print, database: PostgresServer | None = None) -> Phase:
    """Kill, keep the load on for phase_s and until the process is back and every tenant had a call succeed
    (calls in flight at the kill may take up to BOUND_S to be answered), pause, check. The phase's calls are those
    in flight at the kill and those sent after it."""
    with load._lock:
        first = next((i for i, c in enumerate(load.calls) if c.answered_at is None), len(load.calls))
    turns_before = len(load.turns)
    turns_sent = len(TENANTS)
    if fault == BROKER_OWNER:
        fault = f"{lease_owner(stack)} (owner)"
        # Turns in flight at the kill too: their planner dies with the owner, the new owner answers them.
        for tenant, _ in TENANTS:
            threading.Thread(target=load.turn, args=(tenant,), daemon=True).start()
        turns_sent += len(TENANTS)
        time.sleep(0.5)
    if fault == NATS_LEADER:
        fault = f"nats-{stream_leader(stack) + 1} (stream leader)"
    killed_at = time.monotonic()
    back = kill(stack, fault.split(" (")[0], database)
    web = web_ports(stack)  # at once, while the killed replica is down
    say(f"killed {fault}; load continues for {phase_s:g} s")
    for tenant, _ in TENANTS:
        threading.Thread(target=load.turn, args=(tenant,), daemon=True).start()

    def recovered() -> bool:
        return all(any(c.tenant == tenant and c.sent_at >= killed_at and c.status == "ok" for c in load.calls[first:])
                   for tenant, _ in TENANTS)

    while time.monotonic() < killed_at + phase_s or not back() or not recovered():
        if time.monotonic() > killed_at + phase_s + BOUND_S + 60:
            break  # the phase's checks say what did not come back
        time.sleep(0.2)
    turn_deadline = time.monotonic() + TURN_BOUND_S
    while len(load.turns) < turns_before + turns_sent and time.monotonic() < turn_deadline:
        time.sleep(0.2)
    load.pause()
    calls = load.calls[first:]
    # First until audit stored what the stream holds: read earlier, a decision audit had not stored yet made a call
    # that ran look as if it ran without one.
    stream, stored = stream_and_stored(stack)
    ran = ledger(stack)
    allowed = allowed_tags(stack)
    recovered: float | None = None
    for tenant, _ in TENANTS:
        after = [c for c in calls if c.tenant == tenant and c.sent_at >= killed_at and c.status == "ok"]
        first_ok = min((c.answered_at for c in after if c.answered_at is not None), default=None)
        if first_ok is None:
            recovered = None
            break
        recovered = max(recovered or 0.0, first_ok - killed_at)
    answered = [c for c in calls if c.answered_at is not None]
    turns = load.turns[turns_before:]
    phase = Phase(
        fault=fault, sent=len(calls), answered=len(answered), ok=sum(c.status == "ok" for c in calls),
        lost=len(calls) - len(answered),
        executed_twice=sum(1 for c in calls if ran[c.tag] > 1),
        ran_without_decision=sum(1 for c in calls if ran[c.tag] and c.tag not in allowed),
        ran_after_a_denial=sum(1 for c in answered if ran[c.tag] and c.status in ("denied", "refused")),
        ran_after_an_error_answer=sum(1 for c in answered if ran[c.tag] and c.status == "error"),
        slowest_s=max((c.answered_at - c.sent_at for c in answered), default=0.0),
        recovered_s=recovered,
        turns=f"{sum(p == 'ok' for _, _, p in turns)}/{len(turns)}",
        turns_unanswered=turns_sent - sum(p == "ok" or p.startswith("reply ") for _, _, p in turns),
        approved=f"{sum(c.needs_approval and c.status == 'ok' for c in calls)}/{sum(c.needs_approval for c in calls)}",
        web_ports=web,
        turn_problems=[f"{tenant}: {problem[:200]}" for tenant, _, problem in turns if problem != "ok"],
        audit_verify=audit_verify(stack), stream_events=stream, stored_events=stored,
        not_ok=dict(collections.Counter(f"{c.status}: {c.reason[:120]}" for c in answered if c.status != "ok")),
    )
    load.resume()
    return phase


def run(stack: EmbeddedStack, faults: tuple[str, ...], phase_s: float,
        say: Callable[[str], None] = print, database: PostgresServer | None = None) -> list[Phase]:
    """The whole suite on a running stack (its stores in `database` for the POSTGRES fault): each fault in turn,
    under the load."""
    load = Load(stack)
    load.start()
    phases = []
    try:
        for fault in faults:
            phase = run_phase(stack, load, fault, phase_s, say, database)
            say(table([phase]).splitlines()[-1])
            phases.append(phase)
    finally:
        load.stop()
    return phases


def faults_of(replicas: int, rounds: int = 1, first_replica: int = 1, broker: bool = False,
              nats_nodes: int = 1, postgres: bool = False,
              services: tuple[str, ...] = SERVICE_FAULTS) -> tuple[str, ...]:
    """Round r kills replica first_replica + r (of each service, wrapping around; `a+b` kills both at once), then
    Temporal; with `broker`, then the broker replica owning the load's workspace (when there are several); on a NATS
    cluster, then the node leading the event stream; with `postgres`, then restarts PostgreSQL."""
    chosen = []
    for r in range(rounds):
        replica = (first_replica - 1 + r) % replicas + 1
        chosen += ["+".join(one if replica == 1 else f"{one}-{replica}" for one in name.split("+"))
                   for name in services] + ["temporal"]
        if broker and replicas > 1:
            chosen.append(BROKER_OWNER)
        if nats_nodes > 1:
            chosen.append(NATS_LEADER)
        if postgres:
            chosen.append(POSTGRES)
    return tuple(chosen)


def table(phases: list[Phase]) -> str:
    lines = ["| fault | calls sent | answered | lost | executed twice | ran without decision | ran after a denial | "
             "ran after an error answer | slowest answer s | time to recover s | turns ok | turns unanswered | "
             "approved calls ran | web ports | audit verify | stream = stored |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in phases:
        recovered = f"{p.recovered_s:.1f}" if p.recovered_s is not None else "never"
        verify = "ok" if p.audit_verify == "ok" else "FAILED"
        lines.append(f"| {_fault_name(p.fault)} | {p.sent} | {p.answered} | {p.lost} | {p.executed_twice} | "
                     f"{p.ran_without_decision} | {p.ran_after_a_denial} | {p.ran_after_an_error_answer} | "
                     f"{p.slowest_s:.1f} | {recovered} | "
                     f"{p.turns} | {p.turns_unanswered} | {p.approved} | "
                     f"{'ok' if p.web_ports == 'ok' else 'FAILED'} | {verify} | "
                     f"{p.stream_events} = {p.stored_events} |")
    return "\n".join(lines)


def answers_not_ok(phases: list[Phase]) -> str:
    """The answers that were a denial or an error, by fault: what a requester was told instead of a result."""
    lines = [f"- {_fault_name(p.fault)}: {count} x {what}" for p in phases for what, count in sorted(p.not_ok.items())]
    lines += [f"- {_fault_name(p.fault)}: chat turn failed, {problem}" for p in phases for problem in p.turn_problems]
    lines += [f"- {_fault_name(p.fault)}: web ports: {p.web_ports}" for p in phases if p.web_ports != "ok"]
    return "\n".join(lines) or "- none: every call got its result"


def _fault_name(fault: str) -> str:
    return f"restart {fault} ({POSTGRES_DOWN_S:g} s down)" if fault == POSTGRES else f"kill -9 {fault}"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), "?")
    return (f"{os.cpu_count()} cores ({cpu}), {int(mem) // 1024 // 1024} GiB, {platform.platform()}, "
            f"Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=2, help="processes of each service")
    parser.add_argument("--phase-s", type=float, default=20.0, help="seconds of load after each kill")
    parser.add_argument("--rounds", type=int, default=2, help="times through the faults (each round kills the "
                                                              "next replica)")
    parser.add_argument("--first-replica", type=int, default=1, help="the replica the first round kills")
    parser.add_argument("--nats-nodes", type=int, default=3, help="nats-servers in the bus's cluster (1: a single "
                                                                 "server, and no NATS fault)")
    parser.add_argument("--postgres", action=argparse.BooleanOptionalAction, default=(PG_BIN / "initdb").exists(),
                        help="keep every store in a throwaway local PostgreSQL and restart it once a round (default: "
                             f"on when PostgreSQL's binaries are in {PG_BIN}, CADUCEUS_PG_BIN)")
    parser.add_argument("--faults", default="", help="comma-separated processes to kill instead (e.g. `broker`, "
                                                     "`policy-2,temporal`), as `caduceus status` names them, or "
                                                     f"`{BROKER_OWNER}`: the broker holding the load's workspace, "
                                                     f"`{NATS_LEADER}`: the node leading the event stream, "
                                                     f"`{POSTGRES}`: restart PostgreSQL (with --postgres)")
    options = parser.parse_args()
    os.environ.pop("CADUCEUS_MODEL_BASE_URL", None)  # the scripted model
    os.environ.setdefault("CADUCEUS_AUDIT_CHECKPOINT_INTERVAL_S", "2")
    say = lambda line: print(f"  {line}", file=sys.stderr)  # noqa: E731
    started = time.monotonic()
    with contextlib.ExitStack() as running:
        database = running.enter_context(running_postgres()) if options.postgres else None
        url = running.enter_context(database.database("caduceus")) if database else None
        stack = running.enter_context(replicated_stack(Path(tempfile.mkdtemp(prefix="bench-faults-")),
                                                       options.replicas, say, nats_nodes=options.nats_nodes,
                                                       database_url=url))
        chosen = (tuple(options.faults.split(",")) if options.faults
                  else faults_of(options.replicas, options.rounds, options.first_replica, broker=True,
                                 nats_nodes=options.nats_nodes, postgres=options.postgres))
        phases = run(stack, chosen, options.phase_s, say, database)
    lines = [
        "# Fault injection: kill -9 under a steady load of governed calls",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `.venv/bin/python bench/faults.py --replicas {options.replicas} --phase-s {options.phase_s:g} "
        f"--rounds {options.rounds} --first-replica {options.first_replica} --nats-nodes {options.nats_nodes} "
        f"{'--postgres' if options.postgres else '--no-postgres'}"
        + (f" --faults {options.faults}`" if options.faults else "`"),
        f"- the embedded stack, {options.replicas} replicas of each service (the brokers too), on "
        f"{options.nats_nodes} nats-server{'s' if options.nats_nodes > 1 else ''}, stores in "
        f"{'PostgreSQL 15 (local, fsync off)' if options.postgres else 'SQLite files'}; tenants "
        f"{', '.join(t for t, _ in TENANTS)}, one caller per member ({sum(len(u) for _, u in TENANTS)}), each at "
        f"most one call per {CALLER_INTERVAL_S:g} s, and per tenant one call every {APPROVAL_INTERVAL_S:g} s that an "
        f"admin approves; every call answered within {BOUND_S:g} s "
        f"(the gateway's limits); run took {time.monotonic() - started:.0f} s",
        "",
        table(phases),
        "",
        "Answers that were not a result:",
        "",
        answers_not_ok(phases),
        "",
        "How to read it: each row is one SIGKILL (or PostgreSQL's restart), with the load on for the phase. lost, "
        "executed twice, ran without decision and ran after a denial (its requester told it was denied or refused, "
        "so nothing ran) must be 0; ran after an error answer counts calls whose requester was told of an error "
        "that says the call may have run (taken up, no result in time) while it ran once. time to recover is from "
        "the kill until a call sent after it succeeded for every tenant.",
    ]
    report = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"faults-{datetime.now(UTC):%Y-%m-%d}.md"
    out.write_text(report)
    print(report)
    print(f"written to {out}")
    sys.exit(0 if all(p.holds for p in phases) else 1)


if __name__ == "__main__":
    main()
