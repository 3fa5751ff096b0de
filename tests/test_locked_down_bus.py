"""The bus permissions are an output of the code, and the whole stack runs on them without a violation.

infra/nats/permissions.yaml (and the copy the embedded stack reads) must equal what the route tables imply;
then the stack is started on that locked-down bus, plays the demo's two turns and lets a worker go idle, and
no log of any service or worker may hold a permission violation.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from caduceus.bus_roles import permission_file
from caduceus.commands.demo import APPROVAL_MESSAGE, APPROVER, DEMO_MESSAGE
from caduceus_bus import EventConnection, render_permissions
from caduceus_bus.permissions import covers, shipped_permissions_path
from caduceus_client import ApprovalsClient, ChatClient
from caduceus_contracts import WorkerLifecycle, parse_event
from caduceus_embedded.ports import StackPorts
from caduceus_embedded.stack import EmbeddedStack
from caduceus_identity.devtoken import mint_dev_token

ROOT = Path(__file__).resolve().parents[1]
IDLE_TIMEOUT_S = 4
pytestmark = pytest.mark.timeout(300)


def test_the_committed_permission_files_are_what_the_code_implies() -> None:
    generated = render_permissions(permission_file())
    for path in (ROOT / "infra/nats/permissions.yaml", shipped_permissions_path()):
        assert path.read_text(encoding="utf-8") == generated, (
            f"{path} is stale: run `caduceus bus permissions --write {path}`")


def test_every_route_of_every_role_is_allowed_by_its_own_grant_only() -> None:
    from caduceus.bus_roles import TABLES

    rules = permission_file()
    for table in TABLES:
        grant = rules.role_grant(table.role)
        for route in table.routes:
            if route.subject.startswith("cad.v1") and not route.delivery.__class__.__name__ == "Pull":
                assert any(covers(allowed, route.subject) for allowed in grant.subscribe), (table.role, route.subject)
    # Only policy and approval may publish a decision; a worker never may.
    assert sorted(rules.roles_publishing("cad.v1.tool.decided.acme")) == ["approval", "operator", "policy"] or \
        sorted(rules.roles_publishing("cad.v1.tool.decided.acme")) == ["approval", "policy"]


@pytest.fixture(scope="module")
def idle_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """The embedded stack with workers stopped after a few idle seconds."""
    saved = os.environ.get("CADUCEUS_IDLE_TIMEOUT_S")
    os.environ["CADUCEUS_IDLE_TIMEOUT_S"] = str(IDLE_TIMEOUT_S)
    stack = EmbeddedStack(tmp_path_factory.mktemp("locked"), StackPorts.free())
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        if saved is None:
            os.environ.pop("CADUCEUS_IDLE_TIMEOUT_S", None)
        else:
            os.environ["CADUCEUS_IDLE_TIMEOUT_S"] = saved


def violations(state_dir: Path) -> list[str]:
    """Every permission violation any service or worker logged."""
    found = []
    for log in [*state_dir.glob("logs/*.log"), *state_dir.glob("workers/**/*.log")]:
        for line in log.read_text(errors="replace").splitlines():
            if "permissions violation" in line.lower():
                found.append(f"{log.relative_to(state_dir)}: {line.strip()}")
    return found


async def test_the_demo_turns_and_an_idle_stop_run_without_a_permission_violation(idle_stack: EmbeddedStack) -> None:
    info = idle_stack.info
    client = await ChatClient.connect(info.bus_settings("client"))
    watcher = await EventConnection.connect(info.bus_settings("client"), "test-locked-down")
    idle_stopped = asyncio.Event()

    async def on_lifecycle(msg: Msg) -> None:
        if parse_event(msg.data, expect=WorkerLifecycle).state == "idle-stopped":
            idle_stopped.set()

    await watcher.subscribe("cad.v1.worker.lifecycle.acme.>", on_lifecycle)
    try:
        token = mint_dev_token(info.dev_issuer_url, "acme", "alice")
        governed = await client.send(tenant="acme", token=token, text=DEMO_MESSAGE, watch=True, timeout=120)
        assert governed.reply.status == "ok" and governed.calls

        turn = asyncio.create_task(client.send(tenant="acme", token=token, text=APPROVAL_MESSAGE, watch=True,
                                               timeout=120))
        async with ApprovalsClient(info.approval_ui_url,
                                   mint_dev_token(info.dev_issuer_url, "acme", APPROVER)) as approvals:
            pending = await approvals.wait_for(lambda view: view.tool == "terminal", timeout_s=60)
            await approvals.answer(pending.call_id, "approve", digest=pending.digest, comment="scratch")
        approved = await turn
        assert approved.reply.status == "ok"

        # Finished turns are seen as finished (the broker reads chat replies), so the idle pair is stopped.
        await asyncio.wait_for(idle_stopped.wait(), IDLE_TIMEOUT_S + 30)
    finally:
        await watcher.close()
        await client.close()
    assert violations(idle_stack.layout.root) == []
