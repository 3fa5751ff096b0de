"""The gateway's relay as a chat integration uses it (Slack does), on the running stack: an integration the
gateway starts holds a whole turn through `Relay.turn()`, with the gateway's own bus credential; a platform user
speaking through a service-account key is only admitted once paired; and that credential cannot publish a
decision, an admitted turn, a reply or an approval outcome."""

from __future__ import annotations

import logging

import pytest
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus_embedded.testing import connect_recording_errors
from caduceus_gateway import GatewayService, GatewaySettings, Relay, Speaker
from caduceus_identity.devtoken import mint_dev_token

pytestmark = pytest.mark.timeout(240)


class RecordingIntegration:
    """An integration as small as can be: it keeps the relay the gateway hands it."""

    name = "test"

    def __init__(self) -> None:
        self.relay: Relay | None = None
        self.stopped = False

    async def start(self, relay: Relay) -> None:
        self.relay = relay

    async def stop(self) -> None:
        self.stopped = True


async def test_an_integration_holds_a_turn_through_the_relay_and_an_unpaired_user_gets_no_agent(
        stack, tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    """... and an integration with no `drain` (written before drains existed) stops cleanly with the gateway."""
    bus = stack.bus_settings("gateway")
    settings = GatewaySettings(nats_url=bus.nats_url, nats_credentials=bus.nats_credentials, state_dir=tmp_path,
                               tenants_file=stack.layout.tenants_file, web_port=0)
    integration = RecordingIntegration()
    gateway = GatewayService(settings, [integration])
    await gateway.start()
    try:
        assert integration.relay is gateway.relay
        alice = Speaker(tenant="acme", token=mint_dev_token(stack.info.dev_issuer_url, "acme", "alice"),
                        channel="dm:test:alice")
        updates = [u async for u in integration.relay.turn(alice, "s-relay-alice", "noop", timeout_s=120)]
        assert [u.kind for u in updates] == ["call", "decision", "outcome", "reply"]
        assert (updates[0].tool, updates[1].status, updates[-1].text) == ("todo", "allow", "done")

        created = CliRunner().invoke(app, ["identity", "service-account", "create", "--tenant", "acme", "--name",
                                           "relay-test", "--platform", "chatter", "--state-dir", str(stack.layout.root)])
        assert created.exit_code == 0, created.output
        stranger = Speaker(tenant="acme", token=created.output.strip().splitlines()[-1], channel="dm:chatter:U9",
                           platform="chatter", platform_user="U9")
        refused = [u async for u in integration.relay.turn(stranger, "s-relay-stranger", "noop", timeout_s=60)]
        assert [(u.kind, u.status) for u in refused] == [("reply", "refused")]
        assert "pairing code" in refused[0].text
    finally:
        await gateway.stop()
    assert integration.stopped
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("forged", ["cad.v1.tool.decided.acme", "cad.v1.turn.requested.acme",
                                    "cad.v1.chat.reply.acme.s-1", "cad.v1.approval.resolved.acme",
                                    "cad.v1.tool.dispatched.acme.default"])
async def test_the_gateways_credential_cannot_decide_admit_or_answer_for_anyone(stack, forged: str) -> None:
    gateway = await connect_recording_errors(stack.nats_url, stack.bus_settings("gateway"))
    try:
        await gateway.nc.publish("cad.v1.chat.in.acme", b"{}")  # what it is for (identity refuses this one)
        assert await gateway.violations() == []
        await gateway.nc.publish(forged, b"{}")
        assert await gateway.violations(), f"the gateway could publish on {forged}"
    finally:
        await gateway.nc.close()
