"""Identity and memory on the running stack, through the CLI a person uses: whoami, tenants apply,
a chat integration's pairing, and memory kept to its scope (a direct message's secret never reaches
another person or a group channel)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import nats
import pytest
import yaml
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus_audit import AuditStore
from caduceus_bus import auth_options
from caduceus_client import ChatClient, TurnTranscript
from caduceus_contracts import subjects
from caduceus_identity.devtoken import mint_dev_token

pytestmark = pytest.mark.timeout(300)
runner = CliRunner()
SECRET = "the vault code is 4417-ZETA"


def cli(stack, *args: str):
    return runner.invoke(app, [*args, "--state-dir", str(stack.layout.root)])


def token_for(stack, user: str, tenant: str = "acme", **options) -> str:
    return mint_dev_token(stack.info.dev_issuer_url, tenant, user, **options)


def say(stack, user: str, text: str, channel: str, token: str | None = None, **fields) -> TurnTranscript:
    async def send() -> TurnTranscript:
        client = await ChatClient.connect(stack.info.bus_settings("client"))
        try:
            return await client.send(tenant="acme", token=token or token_for(stack, user), text=text, channel=channel,
                                     watch=True, timeout=180, **fields)
        finally:
            await client.close()

    return asyncio.run(send())


def applied(stack, tmp_path: Path, change) -> None:
    """Apply tenants.yaml changed by `change` with `caduceus tenants apply`."""
    data = yaml.safe_load((stack.layout.root / "tenants.yaml").read_text())
    change(data["tenants"])
    source = tmp_path / "tenants.yaml"
    source.write_text(yaml.safe_dump(data))
    result = cli(stack, "tenants", "apply", str(source))
    assert result.exit_code == 0, result.output


def test_whoami_shows_how_a_token_resolves_or_why_it_is_refused(stack) -> None:
    shown = cli(stack, "whoami", "--token", token_for(stack, "carol", roles=["acme-auditors"]))
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert "tenant: acme" in lines and "user: carol" in lines
    assert "roles: owner" not in shown.output and "roles: admin, member, guest, auditor" in lines
    assert "approval mode: set by the policy pack" in lines

    header, payload, signature = token_for(stack, "alice").split(".")
    tampered = cli(stack, "whoami", "--token", f"{header}.{payload}.{signature[::-1]}")
    assert tampered.exit_code == 1
    assert "refused: token signature does not match" in tampered.output
    elsewhere = cli(stack, "whoami", "--token", token_for(stack, "alice"), "--tenant", "globex")
    assert elsewhere.exit_code == 1 and "token is for tenant 'acme', not 'globex'" in elsewhere.output
    garbage = cli(stack, "whoami", "--token", "not-a-token")
    assert garbage.exit_code == 1 and "not a well-formed JWT" in garbage.output


def test_tenants_apply_refuses_a_broken_file_and_identity_follows_a_good_one(stack, tmp_path: Path) -> None:
    before = (stack.layout.root / "tenants.yaml").read_text()
    broken = tmp_path / "broken.yaml"
    broken.write_text("tenants:\n  acme:\n    display_name: Acme\n    users:\n      dana: {email: d@x, roles: [boss]}\n")
    refused = cli(stack, "tenants", "apply", str(broken))
    assert refused.exit_code == 1 and "unknown role(s) ['boss']" in refused.output
    assert (stack.layout.root / "tenants.yaml").read_text() == before

    refused_turn = say(stack, "dana", "hello", "cli", token="x.y.z")
    assert refused_turn.reply.status == "refused"
    applied(stack, tmp_path, lambda t: t["acme"]["users"].update(dana={"email": "dana@acme.example",
                                                                        "roles": ["guest"]}))
    listed = cli(stack, "tenants", "show", "acme")
    assert "dana" in listed.output and "guest" in listed.output
    welcome = say(stack, "dana", "hello", "cli")
    assert welcome.reply.status == "ok", welcome.reply.text


def test_a_chat_integration_pairs_a_stranger_once_an_admin_approves(stack) -> None:
    created = cli(stack, "identity", "service-account", "create", "--tenant", "acme", "--name", "slack-e2e",
                  "--platform", "slack")
    assert created.exit_code == 0, created.output
    key = created.output.strip().splitlines()[-1]
    assert key.startswith("cad_sa_")
    stranger = say(stack, "", "hello", "C-general", token=key, platform="slack", platform_user="U-E2E")
    assert stranger.reply.status == "refused"
    code = stranger.reply.text.split("pairing code ")[1][:9]
    denied = cli(stack, "identity", "pairing", "approve", "--tenant", "acme", "--code", code, "--user", "alice",
                 "--platform", "slack", "--token", token_for(stack, "bob"))
    assert denied.exit_code == 1 and "bob is not an owner or admin of tenant 'acme'" in denied.output
    approved = cli(stack, "identity", "pairing", "approve", "--tenant", "acme", "--code", code, "--user", "alice",
                   "--platform", "slack", "--token", token_for(stack, "carol"))
    assert approved.exit_code == 0, approved.output
    paired = say(stack, "", "hello", "C-general", token=key, platform="slack", platform_user="U-E2E")
    assert paired.reply.status == "ok", paired.reply.text
    revoked = cli(stack, "identity", "service-account", "revoke", "--tenant", "acme", "--name", "slack-e2e")
    assert revoked.exit_code == 0
    after = say(stack, "", "hello", "C-general", token=key, platform="slack", platform_user="U-E2E")
    assert after.reply.text.startswith("the service-account key is unknown or revoked")
    # Each change is in the audit trail, with who made it, and never the key or the code.
    store = AuditStore(stack.info.audit_db_url)
    wanted = [("service-account.created", "slack-e2e"), ("pairing.approved", "slack:U-E2E"),
              ("service-account.revoked", "slack-e2e")]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        changes = [json.loads(r.body) for r in store.records(tenant="acme") if r.kind == "identity.changed"]
        seen = [(c["action"], c["subject"]) for c in changes if "e2e" in c["subject"].lower()]
        if all(w in seen for w in wanted):
            break
        time.sleep(0.2)
    assert all(w in seen for w in wanted), seen
    approved_by = next(c["actor"] for c in changes if c["action"] == "pairing.approved")
    assert approved_by == "carol"
    leaks = [(r.kind, r.subject) for r in store.records(tenant="acme") if key in r.body or code in r.body]
    assert not leaks, f"the key or the pairing code is stored in: {leaks}"


def test_a_secret_told_in_a_direct_message_reaches_no_other_person_and_no_group_channel(stack, tmp_path: Path):
    applied(stack, tmp_path, lambda t: t["acme"].update(memory="channel"))
    told = say(stack, "alice", f"Remember that {SECRET}", "dm-alice")
    assert told.reply.status == "ok", told.reply.text
    memory_call = next(call for call in told.calls.values() if call.tool == "memory")
    assert memory_call.decision.verdict == "allow"  # decided by policy like any call
    assert memory_call.outcome.status == "ok" and memory_call.outcome.executed_by == "planner"

    bob = say(stack, "bob", "What do you remember?", "dm-bob")
    group = say(stack, "alice", "What do you remember?", "general")
    alice_again = say(stack, "alice", "What do you remember?", "dm-alice")
    assert bob.reply.text == "I remember: nothing"
    assert group.reply.text == "I remember: nothing"
    assert alice_again.reply.text == f"I remember: {SECRET}"

    scopes = stack.layout.workers / "acme" / "default" / "planner-home" / "memory-scopes"
    holding = sorted(str(path.relative_to(scopes)) for path in scopes.rglob("*.md") if SECRET in path.read_text())
    assert holding == ["channel/dm-alice/memories/MEMORY.md"]
    process_memory = scopes.parent / "memories"
    assert not any(SECRET in path.read_text() for path in process_memory.glob("*.md"))


def test_a_planner_credential_cannot_reach_beyond_its_tenant_on_the_running_stack(stack) -> None:
    async def attempt() -> list[str]:
        settings = stack.worker_bus_settings("planner", "acme", "default")
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        planner = await nats.connect(settings.nats_url, error_cb=on_error, allow_reconnect=False,
                                     **auth_options(settings))
        await planner.publish(subjects.tool_decided("acme"), b"{}")
        await planner.subscribe(subjects.chat_reply("globex", "s1"))
        await planner.flush()
        await asyncio.sleep(0.3)
        await planner.close()
        return [error for error in errors if "permissions violation" in error.lower()]

    assert len(asyncio.run(attempt())) == 2


async def test_running_workers_leave_no_bus_credential_on_disk_for_their_tools(stack) -> None:
    client = await ChatClient.connect(stack.info.bus_settings("client"))
    try:
        token = mint_dev_token(stack.info.dev_issuer_url, "acme", "alice")
        await client.send(tenant="acme", token=token, text="hello", timeout=120)  # the acme/default pair runs
    finally:
        await client.close()
    base = stack.layout.workers / "acme" / "default"
    homes = [base / "planner-home", base / "executor-home"]
    assert all(home.is_dir() for home in homes)
    left = [path for home in homes for path in home.rglob("*.creds")]
    assert not left, f"a worker's credential stayed readable in its sandbox: {left}"
