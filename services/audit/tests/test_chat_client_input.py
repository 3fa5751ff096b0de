"""Whatever a chat client may publish, the audit service keeps storing it: random tenant tokens (valid, invalid,
`_system`, junk) on every subject the bus lets a chat client publish to, with random bytes or near-events, against
the real nats-server and SQLite, every chain checkpointed as it grows."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caduceus_audit import AuditStore
from caduceus_audit.app import build
from caduceus_audit.settings import AuditSettings
from caduceus_audit.testing import eventually, publisher, running
from caduceus_audit.verify import verify_trail
from caduceus_bus import load_permissions
from caduceus_contracts import ChatMessageIn, load_keyring, subjects

pytestmark = pytest.mark.timeout(120)

CLIENT_SUBJECTS = sorted(p for p in load_permissions().role_grant("client").publish if p.startswith(subjects.PREFIX))
# A NATS subject token: anything but separators, wildcards and white space.
TOKEN_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x2FF, blacklist_characters=".*>",
                            blacklist_categories=("Cc", "Zs"))
tokens = st.one_of(st.sampled_from(["acme", "ACME", subjects.SYSTEM_TENANT, "a" * 64, "-x", "Ünïcode"]),
                   st.from_regex(subjects.TOKEN_RE, fullmatch=True), st.text(TOKEN_CHARS, min_size=1, max_size=24))


@st.composite
def client_subjects(draw: st.DrawFn) -> str:
    pattern = draw(st.sampled_from(CLIENT_SUBJECTS))
    return ".".join(draw(tokens) if part == "*" else part for part in pattern.split("."))


@st.composite
def chat_events(draw: st.DrawFn) -> bytes:
    """A valid chat message for some tenant, which may not be the subject's."""
    tenant = draw(st.one_of(st.just("acme"), st.from_regex(subjects.TOKEN_RE, fullmatch=True)))
    return ChatMessageIn(tenant=tenant, session_id="s1", token="t", text=draw(st.text(max_size=40))).model_dump_json(
    ).encode()


bodies = st.one_of(st.binary(max_size=300), chat_events(),
                   st.sampled_from([b"{not json", b"", b"null", b'{"kind":"audit.checkpoint"}', b"[" * 5000]))


async def test_audit_keeps_storing_whatever_a_chat_client_publishes(fresh_nats, tmp_path: Path):
    settings_ = AuditSettings(nats_url=fresh_nats.url, state_dir=tmp_path, audit_fetch_timeout_s=0.1,
                              audit_checkpoint_every=1)
    store = AuditStore(settings_.audit_db_url)
    loop = asyncio.get_running_loop()
    published = 0
    async with publisher(fresh_nats.url) as conn, running(build(settings_)) as service:

        @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(subject=client_subjects(), body=bodies)
        def each_message_is_stored(subject: str, body: bytes) -> None:
            nonlocal published
            asyncio.run_coroutine_threadsafe(conn.js.publish(subject, body), loop).result(10)
            published += 1
            deadline = time.monotonic() + 10
            while store.count() < published:
                assert time.monotonic() < deadline, f"audit stopped storing after {subject!r} {body[:80]!r}"
                time.sleep(0.02)
            assert store.count() == published

        await asyncio.to_thread(each_message_is_stored)
        assert published >= 20
        # The last chains are checkpointed too, at the next tick.
        await eventually(lambda: service.checkpointer.due() == [], what="every chain checkpointed")
    verdicts = verify_trail(store, load_keyring(tmp_path / "keys"))
    assert verdicts and all(v.ok for v in verdicts), [v for v in verdicts if not v.ok]
