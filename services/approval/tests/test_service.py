"""The approval service on the real bus and the real Temporal dev server."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from caduceus_approval.app import HEALTH_SUBJECT, build
from caduceus_approval.domain import ApprovalAction, workflow_id
from caduceus_approval.settings import ApprovalSettings
from caduceus_approval.starter import approve
from caduceus_bus import EventConnection
from caduceus_contracts import Signer, load_keyring, new_id, subjects
from caduceus_embedded.ports import free_port


def settings_for(nats_url: str, tmp_path: Path, keys_dir: Path, temporal_address: str) -> ApprovalSettings:
    return ApprovalSettings(nats_url=nats_url, state_dir=tmp_path, keys_dir=keys_dir,
                            temporal_address=temporal_address, approval_task_queue=f"approvals-{new_id()}",
                            temporal_retry_s=0.2, temporal_rpc_timeout_s=2.0)


async def health(conn: EventConnection) -> bytes:
    """The service's health answer; b"" while it is not yet subscribed (or still importing)."""
    try:
        return (await conn.nc.request(HEALTH_SUBJECT, b"", timeout=1)).data
    except (NoRespondersError, NatsTimeout):
        return b""


async def wait_health(conn: EventConnection, expected: bytes = b"ok", timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while await health(conn) != expected:
            await asyncio.sleep(0.1)


async def wait_running(client: Client, wf_id: str, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                if (await client.get_workflow_handle(wf_id).describe()).status == WorkflowExecutionStatus.RUNNING:
                    return
            except RPCError:
                pass
            await asyncio.sleep(0.1)


async def test_approve_decision_starts_a_workflow_whose_approval_allows_the_call(
        nats_server, temporal_server, tmp_path, keys_dir, policy_signer: Signer, make_approve, bus) -> None:
    service = build(settings_for(nats_server.url, tmp_path, keys_dir, temporal_server.address))
    await service.start()
    try:
        await wait_health(bus.conn)
        asked = make_approve(policy_signer)
        await bus.conn.publish(subjects.tool_decided("acme"), asked)
        client = await Client.connect(temporal_server.address)
        await wait_running(client, workflow_id("acme", asked.call_id))

        digest = asked.decision.decision.digest
        outcome = await approve(client, "acme", asked.call_id, ApprovalAction(digest, "carol"))
        assert outcome.verdict == "allow"
        published = await bus.verdict_on(asked.call_id)
        decision = published.decision.decision
        assert (decision.verdict, decision.reason, decision.digest) == ("allow", "approved by carol", digest)
        assert published.decision.verify(load_keyring(keys_dir)) == "approval"
    finally:
        await service.stop()


async def test_approve_not_signed_by_policy_is_refused_and_starts_nothing(
        nats_server, temporal_server, tmp_path, keys_dir, policy_signer, make_approve, bus) -> None:
    service = build(settings_for(nats_server.url, tmp_path, keys_dir, temporal_server.address))
    await service.start()
    try:
        await wait_health(bus.conn)
        forged = make_approve(Signer.generate("policy"))  # a "policy" key nobody trusts
        await bus.conn.publish(subjects.tool_decided("acme"), forged)
        error = await asyncio.wait_for(bus.errors.get(), 10)
        assert error.service == "approval" and "is not from policy" in error.reason
        client = await Client.connect(temporal_server.address)
        with pytest.raises(RPCError):
            await client.get_workflow_handle(workflow_id("acme", forged.call_id)).describe()
    finally:
        await service.stop()


async def test_unreachable_temporal_denies_with_the_reason(nats_server, tmp_path, keys_dir, policy_signer,
                                                           make_approve, bus) -> None:
    address = f"127.0.0.1:{free_port()}"
    service = build(settings_for(nats_server.url, tmp_path, keys_dir, address))
    await service.start()
    try:
        await wait_health(bus.conn, f"waiting for Temporal at {address}".encode(), timeout=10)
        asked = make_approve(policy_signer)
        await bus.conn.publish(subjects.tool_decided("acme"), asked)
        published = await bus.verdict_on(asked.call_id)
        decision = published.decision.decision
        assert decision.verdict == "deny"
        assert decision.reason == f"approval service cannot reach Temporal at {address}; denied (fail closed)"
        assert (decision.digest, decision.call_id) == (asked.decision.decision.digest, asked.call_id)
        assert published.decision.verify(load_keyring(keys_dir)) == "approval"
    finally:
        await service.stop()


async def test_service_process_reports_healthy_and_stops_cleanly(nats_server, temporal_server, tmp_path, bus) -> None:
    env = {**os.environ, "CADUCEUS_NATS_URL": nats_server.url, "CADUCEUS_STATE_DIR": str(tmp_path),
           "CADUCEUS_TEMPORAL_ADDRESS": temporal_server.address,
           "CADUCEUS_APPROVAL_TASK_QUEUE": f"approvals-{new_id()}"}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "caduceus_approval", env=env,
                                                   stdout=asyncio.subprocess.DEVNULL,
                                                   stderr=asyncio.subprocess.PIPE)
    try:
        await wait_health(bus.conn)
        assert (tmp_path / "keys" / "approval.pub").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, stderr.decode()[-2000:]
