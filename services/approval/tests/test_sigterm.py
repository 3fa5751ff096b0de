"""SIGTERM while the approval service holds decisions that need a person: every decision that reached it before the
signal opens its approval (a workflow in Temporal) and the process exits 0; the next process to start announces
every one of them (`approval.requested`), including those whose announcement the stop cut short."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats
import pytest
from temporalio.client import Client

from caduceus_approval.domain import workflow_id
from caduceus_bus import BusSettings, EventConnection, settle
from caduceus_contracts import ensure_signer, new_id, parse_event
from caduceus_embedded.ports import free_port

from .conftest import TENANT, TENANTS_YAML, ask

pytestmark = pytest.mark.timeout(120)
CALLS = 60


async def test_decisions_in_hand_at_sigterm_all_open_their_approval(tmp_path: Path, fresh_nats: Any,
                                                                    temporal_server: Any) -> None:
    (tmp_path / "tenants.yaml").write_text(TENANTS_YAML)
    identity, policy = ensure_signer(tmp_path / "keys", "identity"), ensure_signer(tmp_path / "keys", "policy")
    env = {**os.environ, "CADUCEUS_NATS_URL": fresh_nats.url, "CADUCEUS_STATE_DIR": str(tmp_path),
           "CADUCEUS_TENANTS_FILE": str(tmp_path / "tenants.yaml"),
           "CADUCEUS_TEMPORAL_ADDRESS": temporal_server.address, "CADUCEUS_UI_PORT": str(free_port()),
           "CADUCEUS_APPROVAL_TASK_QUEUE": f"approvals-{new_id()}"}
    conn = await EventConnection.connect(BusSettings(nats_url=fresh_nats.url), "approval-sigterm-test")
    await conn.ensure_stream()
    opened: set[str] = set()
    denied: set[str] = set()

    async def on_approval(msg: Any) -> None:
        event = parse_event(msg.data, subject=msg.subject)
        if event.kind == "approval.requested":
            opened.add(event.call_id)

    async def on_decided(msg: Any) -> None:
        event = parse_event(msg.data, subject=msg.subject)
        if event.decision.decision.verdict == "deny":  # the service could not open it: also an answer
            denied.add(event.call_id)

    process = subprocess.Popen([sys.executable, "-m", "caduceus_approval"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    replacement: subprocess.Popen | None = None
    try:
        await conn.subscribe(f"cad.v1.approval.*.{TENANT}", on_approval)
        await conn.subscribe(f"cad.v1.tool.decided.{TENANT}", on_decided)
        await healthy(conn)
        asked = [ask(identity, policy, command=f"rm -rf build-{i}", session=f"s-term-{i}") for i in range(CALLS)]
        for call in asked:  # who asked and for what first, as the broker's planner does
            await conn.publish(f"cad.v1.tool.requested.{TENANT}", call.requested)
        for call in asked:  # then a burst of decisions: the service holds many when the signal comes
            await conn.publish(f"cad.v1.tool.decided.{TENANT}", call.decided)
        await settle(conn.nc)
        process.send_signal(signal.SIGTERM)
        answered_before_stop = len(opened | denied)
        try:
            output = (await asyncio.to_thread(process.communicate, timeout=60))[0].decode()
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError("approval did not stop within 60s of SIGTERM:\n"
                                 + process.communicate()[0].decode()[-4000:]) from None
        assert process.returncode == 0, output[-3000:]
        assert answered_before_stop < CALLS, "approval answered everything before the signal: nothing was in hand"
        temporal = await Client.connect(temporal_server.address)
        for call in asked:  # each one is a workflow in Temporal: it outlives the process
            await temporal.get_workflow_handle(workflow_id(TENANT, call.requested.call_id)).describe()
        assert not denied, f"{len(denied)} denied although Temporal was up:\n{output[-2000:]}"
        replacement = subprocess.Popen([sys.executable, "-m", "caduceus_approval"], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await healthy(conn)
        for _ in range(600):
            if len(opened) >= CALLS:
                break
            await asyncio.sleep(0.1)
        missing = {c.requested.call_id for c in asked} - opened
        assert not missing, f"{len(missing)} of {CALLS} approvals never announced:\n{output[-2000:]}"
    finally:
        for running in (process, replacement):
            if running is not None and running.poll() is None:
                running.kill()
                running.wait()
        await conn.close()


async def healthy(conn: EventConnection) -> None:
    for _ in range(300):
        try:
            if (await conn.nc.request("caduceus.health.approval", b"", timeout=0.2)).data == b"ok":
                return
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            await asyncio.sleep(0.1)
    raise AssertionError("the approval service did not answer its health check within 60 s")
