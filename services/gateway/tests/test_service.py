"""The gateway service on a real nats-server with nothing else running: a message nobody answers ends with an
error the person sees and that is kept with the conversation, never with silence; the conversation store is
migrated at start and only ever shows a conversation to its owner, on SQLite and on PostgreSQL (which replicas share)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, text

from caduceus_directory.testing import TENANTS
from caduceus_gateway import GatewayService, GatewaySettings
from caduceus_gateway.store import MIGRATIONS, ConversationStore
from caduceus_gateway.web.sessions import SignedIn

pytestmark = pytest.mark.timeout(60)


async def test_a_turn_nobody_answers_ends_with_an_error_shown_and_kept(nats_server, tmp_path: Path) -> None:
    (tmp_path / "tenants.yaml").write_text(TENANTS)
    settings = GatewaySettings(nats_url=nats_server.url, state_dir=tmp_path, web_port=0, turn_timeout_s=1.0)
    gateway = GatewayService(settings)
    await gateway.start()
    try:
        assert gateway.workspaces("acme") and gateway.workspaces("nobody") == ()
        alice = SignedIn("acme", "alice", "csrf", "token", expires_at=0)
        conversation = gateway.store.start("w-1", "acme", "alice", "default", alice.channel, "New conversation")
        unanswered = REGISTRY.get_sample_value("caduceus_gateway_turns_total", {"outcome": "no-reply"})
        with gateway.relay.listen("acme", "w-1") as updates:
            await gateway.speak(alice, conversation.conversation_id, "default", "is anyone there?")
            update = await asyncio.wait_for(updates.get(), 10)
        assert update.kind == "error" and "no reply within 1 s" in update.text
        kept = [(e.kind, e.body["text"]) for e in gateway.store.entries(conversation)]
        assert kept == [("person", "is anyone there?"), ("error", update.text)]
        assert gateway.store.get("w-1", "acme", "alice").title == "is anyone there?"
        assert REGISTRY.get_sample_value("caduceus_gateway_turns_total", {"outcome": "no-reply"}) == unanswered + 1
    finally:
        await gateway.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | str]:
    """Where the conversations are kept: a SQLite file, and a fresh database of the real PostgreSQL fixture."""
    if request.param == "sqlite":
        yield tmp_path / "gateway.db"
        return
    with request.getfixturevalue("postgres_server").database("gateway") as url:
        yield url


def test_the_store_is_migrated_at_start_and_shows_a_conversation_to_its_owner_only(where: Path | str) -> None:
    store = ConversationStore(where)
    store.start("w-a", "acme", "alice", "default", "web:alice", "hello")
    store.start("w-g", "globex", "alice", "default", "web:alice", "same name, other tenant")
    store.add("w-a", "person", {"text": "hello"})
    store.add("w-a", "agent", {"text": "hi, alice"})
    assert [c.conversation_id for c in store.of_person("acme", "alice")] == ["w-a"]
    assert store.get("w-a", "acme", "bob") is None and store.get("w-a", "globex", "alice") is None
    store.close()
    engine = create_engine(where if isinstance(where, str) else f"sqlite:///{where}")
    with engine.connect() as db:
        revision = db.execute(text(f"SELECT version_num FROM {MIGRATIONS.version_table}")).scalar_one()
    engine.dispose()
    assert revision == MIGRATIONS.head()
    again = ConversationStore(where)  # opening at head again changes nothing
    conversation = again.get("w-a", "acme", "alice")
    assert conversation.title == "hello"
    assert [(e.kind, e.body["text"]) for e in again.entries(conversation)] == [("person", "hello"),
                                                                              ("agent", "hi, alice")]
    again.close()


def test_two_replicas_on_postgresql_see_each_others_conversations_and_survive_a_restart(
        request: pytest.FixtureRequest) -> None:
    """Gateway replicas on one PostgreSQL database: a conversation one replica started is listed and continued by
    the other (whichever serves the person's page), and both carry on after PostgreSQL restarts."""
    server = request.getfixturevalue("postgres_server")
    with server.database("gateway") as url:
        first, second = ConversationStore(url), ConversationStore(url)
        try:
            first.start("w-1", "acme", "alice", "default", "web:alice", "hello")
            second.add("w-1", "person", {"text": "from the other replica"})
            assert [c.conversation_id for c in second.of_person("acme", "alice")] == ["w-1"]
            if server.restart is not None:  # here always; a container cannot be restarted from the test
                server.restart()
            first.add("w-1", "agent", {"text": "after the restart"})
            conversation = second.get("w-1", "acme", "alice")
            assert [e.body["text"] for e in second.entries(conversation)] == ["from the other replica",
                                                                              "after the restart"]
        finally:
            first.close()
            second.close()
