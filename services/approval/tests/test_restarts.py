"""Restarts and outages, each with a service of the test's own (no other approval service shares the bus's
queue group meanwhile): pending approvals survive a restart of the service and of the Temporal dev server
(SQLite file), and an unreachable Temporal denies."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from caduceus_contracts import load_keyring, new_id
from caduceus_embedded.ports import free_port
from caduceus_embedded.servers import start_temporal

from .conftest import TENANT, approval_settings, approval_stack, wait_until
from .test_service import approve_by_api, wait_health

pytestmark = pytest.mark.timeout(180)


async def test_unreachable_temporal_denies_with_the_reason(nats_server, tmp_path, bus) -> None:
    address = f"127.0.0.1:{free_port()}"
    async with approval_stack(tmp_path, nats_server.url, address, wait_for_temporal=False, ui_port=0) as offline:
        await wait_health(bus.conn, f"waiting for Temporal at {address}".encode(), timeout=10)
        asked = offline.ask()
        await asked.publish(bus.conn)
        published = await bus.verdict_on(asked.call_id)
    decision = published.decision.decision
    assert decision.verdict == "deny"
    assert decision.reason == f"approval service cannot reach Temporal at {address}; denied (fail closed)"
    assert (decision.digest, decision.call_id) == (asked.digest, asked.call_id)
    assert published.decision.verify(load_keyring(offline.keys_dir), issuers={"approval"}) == published.decision.decision


async def test_pending_approval_survives_a_restart_of_the_service(nats_server, temporal_server, tmp_path,
                                                                  bus) -> None:
    async with approval_stack(tmp_path, nats_server.url, temporal_server.address) as first:
        asked = first.ask()
        await asked.publish(bus.conn)
        await wait_until(lambda: first.service.inbox.get(TENANT, asked.call_id) is not None)
        queue, ui_port = first.service.settings.approval_task_queue, first.service.settings.ui_port
    # Nothing of the first process's memory is left: the new one rebuilds its inbox from Temporal.
    async with approval_stack(tmp_path, nats_server.url, temporal_server.address, approval_task_queue=queue,
                              ui_port=ui_port) as second:
        await wait_until(lambda: second.service.inbox.get(TENANT, asked.call_id) is not None)
        answered = await approve_by_api(second.ui_url, second.token("dave"), asked.call_id, asked.digest)
        assert answered.status_code == 200, answered.text
    assert (await bus.verdict_on(asked.call_id)).decision.decision.reason == "approved by dave"


async def test_pending_approval_survives_a_restart_of_the_temporal_server(nats_server, tmp_path, bus) -> None:
    port, ui_port = free_port(), free_port()
    db = tmp_path / "temporal" / "temporal.db"
    temporal = start_temporal(port, ui_port, db, tmp_path / "temporal.log")
    try:
        async with approval_stack(tmp_path, nats_server.url, f"127.0.0.1:{port}") as running:
            asked = running.ask()
            await asked.publish(bus.conn)
            await bus.approval_event(asked.call_id, "approval.requested")
            temporal.stop()
            refused = await approve_by_api(running.ui_url, running.token("carol"), asked.call_id, asked.digest)
            assert refused.status_code == 409 and "cannot reach Temporal" in refused.json()["error"]
            temporal = start_temporal(port, ui_port, db, tmp_path / "temporal.log")
            async with asyncio.timeout(60):  # the client reconnects on its own; answers fail until it has
                while (answered := await approve_by_api(running.ui_url, running.token("carol"), asked.call_id,
                                                        asked.digest)).status_code != 200:
                    # An attempt that timed out while Temporal came back may still have been delivered.
                    if "already been decided (approved)" in answered.json()["error"]:
                        break
                    assert "cannot reach Temporal" in answered.json()["error"], answered.text
                    await asyncio.sleep(0.5)
        approved = (await bus.verdict_on(asked.call_id)).decision.decision
        # The approval's own decision names the pack that asked for it, as policy's did.
        assert (approved.verdict, approved.pack_version) == ("allow", "acme-pack.7")
    finally:
        temporal.stop()


async def test_service_process_reports_healthy_and_stops_cleanly(nats_server, temporal_server, tmp_path, bus) -> None:
    settings = approval_settings(tmp_path, nats_server.url, temporal_server.address)
    env = {**os.environ, "CADUCEUS_NATS_URL": nats_server.url, "CADUCEUS_STATE_DIR": str(tmp_path),
           "CADUCEUS_TEMPORAL_ADDRESS": temporal_server.address, "CADUCEUS_UI_PORT": str(settings.ui_port),
           "CADUCEUS_APPROVAL_TASK_QUEUE": f"approvals-{new_id()}"}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "caduceus_approval", env=env,
                                                   stdout=asyncio.subprocess.DEVNULL,
                                                   stderr=asyncio.subprocess.PIPE)
    try:
        await wait_health(bus.conn)
        assert (tmp_path / "keys" / "approval.pub").exists()
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{settings.ui_url}/healthz")).text == "ok"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, stderr.decode()[-2000:]


def test_keys_dir_is_under_the_state_dir_by_default(tmp_path: Path) -> None:
    settings = approval_settings(tmp_path, "nats://127.0.0.1:1", "127.0.0.1:1", keys_dir=None, tenants_file=None)
    assert (settings.keys_dir, settings.tenants_file) == (tmp_path / "keys", tmp_path / "tenants.yaml")
