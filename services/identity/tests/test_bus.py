"""Identity on the real bus: chat messages in, turn requests with signed grants or refusals out."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    ChatMessageIn,
    ChatReply,
    ErrorEvent,
    Event,
    TurnRequested,
    load_keyring,
    new_id,
    parse_event,
    subjects,
    utcnow,
)
from caduceus_embedded.ports import free_port
from caduceus_identity.adapters.dev_issuer import DevIssuer
from caduceus_identity.app import HEALTH_SUBJECT, IdentityService, bootstrap
from caduceus_identity.devtoken import mint_dev_token
from caduceus_identity.settings import IdentitySettings


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
async def service(nats_server, directory_file: Path, keys_dir: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[IdentityService]:
    settings = IdentitySettings(nats_url=nats_server.url, state_dir=tmp_path_factory.mktemp("state"),
                                keys_dir=keys_dir, tenants_file=directory_file, dev_issuer_port=free_port())
    service = bootstrap(settings)
    await service.start()
    yield service
    await service.stop()


@pytest.fixture()
def issuer(service: IdentityService) -> DevIssuer:
    assert service.dev_issuer is not None
    return service.dev_issuer.issuer


@pytest.fixture(scope="module")
async def bus(nats_server) -> AsyncIterator[EventConnection]:
    connection = await EventConnection.connect(BusSettings(nats_url=nats_server.url), "identity-tests")
    yield connection
    await connection.close()


class Inbox:
    """Events arriving on one subject, awaited by a predicate."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    async def next(self, matching: Callable[[Event], bool] = lambda _: True, timeout: float = 5.0) -> Event:
        async with asyncio.timeout(timeout):
            while True:
                event = await self.queue.get()
                if matching(event):
                    return event


async def listen(bus: EventConnection, subject: str) -> Inbox:
    inbox = Inbox()

    async def collect(msg) -> None:
        inbox.queue.put_nowait(parse_event(msg.data))

    await bus.subscribe(subject, collect)
    await bus.nc.flush()
    return inbox


async def token_for(issuer: DevIssuer, tenant: str = "acme", user: str = "alice") -> str:
    return await asyncio.to_thread(mint_dev_token, issuer.issuer_url, tenant, user)


def chat(token: str, tenant: str = "acme", workspace: str = "default", text: str = "list my files") -> ChatMessageIn:
    return ChatMessageIn(tenant=tenant, session_id=f"s-{new_id()[:12]}", workspace=workspace, channel="cli",
                         token=token, text=text)


async def refused(bus: EventConnection, message: ChatMessageIn) -> tuple[ChatReply, ErrorEvent]:
    """Publish a message identity must refuse; the reply the person sees and the audited error event."""
    replies = await listen(bus, subjects.chat_reply(message.tenant, message.session_id))
    errors = await listen(bus, subjects.error(message.tenant, "identity"))
    await bus.publish(subjects.chat_in(message.tenant), message)
    reply = await replies.next()
    error = await errors.next(lambda e: message.message_id in e.excerpt)
    assert isinstance(reply, ChatReply) and isinstance(error, ErrorEvent)
    assert reply.message_id == message.message_id and reply.status == "refused"
    assert message.token not in error.model_dump_json() and message.token not in reply.text
    assert error.subject == subjects.chat_in(message.tenant)
    return reply, error


async def test_valid_message_becomes_a_turn_with_a_grant_that_verifies(
        service: IdentityService, issuer: DevIssuer, bus: EventConnection, keys_dir: Path) -> None:
    turns = await listen(bus, subjects.turn_requested("acme"))
    message = chat(await token_for(issuer, user="carol"))
    await bus.publish(subjects.chat_in("acme"), message)
    turn = await turns.next(lambda e: e.message_id == message.message_id)
    assert isinstance(turn, TurnRequested)
    grant = turn.grant.verify(load_keyring(keys_dir))
    assert (grant.tenant, grant.workspace, grant.user, grant.roles, grant.channel, grant.session_id) == (
        "acme", "default", "carol", ("admin", "member", "guest"), "cli", message.session_id)
    assert (grant.approval_mode, grant.memory_scope) == (None, "user:carol")
    assert (grant.expires_at - grant.issued_at).total_seconds() == 600
    assert turn.text == "list my files"
    assert message.token not in turn.model_dump_json()


async def test_expired_token_is_refused_then_the_next_good_message_still_works(
        service: IdentityService, issuer: DevIssuer, forger, bus: EventConnection) -> None:
    expired = forger.signed(forger.claims(starts_in_s=-7200, lifetime_s=3600))
    reply, error = await refused(bus, chat(expired))
    assert reply.text.startswith("token expired at ")
    assert "; get a fresh token" in reply.text
    assert error.reason.startswith("token expired at ") and error.service == "identity"

    turns = await listen(bus, subjects.turn_requested("acme"))
    message = chat(await token_for(issuer))
    await bus.publish(subjects.chat_in("acme"), message)
    assert (await turns.next(lambda e: e.message_id == message.message_id)).grant.grant.user == "alice"


async def test_forged_token_is_refused(service: IdentityService, forger, bus: EventConnection) -> None:
    reply, error = await refused(bus, chat(forger.hmac_with_public_key(forger.claims(user="carol"))))
    assert "algorithm 'HS256', which is not accepted" in reply.text
    assert "HS256" in error.reason


async def test_token_of_another_tenant_is_refused(service: IdentityService, issuer: DevIssuer,
                                                   bus: EventConnection) -> None:
    reply, _ = await refused(bus, chat(await token_for(issuer, "globex", "dave"), tenant="acme"))
    assert reply.text.startswith("token is for tenant 'globex', but the message was sent to tenant 'acme'; ")


async def test_unknown_tenant_is_refused(service: IdentityService, forger, bus: EventConnection) -> None:
    token = forger.signed(forger.claims(tenant="initech", user="peter"))
    reply, error = await refused(bus, chat(token, tenant="initech"))
    assert reply.text.startswith("unknown tenant 'initech'; ")
    assert error.reason == "unknown tenant 'initech'"


async def test_stranger_with_a_valid_signature_is_refused(service: IdentityService, forger,
                                                          bus: EventConnection) -> None:
    reply, _ = await refused(bus, chat(forger.signed(forger.claims(user="mallory"))))
    assert reply.text.startswith("user 'mallory' is not a member of tenant 'acme'; ")


async def test_workspace_of_another_tenant_is_refused(service: IdentityService, issuer: DevIssuer,
                                                      bus: EventConnection) -> None:
    reply, _ = await refused(bus, chat(await token_for(issuer), workspace="research"))
    assert reply.text.startswith("workspace 'research' is not one of tenant 'acme''s workspaces")


async def test_malformed_body_becomes_an_error_event_without_the_token(
        service: IdentityService, issuer: DevIssuer, bus: EventConnection) -> None:
    token = await token_for(issuer)
    errors = await listen(bus, subjects.error("acme", "identity"))
    marker = new_id()
    body = json.dumps({"kind": "chat.message.in", "tenant": "acme", "message_id": marker, "session_id": "s1",
                       "token": token, "text": 42}).encode()
    await bus.js.publish(subjects.chat_in("acme"), body)
    await bus.js.publish(subjects.chat_in("acme"), b"\xff not json " + token.encode())
    first = await errors.next(lambda e: marker in e.excerpt)
    second = await errors.next(lambda e: "not json" in e.excerpt)
    assert first.reason.startswith("malformed event at chat.message.in.text")
    assert token not in first.excerpt and token not in second.excerpt
    assert "[redacted]" in first.excerpt and "[redacted]" in second.excerpt


async def test_message_on_another_tenants_subject_is_refused(service: IdentityService, issuer: DevIssuer,
                                                             bus: EventConnection) -> None:
    errors = await listen(bus, subjects.error("acme", "identity"))
    turns = await listen(bus, subjects.turn_requested("globex"))
    message = chat(await token_for(issuer, "globex", "dave"), tenant="globex")
    await bus.js.publish(subjects.chat_in("acme"), message.model_dump_json().encode())
    error = await errors.next(lambda e: message.message_id in e.excerpt)
    assert error.reason == f"event for tenant 'globex' published on {subjects.chat_in('acme')!r}"
    with pytest.raises(TimeoutError):
        await turns.next(lambda e: e.message_id == message.message_id, timeout=0.5)


async def test_health_answers_ok(service: IdentityService, bus: EventConnection) -> None:
    reply = await bus.nc.request(HEALTH_SUBJECT, b"", timeout=2)
    assert reply.data == b"ok"


async def test_module_runs_until_sigterm_and_exits_cleanly(nats_server, directory_file: Path,
                                                          tmp_path: Path, bus: EventConnection) -> None:
    port = free_port()
    env = {**os.environ, "CADUCEUS_NATS_URL": nats_server.url, "CADUCEUS_STATE_DIR": str(tmp_path),
           "CADUCEUS_TENANTS_FILE": str(directory_file), "CADUCEUS_DEV_ISSUER_PORT": str(port)}
    process = subprocess.Popen([sys.executable, "-m", "caduceus_identity"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        async with asyncio.timeout(20):
            while True:
                try:
                    await bus.nc.request(HEALTH_SUBJECT, b"", timeout=0.5)
                    token = await asyncio.to_thread(mint_dev_token, f"http://127.0.0.1:{port}", "acme", "bob")
                    break
                except Exception:
                    assert process.poll() is None, process.stdout.read().decode()
                    await asyncio.sleep(0.2)
        assert token.count(".") == 2
        assert (tmp_path / "keys" / "dev-issuer.pem").exists() and (tmp_path / "keys" / "identity.pub").exists()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_module_explains_a_broken_tenants_file(tmp_path: Path) -> None:
    (tmp_path / "tenants.yaml").write_text("tenants: [acme]\n")
    env = {**os.environ, "CADUCEUS_STATE_DIR": str(tmp_path), "CADUCEUS_DEV_ISSUER_PORT": "0",
           "CADUCEUS_OIDC_ISSUER_URL": "http://127.0.0.1:9"}
    result = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "caduceus_identity"], env=env,
                                     capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"identity cannot start: {tmp_path / 'tenants.yaml'} has 1 problem(s)" in result.stderr


async def test_a_chat_integration_speaks_for_a_linked_platform_user_and_pairs_a_stranger(
        service: IdentityService, bus: EventConnection) -> None:
    _, key = service.store.create_service_account("acme", "slack-test", ("slack",), utcnow(), "test")
    service.store.add_link("acme", "slack", "U-CAROL", "carol", "test", utcnow())
    turns = await listen(bus, subjects.turn_requested("acme"))
    linked = ChatMessageIn(tenant="acme", session_id=f"s-{new_id()[:12]}", channel="C-ops", token=key, text="hi",
                           platform="slack", platform_user="U-CAROL")
    await bus.publish(subjects.chat_in("acme"), linked)
    turn = await turns.next(lambda e: e.message_id == linked.message_id)
    assert (turn.grant.grant.user, turn.grant.grant.channel) == ("carol", "C-ops")

    stranger = linked.model_copy(update={"message_id": new_id(), "event_id": new_id(), "platform_user": "U-NEW"})
    reply, error = await refused(bus, stranger)
    assert reply.text.startswith("slack user 'U-NEW' is not linked to a person in tenant 'acme'; ask an administrator")
    code = reply.text.split("pairing code ")[1][:9]
    assert code not in error.model_dump_json() and key not in error.model_dump_json()
