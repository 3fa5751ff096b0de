"""Messages no tenant owns, against the real nats-server, SQLite and `python -m caduceus_audit`: they are kept in
the `_system` chain, which is checkpointed, verified and exported like any tenant's, and they never stop the
audit service."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus_audit import AuditStore
from caduceus_audit.testing import eventually, flow, publisher, spawn_audit, wait_healthy
from caduceus_contracts import subjects

pytestmark = pytest.mark.timeout(120)


def audit_env(nats_url: str, state_dir: Path) -> dict[str, str]:
    """The service as the stack runs it, checkpointing every record so the `_system` chain is signed at once."""
    return {"PYTHONUNBUFFERED": "1", "CADUCEUS_NATS_URL": nats_url, "CADUCEUS_STATE_DIR": str(state_dir),
            "CADUCEUS_AUDIT_FETCH_TIMEOUT_S": "0.2", "CADUCEUS_AUDIT_CHECKPOINT_EVERY": "1"}


def checkpointed(store: AuditStore, chain: str, seq: int):
    async def check() -> bool:
        return (await asyncio.to_thread(store.checkpoints.latest)).get(chain, 0) >= seq
    return check


def stored(store: AuditStore, chain: str, n: int):
    async def check() -> bool:
        return await asyncio.to_thread(store.count, chain) >= n
    return check


def stop_cleanly(proc, log_path: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    said = log_path.read_text()
    assert proc.returncode == 0, said[-3000:]
    assert "Traceback" not in said, said[-3000:]


async def test_a_message_no_tenant_owns_is_checkpointed_and_audit_stops_restarts_and_verifies(fresh_nats,
                                                                                               tmp_path: Path):
    env, log_path = audit_env(fresh_nats.url, tmp_path), tmp_path / "audit.log"
    store = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    (subject, event), (later_subject, later) = flow(2)
    async with publisher(fresh_nats.url) as conn:
        first = spawn_audit(env, log_path)
        try:
            await wait_healthy(conn, first, log_path)
            # What any chat client may do: a malformed message on a subject whose tenant token is no tenant.
            await conn.js.publish("cad.v1.chat.in.ACME", b"{not json")
            await eventually(checkpointed(store, subjects.SYSTEM_TENANT, 1), what="the _system chain checkpointed")
            await conn.publish(subject, event)
            await eventually(checkpointed(store, event.tenant, 1), what="audit still storing and checkpointing")
        finally:
            stop_cleanly(first, log_path)

        second = spawn_audit(env, log_path)
        try:
            await wait_healthy(conn, second, log_path)
            await conn.js.publish("cad.v1.chat.in.ACME", b"{not json")
            await conn.publish(later_subject, later)
            await eventually(stored(store, later.tenant, 1), what="audit storing after the restart")
            await eventually(checkpointed(store, subjects.SYSTEM_TENANT, 2), what="the _system chain signed again")
        finally:
            stop_cleanly(second, log_path)

    (system_record, _again) = store.records(tenant=subjects.SYSTEM_TENANT)
    assert system_record.rejected and system_record.subject == "cad.v1.chat.in.ACME"
    runner = CliRunner()
    verified = runner.invoke(app, ["audit", "verify", "--state-dir", str(tmp_path), "--json"])
    assert verified.exit_code == 0, verified.output
    chains = {verdict["tenant"]: verdict for verdict in json.loads(verified.stdout)["tenants"]}
    assert chains[subjects.SYSTEM_TENANT]["records"] == 2 and chains[subjects.SYSTEM_TENANT]["checkpoints"] == 2
    exported = runner.invoke(app, ["audit", "export", "--format", "jsonl", "--tenant", subjects.SYSTEM_TENANT,
                                   "--state-dir", str(tmp_path)])
    assert exported.exit_code == 0, exported.output
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [line["subject"] for line in lines] == ["cad.v1.chat.in.ACME"] * 2
    kept = runner.invoke(app, ["audit", "checkpoints", "--tenant", subjects.SYSTEM_TENANT, "--state-dir", str(tmp_path)])
    assert kept.exit_code == 0 and len(kept.stdout.splitlines()) == 2, kept.output
