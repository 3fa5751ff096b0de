"""The gateway service on a real nats-server with nothing else running: a message nobody answers ends with an
error the person sees and that is kept with the conversation, never with silence; the conversation store is
migrated at start and only ever shows a conversation to its owner."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

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


def test_the_store_is_migrated_at_start_and_shows_a_conversation_to_its_owner_only(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "gateway.db")
    store.start("w-a", "acme", "alice", "default", "web:alice", "hello")
    store.start("w-g", "globex", "alice", "default", "web:alice", "same name, other tenant")
    assert [c.conversation_id for c in store.of_person("acme", "alice")] == ["w-a"]
    assert store.get("w-a", "acme", "bob") is None and store.get("w-a", "globex", "alice") is None
    store.close()
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        (revision,) = db.execute(f"SELECT version_num FROM {MIGRATIONS.version_table}").fetchone()
    assert revision == MIGRATIONS.head()
    again = ConversationStore(tmp_path / "gateway.db")  # opening at head again changes nothing
    assert again.get("w-a", "acme", "alice").title == "hello"
    again.close()
