"""The MCP endpoint's way in: an access token for the MCP audience in, a signed session grant (or why not) out,
over a core NATS request that is never stored. Real identity, real dev issuer, real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import ErrorEvent, GrantAnswer, GrantRequested, load_keyring, parse_event, subjects
from caduceus_embedded.ports import free_port
from caduceus_identity.adapters.dev_issuer import DevIssuer
from caduceus_identity.app import IdentityService, bootstrap
from caduceus_identity.devtoken import mint_dev_token
from caduceus_identity.settings import IdentitySettings

MCP = "caduceus-mcp"


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
    connection = await EventConnection.connect(BusSettings(nats_url=nats_server.url), "grant-tests")
    yield connection
    await connection.close()


async def ask(bus: EventConnection, token: str, tenant: str = "acme", workspace: str = "default") -> GrantAnswer:
    request = GrantRequested(tenant=tenant, workspace=workspace, session_id="mcp-test", token=token)
    reply = await bus.nc.request(subjects.identity_grant(tenant), request.model_dump_json().encode(), timeout=5)
    return GrantAnswer.model_validate_json(reply.data)


async def token_for(issuer: DevIssuer, user: str = "alice", tenant: str = "acme", audience: str | None = MCP,
                    ttl_s: int | None = None) -> str:
    return await asyncio.to_thread(mint_dev_token, issuer.issuer_url, tenant, user, None, ttl_s, audience=audience)


async def test_a_token_for_the_mcp_audience_becomes_a_signed_grant_that_never_outlives_it(
        service: IdentityService, issuer: DevIssuer, bus: EventConnection, keys_dir: Path) -> None:
    answer = await ask(bus, await token_for(issuer, "carol", ttl_s=120))
    assert answer.refused == "" and answer.grant is not None
    grant = answer.grant.verify(load_keyring(keys_dir))
    assert (grant.tenant, grant.workspace, grant.user, grant.channel, grant.session_id) == (
        "acme", "default", "carol", "mcp", "mcp-test")
    assert "admin" in grant.roles
    assert (grant.expires_at - grant.issued_at).total_seconds() <= 121


async def test_a_chat_token_is_refused_at_the_mcp_door(service, issuer: DevIssuer, bus: EventConnection) -> None:
    answer = await ask(bus, await token_for(issuer, audience=None))
    assert answer.grant is None
    assert answer.refused == "token is for audience 'caduceus', not 'caduceus-mcp'"
    assert not answer.unavailable


async def test_expired_and_forged_tokens_are_refused_and_audited_without_the_token(
        service, issuer: DevIssuer, forger, bus: EventConnection) -> None:
    errors: asyncio.Queue[ErrorEvent] = asyncio.Queue()

    async def collect(msg) -> None:
        errors.put_nowait(parse_event(msg.data))

    await bus.subscribe(subjects.error("acme", "identity"), collect)
    expired = forger.signed(forger.claims(audience=MCP, starts_in_s=-7200, lifetime_s=3600))
    answer = await ask(bus, expired)
    assert answer.grant is None and answer.refused.startswith("token expired at ")
    error = await asyncio.wait_for(errors.get(), 5)
    assert error.reason.startswith("mcp access refused: token expired at ") and expired not in error.model_dump_json()

    other_key = forger.signed(forger.claims(audience=MCP), key=ec.generate_private_key(ec.SECP256R1()))
    answer = await ask(bus, other_key)
    assert answer.grant is None and answer.refused.startswith("token signature does not match")


async def test_a_token_of_one_tenant_gets_no_grant_in_another(service, issuer: DevIssuer,
                                                              bus: EventConnection) -> None:
    answer = await ask(bus, await token_for(issuer, "alice", "acme"), tenant="globex")
    assert answer.grant is None
    assert "acme" in answer.refused and "globex" in answer.refused


async def test_an_unknown_workspace_is_refused_with_the_ones_there_are(service, issuer: DevIssuer,
                                                                       bus: EventConnection) -> None:
    answer = await ask(bus, await token_for(issuer), workspace="nowhere")
    assert answer.grant is None and answer.refused.startswith("workspace 'nowhere' is not one of")
