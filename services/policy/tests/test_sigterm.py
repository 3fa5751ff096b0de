"""SIGTERM while policy holds requests: every request that reached it before the signal gets its decision, and the
process exits 0 (a stopping router drains its subscriptions instead of dropping what it holds)."""

from __future__ import annotations

import asyncio
import os
import shutil
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
    SessionGrant,
    SignedGrant,
    ToolCallDecided,
    ToolCallRequested,
    call_digest,
    ensure_signer,
    parse_event,
    subjects,
    utcnow,
)

pytestmark = pytest.mark.timeout(90)
DEFAULT_POLICY = Path(__file__).resolve().parents[3] / "libs/embedded/src/caduceus_embedded/defaults/policy.yaml"
CALLS = 400


def requests(identity: Any) -> list[ToolCallRequested]:
    now = utcnow()
    grant = SignedGrant.issue(identity, SessionGrant(
        tenant="acme", workspace="default", user="alice", roles=("member",), channel="cli", session_id="s-term",
        issued_at=now, expires_at=now + timedelta(minutes=5)))
    made = []
    for i in range(CALLS):
        args = {"command": f"echo {i}"}
        made.append(ToolCallRequested(tenant="acme", grant=grant, workspace="default", session_id="s-term",
                                      tool="terminal", args=args, digest=call_digest(
                                          tenant="acme", workspace="default", session="s-term", tool="terminal",
                                          args=args)))
    return made


async def test_requests_in_hand_at_sigterm_are_all_decided(tmp_path: Path, fresh_nats: Any) -> None:
    shutil.copy(DEFAULT_POLICY, tmp_path / "policy.yaml")
    identity = ensure_signer(tmp_path / "keys", "identity")
    env = {**os.environ, "CADUCEUS_STATE_DIR": str(tmp_path), "CADUCEUS_NATS_URL": fresh_nats.url,
           "CADUCEUS_POLICY_FILE": str(tmp_path / "policy.yaml")}
    process = subprocess.Popen([sys.executable, "-m", "caduceus_policy"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    nc = await nats.connect(fresh_nats.url)
    decided: set[str] = set()

    async def on_decided(msg: Any) -> None:
        event = parse_event(msg.data, expect=ToolCallDecided)
        assert isinstance(event, ToolCallDecided)
        decided.add(event.call_id)

    try:
        await nc.subscribe(subjects.tool_decided("acme"), cb=on_decided)
        for _ in range(150):
            try:
                if (await nc.request("caduceus.health.policy", b"", timeout=0.2)).data == b"ok":
                    break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                await asyncio.sleep(0.1)
        sent = requests(identity)
        for request in sent:  # a burst: policy holds many of them when the signal comes
            await nc.publish(subjects.tool_requested("acme"), request.model_dump_json().encode())
        await settle(nc)  # every request reached the server (and so policy's subscription) before the signal
        process.send_signal(signal.SIGTERM)
        answered_before_stop = len(decided)
        try:
            output = (await asyncio.to_thread(process.communicate, timeout=30))[0].decode()
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError("policy did not stop within 30s of SIGTERM:\n"
                                 + process.communicate()[0].decode()[-4000:]) from None
        assert process.returncode == 0, output[-3000:]
        assert answered_before_stop < CALLS, "policy had answered everything before the signal: nothing was in hand"
        for _ in range(100):  # the last decisions on their way to this (busy) subscriber
            if len(decided) >= CALLS:
                break
            await asyncio.sleep(0.1)
        missing = {r.call_id for r in sent} - decided
        assert not missing, f"{len(missing)} of {CALLS} requests never decided:\n{output[-2000:]}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        await nc.close()
