"""Every service of a running stack answers /healthz, /readyz and Prometheus /metrics, and the metrics move with
what the stack does: a governed turn shows up as decisions by verdict and rule, dispatched calls, handled
messages and the audit trail's lag."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from caduceus.commands.demo import DEMO_MESSAGE
from caduceus_client import ChatClient
from caduceus_embedded.ports import SERVICE_HTTP_ORDER
from caduceus_identity.devtoken import mint_dev_token

pytestmark = pytest.mark.timeout(240)


def samples(base_url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics: (name, labels) -> value."""
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def total(found: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, have), value in found.items() if sample == name and wanted <= have)


def test_every_service_is_live_and_ready(stack) -> None:
    urls = stack.info.metrics_urls
    assert set(urls) == set(SERVICE_HTTP_ORDER)
    for service, url in urls.items():
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200, service
        ready = httpx.get(f"{url}/readyz", timeout=5)
        assert ready.status_code == 200, (service, ready.text)
        assert ready.json()["ready"] is True and ready.json()["checks"]["bus"] == "ok"
    assert httpx.get(f"{urls['audit']}/readyz", timeout=5).json()["checks"]["database"] == "ok"


async def test_a_governed_turn_moves_the_metrics(stack) -> None:
    urls = stack.info.metrics_urls
    before = {service: samples(url) for service, url in urls.items()}
    client = await ChatClient.connect(stack.info.bus_settings("client"))
    try:
        token = mint_dev_token(stack.info.dev_issuer_url, "acme", "alice")
        turn = await client.send(tenant="acme", token=token, text=DEMO_MESSAGE, watch=True, timeout=120)
    finally:
        await client.close()
    assert turn.reply.status == "ok"
    after = {service: samples(url) for service, url in urls.items()}

    def grew(process: str, name: str, **labels: str) -> float:
        return total(after[process], name, **labels) - total(before[process], name, **labels)

    # The demo's turn: one call allowed (and run), one denied by the rule that keeps writes in the workspace.
    assert grew("policy", "caduceus_policy_decisions_total", verdict="allow") >= 1
    assert grew("policy", "caduceus_policy_decisions_total", verdict="deny", rule="writes-stay-in-workspace") >= 1
    assert grew("policy", "caduceus_policy_decision_seconds_count") >= 2
    assert grew("policy", "caduceus_messages_total", subject="cad.v1.tool.requested.*", outcome="handled") >= 2
    assert grew("broker", "caduceus_broker_calls_dispatched_total") >= 1
    assert grew("broker", "caduceus_broker_call_outcomes_total", status="ok") >= 1
    assert total(after["broker"], "caduceus_broker_workers_running") >= 1
    assert grew("audit", "caduceus_messages_total", service="audit", outcome="handled") >= 1
    assert ("caduceus_audit_lag_events", frozenset()) in after["audit"]
    assert total(after["identity"], "caduceus_bus_connected", service="identity") == 1


DASHBOARD = Path(__file__).resolve().parents[1] / "infra/grafana/caduceus-dashboard.json"


async def test_every_metric_the_grafana_dashboard_shows_is_one_the_stack_serves(stack) -> None:
    expressions = [target["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for target in panel["targets"]]
    wanted = {name for expr in expressions for name in re.findall(r"caduceus_[a-z_]+", expr)}
    assert {"caduceus_policy_decisions_total", "caduceus_audit_lag_events", "caduceus_approvals_open"} <= wanted

    def served() -> set[str]:
        return {name for url in stack.info.metrics_urls.values() for name, _ in samples(url)}

    # Checkpoints are signed within a second of new records here (the stack fixture's interval).
    async with asyncio.timeout(30):
        while not wanted <= served():
            await asyncio.sleep(0.5)

