"""SIGTERM while the approval service holds decisions that need a person: every decision that reached it before the
signal opens its approval (a workflow in Temporal) and the process exits 0; the next process to start announces
every one of them (`approval.requested`), including those whose announcement the stop cut short. And SIGTERM while
an approver's answer is on its way in: it is carried out (Temporal's workflow takes it) and acknowledged, the live
inbox stream ends cleanly at once, and no new request is taken."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import nats
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from caduceus_approval.domain import workflow_id
from caduceus_approval.web.sessions import SESSION_COOKIE, CookieJar, load_or_create_secret
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


async def test_an_answer_in_progress_at_sigterm_is_carried_out_and_acknowledged(tmp_path: Path, fresh_nats: Any,
                                                                               temporal_server: Any) -> None:
    (tmp_path / "tenants.yaml").write_text(TENANTS_YAML)
    identity, policy = ensure_signer(tmp_path / "keys", "identity"), ensure_signer(tmp_path / "keys", "policy")
    jar = CookieJar(load_or_create_secret(tmp_path / "keys" / "approval-ui.secret"), 3600)
    cookie = jar.session(TENANT, "carol")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    queue = f"approvals-{new_id()}"
    env = {**os.environ, "CADUCEUS_NATS_URL": fresh_nats.url, "CADUCEUS_STATE_DIR": str(tmp_path),
           "CADUCEUS_TEMPORAL_ADDRESS": temporal_server.address, "CADUCEUS_UI_PORT": str(port),
           "CADUCEUS_APPROVAL_TASK_QUEUE": queue}
    conn = await EventConnection.connect(BusSettings(nats_url=fresh_nats.url), "approval-answer-sigterm-test")
    await conn.ensure_stream()
    process = subprocess.Popen([sys.executable, "-m", "caduceus_approval"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    carol = httpx.AsyncClient(base_url=base, cookies={SESSION_COOKIE: cookie}, timeout=10)
    try:
        await healthy(conn)
        call = ask(identity, policy, command="rm -rf build", session="s-answer-term")
        await call.publish(conn)
        for _ in range(200):  # waiting in carol's inbox
            if call.call_id in (await carol.get("/inbox")).text:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the approval never reached carol's inbox")
        inbox_open = asyncio.Event()
        inbox = asyncio.create_task(follow(carol, inbox_open))
        await asyncio.wait_for(inbox_open.wait(), 10)

        form = urlencode({"csrf": jar.signed_in(cookie).csrf, "answer": "approve", "digest": call.digest,
                          "comment": "fine, it is a build directory"}).encode()
        rest_may_go = asyncio.Event()

        async def slowly_sent() -> Any:  # the answer is in progress: half of it has arrived at the signal
            yield form[:20]
            await rest_may_go.wait()
            yield form[20:]

        answering = asyncio.create_task(carol.post(
            f"/approvals/{call.call_id}", content=slowly_sent(),
            headers={"Content-Type": "application/x-www-form-urlencoded"}))
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # The live stream ends at once (well within the drain), cleanly (a cut one raises).
        await asyncio.wait_for(inbox, 5)
        async with httpx.AsyncClient(base_url=base, cookies={SESSION_COOKIE: cookie}) as new_tab:
            refused = False
            for _ in range(50):  # new connections are refused once the UI stops listening
                try:
                    await new_tab.get("/inbox")
                except httpx.ConnectError:
                    refused = True
                    break
                await asyncio.sleep(0.1)
            assert refused, "a new connection was still taken after SIGTERM"
        rest_may_go.set()
        answered = await asyncio.wait_for(answering, 10)
        assert (answered.status_code, answered.headers.get("location")) == (303, f"/approvals/{call.call_id}"), \
            answered.text[-2000:]
        output = (await asyncio.to_thread(process.communicate, timeout=30))[0].decode()
        assert process.returncode == 0, output[-3000:]
        assert time.monotonic() - signalled < 8 + 6, "the drain is bounded (CADUCEUS_UI_DRAIN_S, 8 s, and the stop)"
        temporal = await Client.connect(temporal_server.address)
        history = await temporal.get_workflow_handle(workflow_id(TENANT, call.call_id)).fetch_history()
        taken = [e.workflow_execution_update_accepted_event_attributes.accepted_request.input.name
                 for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED]
        assert taken == ["approve"]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        await carol.aclose()
        await conn.close()


async def follow(browser: httpx.AsyncClient, opened: asyncio.Event) -> list[str]:
    """The lines of the inbox's live stream, until the server ends it (a cut stream raises)."""
    lines: list[str] = []
    async with browser.stream("GET", "/events", timeout=httpx.Timeout(10, read=None)) as stream:
        assert stream.status_code == 200
        async for line in stream.aiter_lines():
            opened.set()
            lines.append(line)
    return lines


async def healthy(conn: EventConnection) -> None:
    for _ in range(300):
        try:
            if (await conn.nc.request("caduceus.health.approval", b"", timeout=0.2)).data == b"ok":
                return
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            await asyncio.sleep(0.1)
    raise AssertionError("the approval service did not answer its health check within 60 s")
