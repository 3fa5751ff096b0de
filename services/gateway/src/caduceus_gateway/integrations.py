"""Chat platforms the gateway serves beside the web chat (Slack, ...): each one is an `Integration`, started once
the gateway is on the bus and handed the relay, drained on SIGTERM while the bus still works, stopped before it
leaves.

An integration turns its platform's messages into `Relay.turn()` calls with a `Speaker` (the integration's
service-account key and the platform user, a channel name that keeps shared channels' memory apart) and shows
the updates on its platform. It never decides anything: identity admits the speaker, policy and approvers decide.
Approvers' answers from a platform go to the approval desk as `ApprovalAnswered` (the gateway may publish them).
"""

from __future__ import annotations

from typing import Protocol

from caduceus_gateway.relay import Relay
from caduceus_gateway.settings import GatewaySettings


class Integration(Protocol):
    name: str

    async def start(self, relay: Relay) -> None:
        """Begin serving the platform (connect, listen); raise to stop the gateway from starting, saying why."""

    async def drain(self, within_s: float) -> None:
        """On SIGTERM, with the bus still up: take no new message, give the turns in progress up to `within_s`
        for their replies, and tell the people of those still unanswered then that the reply was cut off.
        Optional: an integration without it is simply stopped once the web chat has drained."""

    async def stop(self) -> None:
        """Stop serving and release what `start` took."""


def configured_integrations(settings: GatewaySettings) -> list[Integration]:
    """The integrations the settings turn on (none yet besides the web chat, which the gateway serves itself)."""
    return []
