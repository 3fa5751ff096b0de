"""Wiring: the broker, its subscribers and the decider, built the same way by `__main__` and tests."""

from __future__ import annotations

from dataclasses import dataclass

from faststream.nats import NatsBroker, NatsMessage

from caduceus_bus import EVENT_SUBSCRIBER, EventPublisher, make_broker
from caduceus_contracts import ensure_signer, subjects
from caduceus_policy.domain import PolicyEngine
from caduceus_policy.handlers import Decider, on_tool_requested
from caduceus_policy.keys import TrustedKeys
from caduceus_policy.rulefile import load_engine
from caduceus_policy.settings import PolicySettings

SERVICE = "policy"
HEALTH_SUBJECT = f"caduceus.health.{SERVICE}"


@dataclass(frozen=True)
class PolicyService:
    """A built (not yet started) policy service."""

    broker: NatsBroker
    publisher: EventPublisher
    decider: Decider
    settings: PolicySettings


def build(settings: PolicySettings, engine: PolicyEngine | None = None) -> PolicyService:
    """Load the rules (unless an engine is given), the keys, and register the subscribers.

    Raises RuleFileError when the rule file is missing or malformed.
    """
    engine = engine or load_engine(settings.policy_file)
    decider = Decider(
        engine=engine,
        keys=TrustedKeys(settings.keys_dir),
        signer=ensure_signer(settings.keys_dir, SERVICE),
        workspaces_dir=settings.workspaces_dir,
        decision_ttl_s=settings.decision_ttl_s,
    )
    broker = make_broker(settings, SERVICE)
    publisher = EventPublisher(broker, settings, SERVICE)

    @broker.subscriber(subjects.TOOL_REQUESTED_ALL, queue=SERVICE, **EVENT_SUBSCRIBER)
    async def tool_requested(msg: NatsMessage) -> None:
        await on_tool_requested(msg.raw_message.subject, msg.body, publisher, decider)

    # Registered last: once it answers, the subscriptions before it are in place.
    @broker.subscriber(HEALTH_SUBJECT)
    async def health(msg: NatsMessage) -> bytes:
        return b"ok"

    return PolicyService(broker=broker, publisher=publisher, decider=decider, settings=settings)
