"""Chat integrations: service-account keys, platform users linked by verified email or by a pairing code
a tenant admin approves, with expiry and lockout. Real SQLite store, a controlled clock."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from caduceus_contracts import ChatMessageIn
from caduceus_directory import DirectorySource
from caduceus_identity.adapters.store import IdentityStore
from caduceus_identity.gatekeeper import Gatekeeper, approve_pairing
from caduceus_identity.linking import PairingRefused, PairingRules, parse_api_key
from caduceus_oidc import Refused, TokenRefused, VerifiedIdentity

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
RULES = PairingRules(code_ttl_s=600, max_failures=3, lockout_s=900)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


class NoTokens:
    async def verify(self, token: str, tenant: str | None = None) -> VerifiedIdentity:
        raise TokenRefused("not an OIDC test")


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    """The identity store on a SQLite file, and on a fresh database of the real PostgreSQL fixture."""
    if request.param == "sqlite":
        store = IdentityStore(tmp_path / "identity.db")
        yield store
        store.close()
        return
    with request.getfixturevalue("postgres_server").database("identity") as url:
        store = IdentityStore(url)
        try:
            yield store
        finally:
            store.close()


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def directory(tenants_file: Path) -> DirectorySource:
    return DirectorySource(tenants_file)


@pytest.fixture()
def gate(store: IdentityStore, directory: DirectorySource, clock: Clock) -> Gatekeeper:
    return Gatekeeper(NoTokens(), store, directory, clock, RULES)


@pytest.fixture()
def slack_key(store: IdentityStore) -> str:
    return store.create_service_account("acme", "slack-bot", ("slack",), START, "carol")[1]


def from_slack(key: str, who: str = "U123", email: str | None = None, tenant: str = "acme",
               platform: str | None = "slack") -> ChatMessageIn:
    return ChatMessageIn(tenant=tenant, session_id="s1", channel="C-general", token=key, text="hi",
                         platform=platform, platform_user=who, platform_email=email)


def carol(directory: DirectorySource):
    return directory().member(VerifiedIdentity("carol", "acme", (), None, "test", None))


async def refused(gate: Gatekeeper, message: ChatMessageIn) -> Refused:
    with pytest.raises(Refused) as refusal:
        await gate.identify(message)
    return refusal.value


def code_in(text: str) -> str:
    found = re.search(r"pairing code ([A-Z2-9]{4}-[A-Z2-9]{4})", text)
    assert found, text
    return found.group(1)


def test_the_api_key_is_shown_once_and_only_its_hash_is_kept(store: IdentityStore, tmp_path: Path) -> None:
    account, key = store.create_service_account("acme", "discord-bot", ("discord",), START, "carol")
    assert key.startswith("cad_sa_") and account.name == "discord-bot"
    secret = parse_api_key(key)[1]  # the secret itself may contain "_"
    assert len(secret) >= 40
    dump = "\n".join(sqlite3.connect(tmp_path / "identity.db").iterdump())
    assert secret not in dump and key not in dump
    assert store.authenticate(key).account_id == account.account_id
    assert store.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None


async def test_a_revoked_key_is_refused(gate: Gatekeeper, store: IdentityStore, slack_key: str) -> None:
    assert store.revoke_service_account("acme", "slack-bot", START, "carol")
    refusal = await refused(gate, from_slack(slack_key))
    assert refusal.reason == "the service-account key is unknown or revoked"


async def test_a_key_speaks_only_for_its_tenant_and_platforms(gate: Gatekeeper, slack_key: str) -> None:
    assert "belongs to tenant 'acme', not 'globex'" in (await refused(gate, from_slack(slack_key, tenant="globex"))).reason
    discord = await refused(gate, from_slack(slack_key, platform="discord"))
    assert discord.reason == "service account 'slack-bot' may not speak for discord users (only slack)"
    anonymous = await refused(gate, from_slack(slack_key, platform=None))
    assert "did not say which platform user wrote the message" in anonymous.reason


async def test_a_platform_email_the_directory_knows_links_the_person(gate: Gatekeeper, store: IdentityStore,
                                                                     slack_key: str) -> None:
    identity = await gate.identify(from_slack(slack_key, "U-BOB", email="bob@acme.example"))
    assert (identity.subject, identity.tenant) == ("bob", "acme")
    assert store.link("acme", "slack", "U-BOB").linked_by == "email verified by slack"
    again = await gate.identify(from_slack(slack_key, "U-BOB"))
    assert again.subject == "bob"


async def test_a_stranger_gets_a_code_an_admin_approves_and_is_then_that_person(
        gate: Gatekeeper, store: IdentityStore, directory: DirectorySource, clock: Clock, slack_key: str) -> None:
    first = await refused(gate, from_slack(slack_key, "U-ALICE"))
    assert first.reason == "slack user 'U-ALICE' is not linked to a person in tenant 'acme'"
    code = code_in(first.remedy)
    assert code not in first.reason  # the reason is audited; only the person sees the code
    second = await refused(gate, from_slack(slack_key, "U-ALICE"))
    assert "already sent to you" in second.remedy and code not in second.remedy
    assert store.pending_pairings("acme", clock.now)[0][:2] == ("slack", "U-ALICE")

    link = approve_pairing(store, directory(), carol(directory), "slack", code.lower(), "alice", clock.now, RULES)
    assert (link.platform_user, link.user, link.linked_by) == ("U-ALICE", "alice", "pairing approved by carol")
    assert (await gate.identify(from_slack(slack_key, "U-ALICE"))).subject == "alice"
    assert store.pending_pairings("acme", clock.now) == []


async def test_only_a_tenant_admin_may_approve(gate: Gatekeeper, store: IdentityStore,
                                               directory: DirectorySource, slack_key: str) -> None:
    code = code_in((await refused(gate, from_slack(slack_key, "U-EVE"))).remedy)
    bob = directory().member(VerifiedIdentity("bob", "acme", (), None, "test", None))
    with pytest.raises(PairingRefused, match="'bob' is not an owner or admin of tenant 'acme'"):
        approve_pairing(store, directory(), bob, "slack", code, "bob", START, RULES)
    attempt = store.unpublished_changes()[-1]  # audited, without the code bob typed
    assert (attempt.action, attempt.actor, attempt.subject) == ("pairing.refused", "bob", "slack:?")
    assert "not an owner or admin" in attempt.detail and code not in attempt.detail
    with pytest.raises(Refused, match="'mallory' is not a member"):
        approve_pairing(store, directory(), carol(directory), "slack", code, "mallory", START, RULES)
    assert store.link("acme", "slack", "U-EVE") is None


async def test_an_expired_code_cannot_be_approved(gate: Gatekeeper, store: IdentityStore,
                                                  directory: DirectorySource, clock: Clock, slack_key: str) -> None:
    code = code_in((await refused(gate, from_slack(slack_key, "U-LATE"))).remedy)
    clock.now += timedelta(seconds=RULES.code_ttl_s + 1)
    with pytest.raises(PairingRefused, match="has that code \\(it may have expired\\)"):
        approve_pairing(store, directory(), carol(directory), "slack", code, "alice", clock.now, RULES)
    fresh = await refused(gate, from_slack(slack_key, "U-LATE"))
    assert code_in(fresh.remedy) != code


async def test_wrong_codes_lock_pairing_even_for_the_right_code_until_the_window_passes(
        gate: Gatekeeper, store: IdentityStore, directory: DirectorySource, clock: Clock, slack_key: str) -> None:
    code = code_in((await refused(gate, from_slack(slack_key, "U-TARGET"))).remedy)
    admin = carol(directory)
    for _ in range(RULES.max_failures):
        with pytest.raises(PairingRefused) as wrong:
            approve_pairing(store, directory(), admin, "slack", "AAAA-AAAA", "alice", clock.now, RULES)
        clock.now += timedelta(seconds=1)
    assert "pairing is now locked for 15 minutes" in str(wrong.value)
    with pytest.raises(PairingRefused, match="is locked until"):
        approve_pairing(store, directory(), admin, "slack", code, "alice", clock.now, RULES)
    locked = await refused(gate, from_slack(slack_key, "U-OTHER"))
    assert "locked after too many wrong codes" in locked.remedy
    clock.now += timedelta(seconds=RULES.lockout_s)
    fresh = code_in((await refused(gate, from_slack(slack_key, "U-OTHER"))).remedy)
    approve_pairing(store, directory(), admin, "slack", fresh, "bob", clock.now, RULES)
    assert store.link("acme", "slack", "U-OTHER").user == "bob"


async def test_a_flood_of_strangers_cannot_grow_the_pending_codes(store: IdentityStore, directory: DirectorySource,
                                                                  clock: Clock, slack_key: str) -> None:
    gate = Gatekeeper(NoTokens(), store, directory, clock, PairingRules(max_pending=2))
    for who in ("U1", "U2"):
        code_in((await refused(gate, from_slack(slack_key, who))).remedy)
    assert "too many pairing requests are waiting" in (await refused(gate, from_slack(slack_key, "U3"))).remedy


def test_every_change_to_who_may_speak_goes_to_the_outbox_once_and_never_with_a_key_or_code(
        gate: Gatekeeper, store: IdentityStore, directory: DirectorySource) -> None:
    _, key = store.create_service_account("acme", "teams-bot", ("teams",), START, "ops (local CLI)")
    assert store.revoke_service_account("acme", "teams-bot", START, "ops (local CLI)")
    assert not store.revoke_service_account("acme", "teams-bot", START, "ops (local CLI)")  # nothing changed
    store.add_link("acme", "slack", "U1", "alice", "email verified by slack", START)
    assert store.remove_link("acme", "slack", "U1", START, "carol")
    request = store.request_pairing("acme", "slack", "U2", START, RULES)
    with pytest.raises(PairingRefused):
        approve_pairing(store, directory(), carol(directory), "slack", "ZZZZ-ZZZZ", "bob", START)
    approve_pairing(store, directory(), carol(directory), "slack", request.code, "bob", START)
    changes = store.unpublished_changes()
    assert [(c.action, c.actor, c.subject) for c in changes] == [
        ("service-account.created", "ops (local CLI)", "teams-bot"),
        ("service-account.revoked", "ops (local CLI)", "teams-bot"),
        ("link.added", "identity", "slack:U1"),
        ("link.removed", "carol", "slack:U1"),
        ("pairing.refused", "carol", "slack:?"),
        ("pairing.approved", "carol", "slack:U2")]
    written = " ".join(c.model_dump_json() for c in changes)
    assert parse_api_key(key)[1] not in written and request.code not in written and "ZZZZ" not in written
    store.mark_published([c.event_id for c in changes[:2]])
    assert [c.event_id for c in store.unpublished_changes()] == [c.event_id for c in changes[2:]]


def test_a_change_that_fails_leaves_no_trace_in_the_outbox(store: IdentityStore) -> None:
    store.create_service_account("acme", "slack-bot", ("slack",), START, "carol")
    with pytest.raises(ValueError, match="already has a service account named 'slack-bot'"):
        store.create_service_account("acme", "slack-bot", ("slack",), START, "carol")
    assert [c.action for c in store.unpublished_changes()] == ["service-account.created"]


def answer_from(key: str, who: str = "U123", tenant: str = "acme", platform: str = "slack"):
    from caduceus_contracts import ApprovalVouchRequested

    return ApprovalVouchRequested(tenant=tenant, call_id="c1", digest="ab" * 32, answer="approve", token=key,
                                  channel=f"{platform}:T1:{who}", platform=platform, platform_user=who)


def test_an_answer_is_vouched_for_only_for_a_linked_user_and_never_pairs_anyone(gate: Gatekeeper,
                                                                                store: IdentityStore,
                                                                                slack_key: str) -> None:
    with pytest.raises(Refused, match="not linked to a person.*does not count"):
        gate.vouch(answer_from(slack_key, "U-stranger"))
    assert store.link("acme", "slack", "U-stranger") is None
    store.add_link("acme", "slack", "U-carol", "carol", "pairing", START)
    account, user = gate.vouch(answer_from(slack_key, "U-carol"))
    assert (account.name, user) == ("slack-bot", "carol")


def test_a_key_vouches_only_in_its_tenant_and_for_its_platforms(gate: Gatekeeper, store: IdentityStore,
                                                                 slack_key: str) -> None:
    store.add_link("acme", "slack", "U-carol", "carol", "pairing", START)
    store.add_link("acme", "line", "U-carol", "carol", "pairing", START)
    with pytest.raises(Refused, match="belongs to tenant 'acme', not 'globex'"):
        gate.vouch(answer_from(slack_key, "U-carol", tenant="globex"))
    with pytest.raises(Refused, match="may not speak for line users"):
        gate.vouch(answer_from(slack_key, "U-carol", platform="line"))
    with pytest.raises(TokenRefused):
        gate.vouch(answer_from("cad_sa_0123456789abcdef_" + "x" * 43, "U-carol"))


def test_the_postgres_store_carries_on_after_postgresql_restarts(request: pytest.FixtureRequest) -> None:
    """PostgreSQL restarted (every connection dropped): the store connects again, reads and writes go on, and
    nothing written before is lost."""
    server = request.getfixturevalue("postgres_server")
    if server.restart is None:
        pytest.skip("this PostgreSQL cannot be restarted from the test (a container)")
    with server.database("identity") as url:
        store = IdentityStore(url)
        try:
            _, before = store.create_service_account("acme", "slack-bot", ("slack",), START, "carol")
            server.restart()
            assert store.authenticate(before) is not None  # a read on the new connection
            _, after = store.create_service_account("acme", "web-bot", ("web",), START, "carol")  # a write
            server.restart()
            assert {a.name for a in store.service_accounts("acme")} == {"slack-bot", "web-bot"}
            assert store.authenticate(after) is not None
        finally:
            store.close()
