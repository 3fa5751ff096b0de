"""Wiring: the decider, the shared counters and the pack sync around the route table in handlers.py.

Built the same way by `__main__` and tests: `build(settings)` then `await service.start()`.
"""

from __future__ import annotations

import logging
from functools import partial

from caduceus_bus import BusService, EventConnection, Pull
from caduceus_contracts import ensure_signer, subjects
from caduceus_policy.adapters.counters import SharedCounters
from caduceus_policy.adapters.packs import LIVE, PackStore, PublishedPack
from caduceus_policy.adapters.turns import TurnRecords
from caduceus_policy.domain import PolicyEngine
from caduceus_policy.engine import load_engine
from caduceus_policy.handlers import ROUTES, Decider, DecisionService, answer_reachable
from caduceus_policy.keys import TrustedKeys
from caduceus_policy.settings import PolicySettings

SERVICE = ROUTES.role
HEALTH_SUBJECT = ROUTES.health_subject
log = logging.getLogger(__name__)


class PolicyService(BusService):
    """The policy decision point on the bus: decides requests, counts usage, follows published packs."""

    table = ROUTES

    def __init__(self, settings: PolicySettings, engine: PolicyEngine | None = None) -> None:
        super().__init__(settings)
        self.settings = settings
        engine = engine or load_engine(settings.policy_file)
        self.decider = Decider(engine, TrustedKeys(settings.keys_dir), ensure_signer(settings.keys_dir, SERVICE),
                               settings.workspaces_dir, settings.decision_ttl_s,
                               follow_symlinks=settings.follow_symlinks)
        self.decisions = DecisionService(self.decider, None, deadline_s=settings.decide_timeout_ms / 1000,  # type: ignore[arg-type]
                                         mcp_timeout_s=settings.mcp_facts_timeout_s)
        self.routes = (self.routes
                       .tuned(subjects.TOOL_REQUESTED_ALL, concurrency=settings.decide_concurrency)
                       .tuned(subjects.MODEL_USAGE_ALL, delivery=Pull(settings.usage_consumer, batch=64)))
        self.pack_store: PackStore | None = None
        # A decision in hand when stopping is answered: it can take the engine's whole bound.
        self.drain_s = settings.decide_timeout_ms / 1000 + 5

    @property
    def publisher(self) -> EventConnection:
        assert self.connection is not None, "start() the service first"
        return self.connection

    @property
    def deciding(self) -> set:
        """Requests being decided now."""
        return self.router.in_flight if self.router is not None else set()

    async def prepare(self, connection: EventConnection) -> DecisionService:
        """Make sure the KV buckets exist, sync packs, then hand the routes the decision service."""
        self.decisions.publisher = connection
        self.decisions.counters = await SharedCounters.open(connection.js, self.settings.limits_bucket,
                                                           replicas=self.settings.stream_replicas)
        self.decisions.turns = await TurnRecords.open(connection.js, self.settings.turns_bucket,
                                                      replicas=self.settings.stream_replicas)
        if self.settings.packs_from_bus:
            await sync_packs(self, await PackStore.open(connection.js, self.settings.packs_bucket,
                                                            replicas=self.settings.stream_replicas))
        await connection.nc.subscribe(subjects.POLICY_REACHABLE_ALL, queue="policy",
                                      cb=partial(answer_reachable, self.decider))
        return self.decisions

    async def cleanup(self) -> None:
        if self.pack_store is not None:
            await self.pack_store.stop()
            self.pack_store = None


def build(settings: PolicySettings, engine: PolicyEngine | None = None) -> PolicyService:
    """Load the pack (unless an engine is given) and the keys. Raises PackError when the pack is missing or invalid."""
    return PolicyService(settings, engine)


async def sync_packs(service: PolicyService, store: PackStore) -> None:
    """Seed the bus with our pack if none is live, then follow every published change."""
    service.pack_store = store
    packs = service.decider.packs
    engine_pack = getattr(packs.live, "pack", None)
    if engine_pack is not None and await store.seed(packs.live.version, engine_pack.files):
        log.info("published pack %s from %s as the live pack", packs.live.version, service.settings.policy_file)

    async def on_update(key: str, pack: PublishedPack | None, problem: str | None) -> None:
        before = (packs.live.version, packs.shadow.version if packs.shadow else None)
        refused = packs.apply(key, pack, problem)
        if refused is not None:
            log.error("%s", refused)
            await service.publisher.refuse(f"$KV.{service.settings.packs_bucket}.{key}", b"", refused)
            return
        after = (packs.live.version, packs.shadow.version if packs.shadow else None)
        if after != before:
            log.info("policy packs now: live %s, shadow %s", *after)

    current = None
    try:
        current = await store.get(LIVE)
    except ValueError as exc:
        await on_update(LIVE, None, f"not a published pack: {exc}")
    if current is not None:
        await on_update(LIVE, current, None)
    await store.watch(on_update)
