"""Worker lifecycle in the broker: start on first use, stop when idle, a cap per tenant, refusals that say why."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from caduceus_broker.settings import BrokerSettings, ModelSettings
from caduceus_broker.workers import WorkerCapped, WorkerPool, WorkerStartFailed
from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import ensure_signer

pytestmark = pytest.mark.timeout(180)


@pytest.fixture()
async def pool_for(nats_server, tmp_path):
    """Make a pool with given settings; every pool made is stopped at the end."""
    for issuer in ("policy", "identity"):
        ensure_signer(tmp_path / "keys", issuer)
    conn = await EventConnection.connect(BusSettings(nats_url=nats_server.url), "test-lifecycle")
    pools: list[WorkerPool] = []
    reports: list[tuple[str, str, str, str]] = []

    async def report(worker, role, state, detail) -> None:
        reports.append((worker.workspace, role, state, detail))

    def make(**settings) -> WorkerPool:
        pool = WorkerPool(BrokerSettings(state_dir=tmp_path, **settings), BusSettings(nats_url=nats_server.url),
                          ModelSettings(), conn.nc, report)
        pools.append(pool)
        return pool

    yield make, reports, tmp_path
    for pool in pools:
        await pool.stop_all()
    await conn.close()


async def test_idle_worker_is_stopped_and_a_busy_one_is_not(pool_for) -> None:
    make, reports, _ = pool_for
    pool = make(idle_timeout_s=1.0)
    idle = await pool.ensure("acme", "idle")
    busy = await pool.ensure("acme", "busy")
    busy.turns["message-in-flight"] = None  # a turn it has not answered yet
    assert ("idle", "planner", "started") in [r[:3] for r in reports]
    await asyncio.sleep(1.2)
    await pool.sweep()
    assert ("idle", "planner", "idle-stopped") in [r[:3] for r in reports]
    assert ("idle", "executor", "idle-stopped") in [r[:3] for r in reports]
    assert all(p.poll() is not None for p in idle.processes.values())
    assert pool.find("acme", "idle") is None and pool.find("acme", "busy") is busy
    assert all(p.poll() is None for p in busy.processes.values())
    again = await pool.ensure("acme", "idle")  # next use starts a fresh pair
    assert again.worker_id != idle.worker_id


async def test_a_tenant_at_its_cap_gets_no_new_worker_and_others_are_unaffected(pool_for) -> None:
    make, reports, _ = pool_for
    pool = make(max_workers_per_tenant=1)
    await pool.ensure("acme", "first")
    with pytest.raises(WorkerCapped) as capped:
        await pool.ensure("acme", "second")
    assert "already runs 1 agent(s), its cap" in str(capped.value)
    assert ("second", "planner", "capped") in [r[:3] for r in reports]
    await pool.ensure("globex", "first")  # the cap is per tenant
    assert pool.find("acme", "second") is None and pool.find("globex", "first") is not None


async def test_a_policy_that_cannot_be_enforced_is_refused_with_the_reason(pool_for) -> None:
    make, reports, state = pool_for
    policy = state / "sandboxes" / "acme" / "leaky.yaml"
    policy.parent.mkdir(parents=True)
    policy.write_text("secrets: {store: vault, inject: [{name: token, file: true}]}\n")
    pool = make()
    with pytest.raises(WorkerStartFailed) as refused:
        await pool.ensure("acme", "leaky")
    assert "leaky.yaml" in str(refused.value) and "vault is not a directory" in str(refused.value)
    assert ("leaky", "planner", "refused") in [r[:3] for r in reports]
    assert pool.find("acme", "leaky") is None


async def test_without_bubblewrap_the_broker_fails_closed(pool_for, monkeypatch) -> None:
    make, reports, _ = pool_for
    monkeypatch.setenv("PATH", "/nonexistent")  # a machine where bwrap is not installed
    pool = make()
    with pytest.raises(WorkerStartFailed) as refused:
        await pool.ensure("acme", "nobwrap")
    assert "apt-get install bubblewrap" in str(refused.value) and "never runs a worker unsandboxed" in str(refused.value)
    assert not pool.workers


async def test_killing_bubblewrap_kills_everything_in_the_sandbox(pool_for) -> None:
    make, _, _ = pool_for
    pool = make()
    worker = await pool.ensure("acme", "doomed")
    executor = worker.processes["executor"]
    inside = executor.worker_pid()
    assert inside is not None
    executor.popen.kill()  # bubblewrap dies (as it would with the broker): nothing it started may survive
    for _ in range(100):
        if not Path(f"/proc/{inside}").exists():
            break
        await asyncio.sleep(0.05)
    assert not Path(f"/proc/{inside}").exists(), "the executor outlived its sandbox's bubblewrap"
