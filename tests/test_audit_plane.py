"""The audit plane on the running embedded stack: after a governed turn, the stack's own trail verifies against
the checkpoints its audit service signed and published, the turn reads as a timeline, and its exported GenAI
spans join the trace the live services reported."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus.commands.demo import DEMO_MESSAGE
from caduceus_audit import AuditStore
from caduceus_client import ChatClient
from caduceus_identity.devtoken import mint_dev_token

pytestmark = pytest.mark.timeout(240)
runner = CliRunner()


def caduceus(*args: str | Path):
    return runner.invoke(app, [str(arg) for arg in args], catch_exceptions=False)


async def eventually(check, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (result := await asyncio.to_thread(check)):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)
    return result


async def test_the_stacks_trail_verifies_tells_the_turn_and_joins_its_trace(stack, otlp_collector, tmp_path: Path):
    client = await ChatClient.connect(stack.info.bus_settings("client"))
    try:
        token = mint_dev_token(stack.info.dev_issuer_url, "acme", "alice")
        transcript = await client.send(tenant="acme", token=token, text=DEMO_MESSAGE, watch=True, timeout=180)
    finally:
        await client.close()
    session, state = transcript.session_id, stack.layout.root
    store = AuditStore(stack.info.audit_db_url)
    await eventually(lambda: store.count(session_id=session) >= len(transcript.event_ids), "the turn's records")
    await eventually(lambda: store.checkpoints.latest().get("acme", 0) >= store.heads()["acme"][0],
                     "a checkpoint of acme's head")

    verified = await asyncio.to_thread(caduceus, "audit", "verify", "--state-dir", state, "--bus", "--json")
    assert verified.exit_code == 0, verified.output
    result = json.loads(verified.stdout)
    assert result["checkpoint_sources"] == ["the database", "the bus"]
    acme = next(t for t in result["tenants"] if t["tenant"] == "acme")
    assert acme["ok"] and acme["checkpoints"] >= 2  # each one from the database and from the bus

    page = tmp_path / "turn.html"
    told = await asyncio.to_thread(caduceus, "audit", "timeline", "--session", session, "--html", page,
                                   "--state-dir", state)
    assert told.exit_code == 0, told.output
    html = page.read_text()
    assert "writes-stay-in-workspace" in html and "asked for <b>terminal</b>" in html and "alice (member" in html

    before = len(otlp_collector.exports)  # the collector is shared: other tests export to it too
    exported = await asyncio.to_thread(caduceus, "audit", "export", "--format", "otel", "--session", session,
                                       "--otlp-endpoint", otlp_collector.url, "--state-dir", state)
    assert exported.exit_code == 0, exported.output
    spans = otlp_collector.spans()
    ours = {(name, trace) for service, name, trace in otlp_collector.spans(since=before) if service == "caduceus-audit"}
    assert {"execute_tool terminal", "execute_tool write_file"} <= {name for name, _ in ours}
    live = {trace for service, _, trace in spans if service == "caduceus-policy"}
    assert {trace for name, trace in ours if name.startswith("execute_tool")} <= live
