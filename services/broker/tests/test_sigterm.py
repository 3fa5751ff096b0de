"""SIGTERM while the broker holds decided calls: every call whose request and decision reached it before the signal
is answered (here, denied to its planner), and the process exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
import pytest

from caduceus_bus import settle
from caduceus_contracts import (
    Decision,
    SessionGrant,
    SignedDecision,
    SignedGrant,
    ToolCallCompleted,
    ToolCallDecided,
    ToolCallRequested,
    call_digest,
    ensure_signer,
    parse_event,
    subjects,
    utcnow,
)

pytestmark = pytest.mark.timeout(90)
CALLS = 300
TENANT, WORKSPACE, SESSION = "acme", "default", "s-term"


def calls(identity: Any, policy: Any) -> list[tuple[ToolCallRequested, ToolCallDecided]]:
    now = utcnow()
    grant = SignedGrant.issue(identity, SessionGrant(
        tenant=TENANT, workspace=WORKSPACE, user="alice", roles=("member",), channel="cli", session_id=SESSION,
        issued_at=now, expires_at=now + timedelta(minutes=5)))
    made = []
    for i in range(CALLS):
        args = {"command": f"rm -rf /{i}"}
        digest = call_digest(tenant=TENANT, workspace=WORKSPACE, session=SESSION, tool="terminal", args=args)
        request = ToolCallRequested(tenant=TENANT, grant=grant, workspace=WORKSPACE, session_id=SESSION,
                                    tool="terminal", args=args, digest=digest)
        decision = SignedDecision.issue(policy, Decision(
            tenant=TENANT, workspace=WORKSPACE, session_id=SESSION, call_id=request.call_id, tool="terminal",
            digest=digest, verdict="deny", reason="not here", expires_at=utcnow() + timedelta(minutes=1)))
        made.append((request, ToolCallDecided(tenant=TENANT, call_id=request.call_id, workspace=WORKSPACE,
                                              decision=decision)))
    return made


async def test_calls_in_hand_at_sigterm_are_all_answered(tmp_path: Path, fresh_nats: Any) -> None:
    identity = ensure_signer(tmp_path / "keys", "identity")
    policy = ensure_signer(tmp_path / "keys", "policy")
    env = {**os.environ, "CADUCEUS_STATE_DIR": str(tmp_path), "CADUCEUS_NATS_URL": fresh_nats.url}
    process = subprocess.Popen([sys.executable, "-m", "caduceus_broker"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    nc = await nats.connect(fresh_nats.url)
    answered: dict[str, str] = {}

    async def on_completed(msg: Any) -> None:
        event = parse_event(msg.data, expect=ToolCallCompleted)
        assert isinstance(event, ToolCallCompleted)
        answered[event.call_id] = event.status

    try:
        await nc.subscribe(subjects.tool_completed(TENANT, WORKSPACE), cb=on_completed)
        for _ in range(150):
            try:
                if (await nc.request("caduceus.health.broker", b"", timeout=0.2)).data == b"ok":
                    break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                await asyncio.sleep(0.1)
        sent = calls(identity, policy)
        for request, _decided in sent:
            await nc.publish(subjects.tool_requested(TENANT), request.model_dump_json().encode())
        for _request, decided in sent:
            await nc.publish(subjects.tool_decided(TENANT), decided.model_dump_json().encode())
        await settle(nc)  # everything reached the server (and so the broker's subscriptions) before the signal
        process.send_signal(signal.SIGTERM)
        answered_before_stop = len(answered)
        try:
            output = (await asyncio.to_thread(process.communicate, timeout=30))[0].decode()
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError("the broker did not stop within 30s of SIGTERM:\n"
                                 + process.communicate()[0].decode()[-4000:]) from None
        assert process.returncode == 0, output[-3000:]
        assert answered_before_stop < CALLS, "the broker had answered everything before the signal"
        for _ in range(100):  # the last answers on their way to this (busy) subscriber
            if len(answered) >= CALLS:
                break
            await asyncio.sleep(0.1)
        missing = {request.call_id for request, _ in sent} - set(answered)
        assert not missing, f"{len(missing)} of {CALLS} calls never answered:\n{output[-2000:]}"
        assert set(answered.values()) == {"denied"}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        await nc.close()
