"""The executor runs a tool only for a valid decision for that exact call: signed, unexpired, unused."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest

from caduceus_broker.settings import BrokerSettings, ModelSettings
from caduceus_broker.workers import WorkerPool
from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    Decision,
    SignedDecision,
    Signer,
    ToolCallCompleted,
    ToolCallDispatched,
    call_digest,
    ensure_signer,
    parse_event,
    subjects,
    utcnow,
)

TENANT, WORKSPACE, SESSION = "acme", "default", "sess-exec"


@pytest.fixture(scope="module")
async def worker_env(nats_server, tmp_path_factory):
    state = tmp_path_factory.mktemp("broker-state")
    policy = ensure_signer(state / "keys", "policy")
    ensure_signer(state / "keys", "identity")
    bus = BusSettings(nats_url=nats_server.url)
    conn = await EventConnection.connect(bus, "test-executor")
    await conn.ensure_stream()
    settings = BrokerSettings(state_dir=state)
    reports: list[tuple[str, str]] = []

    async def report(worker, role, state_, detail):
        reports.append((role, state_))

    pool = WorkerPool(settings, bus, ModelSettings(), conn.nc, report)
    worker = await pool.ensure(TENANT, WORKSPACE)
    completed: asyncio.Queue[ToolCallCompleted] = asyncio.Queue()

    async def on_completed(msg):
        await completed.put(parse_event(msg.data, expect=ToolCallCompleted))

    await conn.subscribe(subjects.tool_completed(TENANT, WORKSPACE), on_completed)
    workspace_dir = settings.workspaces / TENANT / WORKSPACE
    yield conn, policy, completed, workspace_dir, pool, worker, reports
    await pool.stop_all()
    await conn.close()


def dispatched(signer: Signer, tool: str, args: dict, *, decided_args: dict | None = None, verdict: str = "allow",
               ttl: float = 60.0, tenant: str = TENANT) -> ToolCallDispatched:
    digest = call_digest(tenant=tenant, workspace=WORKSPACE, session=SESSION, tool=tool,
                         args=decided_args if decided_args is not None else args)
    event = ToolCallDispatched(tenant=TENANT, call_id=f"call-{utcnow().timestamp()}", workspace=WORKSPACE,
                               session_id=SESSION, tool=tool, args=args,
                               decision=SignedDecision.issue(signer, Decision(
                                   tenant=tenant, workspace=WORKSPACE, session_id=SESSION, call_id="x", tool=tool,
                                   digest=digest, verdict=verdict, reason="test", expires_at=utcnow() + timedelta(seconds=ttl))))
    # The decision must name the call id: re-issue with it.
    decision = event.decision.decision.model_copy(update={"call_id": event.call_id})
    return event.model_copy(update={"decision": SignedDecision.issue(signer, decision)})


async def send_and_wait(conn, completed, event: ToolCallDispatched) -> ToolCallCompleted:
    await conn.publish(subjects.tool_dispatched(TENANT, WORKSPACE), event)
    while True:
        outcome = await asyncio.wait_for(completed.get(), 30)
        if outcome.call_id == event.call_id:
            return outcome


async def test_allowed_call_runs_in_the_workspace(worker_env):
    conn, policy, completed, workspace_dir, *_ = worker_env
    outcome = await send_and_wait(conn, completed, dispatched(policy, "terminal", {"command": "echo ran-here && pwd"}))
    assert outcome.status == "ok", outcome
    output = json.loads(outcome.result)["output"]
    assert "ran-here" in output and str(workspace_dir) in output


async def test_forged_decision_is_refused_and_nothing_runs(worker_env, tmp_path):
    conn, _, completed, workspace_dir, *_ = worker_env
    forger = Signer.generate("policy")  # right issuer name, wrong key
    marker = workspace_dir / "forged.txt"
    outcome = await send_and_wait(conn, completed, dispatched(forger, "terminal", {"command": f"touch {marker}"}))
    assert outcome.status == "refused" and "signature" in outcome.reason
    assert not marker.exists()


async def test_replayed_decision_is_refused(worker_env):
    conn, policy, completed, workspace_dir, *_ = worker_env
    counter = workspace_dir / "count.txt"
    event = dispatched(policy, "terminal", {"command": "echo x >> count.txt"})
    first = await send_and_wait(conn, completed, event)
    assert first.status == "ok"
    replay = event.model_copy(update={"event_id": "replay-" + event.event_id})
    second = await send_and_wait(conn, completed, replay)
    assert second.status == "refused" and "already used" in second.reason
    assert counter.read_text().count("x") == 1


WIPE_HOME = r"""
import os, sqlite3
for top in {os.environ.get("HERMES_HOME"), os.environ.get("HOME")} - {None}:
    for folder, _dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(folder, name)
            try:
                db = sqlite3.connect(path)
                for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                    db.execute(f'DELETE FROM "{table}"')
                db.commit()
                db.close()
                print("emptied", path)
            except Exception:
                pass
            if any(word in name for word in ("decision", "ledger", "used", "sqlite")):
                os.remove(path)
                print("removed", path)
"""


async def test_a_tool_that_wipes_what_it_finds_in_its_home_cannot_make_a_decision_usable_twice(worker_env, tmp_path):
    conn, policy, completed, workspace_dir, *_ = worker_env
    script = workspace_dir / "wipe_home.py"
    script.write_text(WIPE_HOME)
    event = dispatched(policy, "terminal", {"command": "python3 wipe_home.py && echo wiped >> wiped.txt"})
    first = await send_and_wait(conn, completed, event)
    assert first.status == "ok", first
    assert "wiped" in (workspace_dir / "wiped.txt").read_text()
    redelivered = event.model_copy(update={"event_id": "redelivery-" + event.event_id})
    second = await send_and_wait(conn, completed, redelivered)
    assert second.status == "refused" and "already used" in second.reason, second
    assert (workspace_dir / "wiped.txt").read_text().count("wiped") == 1


async def test_expired_decision_is_refused(worker_env):
    conn, policy, completed, workspace_dir, *_ = worker_env
    marker = workspace_dir / "expired.txt"
    outcome = await send_and_wait(conn, completed,
                                  dispatched(policy, "terminal", {"command": f"touch {marker}"}, ttl=-1))
    assert outcome.status == "refused" and "expired" in outcome.reason
    assert not marker.exists()


async def test_changed_arguments_are_refused(worker_env):
    conn, policy, completed, workspace_dir, *_ = worker_env
    marker = workspace_dir / "evil.txt"
    event = dispatched(policy, "terminal", {"command": f"touch {marker}"}, decided_args={"command": "echo harmless"})
    outcome = await send_and_wait(conn, completed, event)
    assert outcome.status == "refused" and "digest mismatch" in outcome.reason
    assert not marker.exists()


async def test_deny_or_approve_decisions_never_run(worker_env):
    conn, policy, completed, workspace_dir, *_ = worker_env
    marker = workspace_dir / "denied.txt"
    for verdict in ("deny", "approve"):
        outcome = await send_and_wait(conn, completed,
                                      dispatched(policy, "terminal", {"command": f"touch {marker}"}, verdict=verdict))
        assert outcome.status == "refused" and verdict in outcome.reason
    assert not marker.exists()


async def test_decision_signed_by_identity_key_is_refused(worker_env, tmp_path):
    conn, _, completed, workspace_dir, *_ = worker_env
    identity = Signer.load("identity", Path(worker_env[4].settings.keys) / "identity.key")
    marker = workspace_dir / "identity.txt"
    outcome = await send_and_wait(conn, completed, dispatched(identity, "terminal", {"command": f"touch {marker}"}))
    assert outcome.status == "refused" and "may not sign" in outcome.reason
    assert not marker.exists()


async def test_crashed_worker_is_reported_and_restarted(worker_env):
    conn, policy, completed, workspace_dir, pool, worker, reports = worker_env
    worker.processes["executor"].kill()
    restarted = await pool.ensure(TENANT, WORKSPACE)
    assert restarted.worker_id != worker.worker_id
    assert ("executor", "crashed") in reports
    outcome = await send_and_wait(conn, completed, dispatched(policy, "terminal", {"command": "echo back"}))
    assert outcome.status == "ok"
