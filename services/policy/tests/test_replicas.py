"""Policy replicas on a real nats-server: shared rate limits and budgets, hot reload under traffic, shadow mode,
unreadable requests still answered, and the decision bound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg

from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    ErrorEvent,
    ModelUsage,
    PolicyShadowDisagreed,
    SessionGrant,
    SignedGrant,
    Signer,
    ToolCallDecided,
    ToolCallRequested,
    call_digest,
    ensure_signer,
    parse_event,
    subjects,
    utcnow,
)
from caduceus_policy.adapters.packs import LIVE, SHADOW, PackStore
from caduceus_policy.app import PolicyService, build
from caduceus_policy.domain import Verdict
from caduceus_policy.facts import RequestFacts
from caduceus_policy.handlers import DecisionService
from caduceus_policy.limits import counter_key
from caduceus_policy.settings import PolicySettings

pytestmark = pytest.mark.timeout(120)


def pack(version: str, *, terminal: str = "allow", limit: int = 5, extra_rules: str = "") -> dict[str, str]:
    return {"policy.yaml": f"""
version: "{version}"
tenants:
  acme:
    rules:
      - {{id: shell-{version}, effect: {terminal}, tools: [terminal]}}
      - {{id: todo, effect: allow, tools: [todo]}}
{extra_rules}    limits:
      - {{id: shell-rate, tools: [terminal], per: user, max_calls: {limit}, window: 1m}}
      - {{id: daily-tokens, per: user, max_tokens: 1000, window: 24h}}
"""}


def call(identity: Signer, tool: str, args: dict[str, Any], *, user: str = "alice") -> ToolCallRequested:
    now = utcnow()
    grant = SessionGrant(tenant="acme", workspace="default", user=user, roles=("member",), channel="cli",
                         session_id="sess-r", issued_at=now, expires_at=now + timedelta(minutes=5))
    digest = call_digest(tenant="acme", workspace="default", session="sess-r", tool=tool, args=args)
    return ToolCallRequested(tenant="acme", grant=SignedGrant.issue(identity, grant), workspace="default",
                             session_id="sess-r", tool=tool, args=args, digest=digest)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("replicas")
    (root / "policy.yaml").write_text(pack("r1")["policy.yaml"])
    ensure_signer(root / "keys", "identity")
    return root


@pytest.fixture(scope="module")
def identity(state: Path) -> Signer:
    return ensure_signer(state / "keys", "identity")


@pytest.fixture(scope="module")
async def replicas(nats_server: Any, state: Path) -> AsyncIterator[list[PolicyService]]:
    """Two policy services of one deployment: same buckets, same queue group, same stream consumer."""
    services = []
    for _ in range(2):
        settings = PolicySettings(nats_url=nats_server.url, state_dir=state, packs_bucket="replica_packs",
                                  limits_bucket="replica_limits", usage_consumer="replica-usage")
        service = build(settings)
        await service.start()
        services.append(service)
    yield services
    for service in services:
        await service.stop()


@pytest.fixture(scope="module")
async def bus(nats_server: Any, replicas: list[PolicyService]) -> AsyncIterator[EventConnection]:
    conn = await EventConnection.connect(BusSettings(nats_url=nats_server.url), "replica-tests")
    await conn.ensure_stream()
    yield conn
    await conn.nc.close()  # not drain: draining waits out the subscriptions the tests already dropped


async def collect(bus: EventConnection, subject: str, kind: type) -> tuple[list, Any]:
    seen: list = []

    async def on(msg: Msg) -> None:
        seen.append(parse_event(msg.data, expect=kind))

    subscription = await bus.subscribe(subject, on)
    await bus.nc.flush()
    return seen, subscription


async def test_two_replicas_share_one_rate_limit(replicas: list[PolicyService], identity: Signer) -> None:
    verdicts = []
    for index in range(8):
        decided = await replicas[index % 2].decisions.decide(call(identity, "terminal", {"command": "ls"}, user="rita"))
        verdicts.append((decided.decision.decision.verdict, decided.decision.decision.policy_ids))
    assert [v for v, _ in verdicts] == ["allow"] * 5 + ["deny"] * 3
    assert verdicts[-1][1] == ("limit:shell-rate",)
    # Another user has their own window.
    other = await replicas[1].decisions.decide(call(identity, "terminal", {"command": "ls"}, user="sam"))
    assert other.decision.decision.verdict == "allow"


async def test_concurrent_calls_on_both_replicas_never_pass_the_limit(replicas: list[PolicyService],
                                                                      identity: Signer) -> None:
    requests = [call(identity, "terminal", {"command": f"echo {i}"}, user="tess") for i in range(16)]
    decided = await asyncio.gather(*(replicas[i % 2].decisions.decide(r) for i, r in enumerate(requests)))
    assert sum(d.decision.decision.verdict == "allow" for d in decided) == 5


async def test_a_replica_reads_the_shared_counter_again_before_refusing_a_call(replicas: list[PolicyService],
                                                                            identity: Signer,
                                                                            bus: EventConnection) -> None:
    # Replicas charge the counter as they last saw it; what they remember must never refuse a call by itself.
    def decide(index: int):  # type: ignore[no-untyped-def]
        return replicas[index % 2].decisions.decide(call(identity, "terminal", {"command": "ls"}, user="wendy"))

    verdicts = [(await decide(0)).decision.decision.verdict for _ in range(6)]
    assert verdicts == ["allow"] * 5 + ["deny"]
    limit = next(limit for limit in replicas[0].decider.engine.pack.tenants["acme"].limits if limit.kind == "calls")
    key = counter_key("acme", limit.id, limit.scope(tenant="acme", user="wendy", tool="terminal", workspace="default"))
    store = await bus.js.key_value("replica_limits")
    await store.purge(key)  # an operator resets wendy's counter on the bus
    assert [(await decide(i)).decision.decision.verdict for i in range(6)] == ["allow"] * 5 + ["deny"]


async def test_token_budgets_count_usage_events_from_the_bus(replicas: list[PolicyService], identity: Signer,
                                                             bus: EventConnection) -> None:
    assert (await replicas[0].decisions.decide(call(identity, "todo", {}, user="uma"))).decision.decision.verdict \
        == "allow"
    for tokens in (400, 700):
        await bus.publish(subjects.model_usage("acme"), ModelUsage(
            tenant="acme", workspace="default", session_id="sess-r", user="uma", model="m", prompt_tokens=tokens))
    deadline = time.monotonic() + 10
    while True:
        decision = (await replicas[1].decisions.decide(call(identity, "todo", {}, user="uma"))).decision.decision
        if decision.verdict == "deny" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert (decision.verdict, decision.policy_ids) == ("deny", ("limit:daily-tokens",))
    assert "1000 tokens per user per 1d" in decision.reason


async def test_hot_reload_under_traffic_loses_no_decision(replicas: list[PolicyService], identity: Signer,
                                                          bus: EventConnection) -> None:
    decided, decided_sub = await collect(bus, subjects.TOOL_DECIDED_ALL, ToolCallDecided)
    errors, errors_sub = await collect(bus, "cad.v1.error._system.policy", ErrorEvent)
    store = await PackStore.open(bus.js, "replica_packs")
    sent: list[str] = []

    async def traffic() -> None:
        for index in range(150):
            request = call(identity, "todo", {"n": index}, user=f"load-{index % 7}")
            sent.append(request.call_id)
            await bus.publish(subjects.tool_requested("acme"), request)
            await asyncio.sleep(0.004)

    async def reloads() -> None:
        for version in ("r2", "r3"):
            await asyncio.sleep(0.15)
            await store.publish(LIVE, version, pack(version))
        await asyncio.sleep(0.1)
        await store.publish(LIVE, "broken", {"policy.yaml": 'version: "broken"\ntenants: {acme: {rules: [{}]}}\n'})

    await asyncio.gather(traffic(), reloads())
    deadline = time.monotonic() + 10
    ours = set(sent)
    while time.monotonic() < deadline and len({d.call_id for d in decided if d.call_id in ours}) < len(sent):
        await asyncio.sleep(0.05)
    await decided_sub.unsubscribe()
    await errors_sub.unsubscribe()
    mine = [d for d in decided if d.call_id in ours]
    assert sorted(d.call_id for d in mine) == sorted(sent)  # every call decided exactly once
    assert all(d.decision.decision.verdict == "allow" for d in mine)
    versions = [d.decision.decision.pack_version for d in mine]
    assert set(versions) <= {"r1", "r2", "r3"} and versions[-1] == "r3"
    # The broken pack was refused by both replicas, which kept r3 and said why.
    assert {replica.decider.engine.version for replica in replicas} == {"r3"}
    assert any("published live pack rejected (keeping r3)" in e.reason and "give the rule an `id`" in e.reason
               for e in errors)


async def test_a_shadow_pack_records_disagreements_and_never_decides(replicas: list[PolicyService],
                                                                      identity: Signer, bus: EventConnection) -> None:
    store = await PackStore.open(bus.js, "replica_packs")
    await store.publish(SHADOW, "candidate", pack("candidate", terminal="deny", limit=1000))
    deadline = time.monotonic() + 10
    while any(r.decider.packs.shadow is None for r in replicas) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    disagreements, subscription = await collect(bus, subjects.policy_shadow("acme"), PolicyShadowDisagreed)
    live = await replicas[0].decisions.decide(call(identity, "terminal", {"command": "ls"}, user="vic"))
    same = await replicas[1].decisions.decide(call(identity, "todo", {}, user="vic"))
    deadline = time.monotonic() + 5
    while not disagreements and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await subscription.unsubscribe()
    assert live.decision.decision.verdict == "allow" and same.decision.decision.verdict == "allow"
    assert [(d.call_id, d.live_verdict, d.shadow_verdict, d.shadow_version, d.shadow_policy_ids)
            for d in disagreements] == [(live.call_id, "allow", "deny", "candidate", ("shell-candidate",))]
    await store.clear(SHADOW)
    deadline = time.monotonic() + 10
    while any(r.decider.packs.shadow is not None for r in replicas) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert all(r.decider.packs.shadow is None for r in replicas)


async def test_an_unreadable_request_that_names_its_call_gets_a_signed_deny(replicas: list[PolicyService],
                                                                            identity: Signer,
                                                                            bus: EventConnection) -> None:
    decided, subscription = await collect(bus, subjects.TOOL_DECIDED_ALL, ToolCallDecided)
    valid = call(identity, "todo", {"x": "PLACEHOLDER"})
    invalid_utf8 = valid.model_dump_json().encode().replace(b"PLACEHOLDER", b"\xff\xfe")
    deep = call(identity, "todo", {"x": "PLACEHOLDER"})
    too_deep = deep.model_dump_json().replace('"PLACEHOLDER"', "[" * 300 + "]" * 300).encode()
    for body in (invalid_utf8, too_deep):
        await bus.js.publish(subjects.tool_requested("acme"), body)
    deadline = time.monotonic() + 10
    while len([d for d in decided if d.call_id in (valid.call_id, deep.call_id)]) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await subscription.unsubscribe()
    reasons = {d.call_id: d.decision.decision for d in decided}
    assert reasons[valid.call_id].verdict == "deny"
    assert reasons[valid.call_id].reason == "the request could not be read: the message is not valid UTF-8"
    assert reasons[deep.call_id].verdict == "deny" and "recursion limit" in reasons[deep.call_id].reason
    assert reasons[deep.call_id].digest == deep.digest


class SlowEngine:
    """An engine stuck on a pathological input."""

    version = "slow.1"

    def decide(self, request: RequestFacts) -> Verdict:
        time.sleep(0.5)
        return Verdict("allow", "too late")


async def test_a_decision_not_made_within_the_bound_is_a_deny(replicas: list[PolicyService], identity: Signer) -> None:
    decider = replicas[0].decider
    from caduceus_policy.handlers import Decider

    slow = Decider(SlowEngine(), decider.keys, decider.signer, decider.workspaces_dir)
    service = DecisionService(slow, replicas[0].publisher, deadline_s=0.05)
    started = time.monotonic()
    decision = (await service.decide(call(identity, "todo", {}))).decision.decision
    assert time.monotonic() - started < 0.4
    assert (decision.verdict, decision.policy_ids) == ("deny", ("caduceus:deadline",))
    assert decision.reason == "policy could not decide within 50 ms; denied (fail closed)"
