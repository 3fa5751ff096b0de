"""The gateway service serves Slack when `<state>/slack.yaml` exists: the Events API at the web chat's
`/slack/events`, on a real nats-server, against a local Slack Web API; a broken file stops it, saying where."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from caduceus_bus import BusSettings, ConfigurationError, EventConnection
from caduceus_contracts import ChatMessageIn, ChatReply, parse_event, subjects
from caduceus_gateway.app import build
from caduceus_gateway.settings import GatewaySettings
from caduceus_gateway.slack.testing import FakeSlack, deliver_event, dm, event_body, free_port, serve_fake_slack

pytestmark = pytest.mark.timeout(60)
TENANTS = "tenants:\n  acme:\n    display_name: Acme\n    users:\n      alice: {email: alice@acme.example, roles: [member]}\n"
SLACK = ("workspaces:\n  T0ACME:\n    tenant: acme\n    bot_token: env:ACME_BOT\n    signing_secret: env:ACME_SECRET\n"
         "    service_account_key: env:ACME_KEY\n")


def settings(tmp_path: Path, nats_url: str, api_url: str) -> GatewaySettings:
    (tmp_path / "tenants.yaml").write_text(TENANTS)
    return GatewaySettings(state_dir=tmp_path, nats_url=nats_url, web_port=free_port(), slack_api_url=api_url)


async def test_the_gateway_answers_slack_at_its_web_chat_url(nats_server, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ACME_BOT", "xoxb-acme")
    monkeypatch.setenv("ACME_SECRET", "acme-secret")
    monkeypatch.setenv("ACME_KEY", "cad_sa_acme")
    (tmp_path / "slack.yaml").write_text(SLACK)
    slack = FakeSlack(teams={"xoxb-acme": "T0ACME"})
    api, api_url = await serve_fake_slack(slack)
    config = settings(tmp_path, nats_server.url, api_url)
    service = build(config)
    identity = await EventConnection.connect(BusSettings(nats_url=nats_server.url), "identity-stand-in")

    async def reply(msg) -> None:
        message = parse_event(msg.data, expect=ChatMessageIn)
        await identity.publish(subjects.chat_reply(message.tenant, message.session_id),
                               ChatReply(tenant=message.tenant, message_id=message.message_id,
                                         session_id=message.session_id, text=f"hello {message.platform_user}"))

    await identity.subscribe(subjects.CHAT_IN_ALL, reply)
    await service.start()
    try:
        response = await deliver_event(f"{config.web_url}/slack/events", "acme-secret",
                                       event_body("T0ACME", dm("T0ACME", "U1", "hi", "5.1")))
        assert response.status_code == 200
        posted = await slack.until("chat.postMessage", channel="DU1", thread_ts="5.1")
        assert posted[0]["text"] == "hello T0ACME:U1"
    finally:
        await service.stop()
        await identity.close()
        await api.stop()


async def test_a_broken_slack_yaml_stops_the_gateway_with_its_problems(nats_server, tmp_path: Path) -> None:
    (tmp_path / "slack.yaml").write_text("workspaces:\n  T0ACME:\n    tenant: acme\n    bot_token: xoxb-in-the-file\n")
    service = build(settings(tmp_path, nats_server.url, "http://127.0.0.1:9/api/"))
    with pytest.raises(ConfigurationError) as refused:
        await asyncio.wait_for(service.start(), 30)
    await service.stop()
    assert "Slack cannot start" in str(refused.value)
    assert "line 4: workspace T0ACME: `bot_token` must be a secret reference" in str(refused.value)
