"""A real Hermes agent stuck in a loop on the embedded stack, stopped by the shipped pack's turn guardrails: the
person reads why as the reply, the call past the limit never runs, and the stop is in the audit chain."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus_audit.adapters.store import AuditStore
from caduceus_client import ChatClient
from caduceus_identity.devtoken import mint_dev_token

pytestmark = pytest.mark.timeout(240)

LOOP_MESSAGE = "keep checking the disk until it is free"  # the scripted model's `loop` scenario


@pytest.fixture()
async def client(stack):
    chat = await ChatClient.connect(stack.info.bus_settings("client"))
    yield chat
    await chat.close()


async def test_a_looping_agent_is_stopped_by_the_pack_and_the_person_reads_why(stack, client):
    token = mint_dev_token(stack.info.dev_issuer_url, "acme", "alice")
    transcript = await client.send(tenant="acme", token=token, text=LOOP_MESSAGE, watch=True, timeout=180)
    assert transcript.reply is not None
    assert transcript.reply.text == (
        "this turn was stopped: it was looping without progress: it asked for the same terminal call 6 times "
        "(5 is the limit per turn for acme). Send a new message to go on.")
    calls = sorted(transcript.calls.values(), key=lambda c: c.decision.issued_at if c.decision else 0)
    assert [c.decision.verdict for c in calls] == ["allow"] * 5 + ["deny"]
    assert calls[-1].decision.policy_ids == ("guardrail:acme-turns:same_call",)
    assert [c.outcome.status for c in calls] == ["ok"] * 5 + ["denied"]  # the sixth never ran
    # the stop is in the tenant's audit chain, with the session it stopped
    store = AuditStore(stack.info.audit_db_url)
    stopped = []
    deadline = time.monotonic() + 15
    while not stopped and time.monotonic() < deadline:
        stopped = [json.loads(r.body) for r in store.records(tenant="acme", session_id=transcript.session_id)
                   if r.kind == "turn.stopped"]
        time.sleep(0.2)
    assert [(s["limit"], s["guardrail"], s["user"], s["tool_calls"]) for s in stopped] == [
        ("same_call", "acme-turns", "alice", 5)]
    # and the operator reads it in the session's timeline
    timeline = CliRunner().invoke(app, ["audit", "timeline", "--session", transcript.session_id, "--state-dir",
                                        str(stack.layout.root)], catch_exceptions=False)
    assert timeline.exit_code == 0, timeline.output
    said = " ".join(timeline.stdout.split())
    assert "policy stopped alice (" in said and "'s turn at guardrail:acme-turns:same_call (5 tool calls" in said


async def test_the_next_message_is_a_fresh_turn(stack, client):
    token = mint_dev_token(stack.info.dev_issuer_url, "acme", "alice")
    transcript = await client.send(tenant="acme", token=token, text="hello", timeout=120)
    assert transcript.reply is not None and transcript.reply.text.startswith("Hello! I am the scripted model")
