"""From inside a running planner's sandbox, the only model endpoint is the inference gateway: the scripted model
(and the gateway's own port) are not reachable around it, and the channel the planner does have needs a session
grant, so a compromised planner cannot spend the model without policy deciding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from caduceus_client import ChatClient
from caduceus_identity.devtoken import mint_dev_token

pytestmark = pytest.mark.timeout(240)


def planner_pids(state_dir: Path) -> list[int]:
    """Planner processes of this stack (their environment names its state dir), inside their sandbox's network
    namespace (not bubblewrap's own process on the host, whose command line names the planner too)."""
    found = []
    host_net = os.readlink("/proc/self/ns/net")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if b"caduceus_broker.planner" in command and str(state_dir).encode() in environ and \
                os.readlink(entry / "ns" / "net") != host_net:
            found.append(int(entry.name))
    return found


def environment_of(pid: int) -> dict[str, str]:
    pairs = (item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item)
    return {key.decode(): value.decode() for key, value in pairs}


PROBE = """
import json, socket, sys, urllib.request, urllib.error
targets, base = json.loads(sys.argv[1]), sys.argv[2]
out = {}
for name, (host, port) in targets.items():
    try:
        socket.create_connection((host, port), timeout=3).close(); out[name] = "reached"
    except OSError as exc:
        out[name] = f"refused: {exc}"
def ask(key):
    request = urllib.request.Request(base + "/chat/completions", method="POST", headers={
        "content-type": "application/json", "authorization": "Bearer " + key},
        data=json.dumps({"model": "scripted", "messages": [{"role": "user", "content": "hello"}]}).encode())
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return [reply.status, reply.read().decode()]
    except urllib.error.HTTPError as exc:
        return [exc.code, exc.read().decode()]
out["channel_with_model_key"] = ask("scripted")
out["channel_with_no_grant"] = ask("cadgrant_eyJmb3JnZWQiOnRydWV9")
print(json.dumps(out))
"""


async def test_the_planner_reaches_no_model_but_through_the_gateway_and_the_gateway_wants_a_grant(stack) -> None:
    chat = await ChatClient.connect(stack.info.bus_settings("client"))
    try:
        reply = await chat.send(tenant="acme", token=mint_dev_token(stack.info.dev_issuer_url, "acme", "alice"),
                                text="hello", timeout=180)
    finally:
        await chat.close()
    assert reply.reply.status == "ok" and "scripted model" in reply.reply.text  # a model answered, via the gateway
    (pid, *_) = planner_pids(stack.layout.root)
    base = environment_of(pid)["CADUCEUS_MODEL_BASE_URL"]
    relay_host = base.split("//", 1)[1].split(":", 1)[0]  # the relay's loopback address in the sandbox
    targets = {"scripted_model": ("127.0.0.1", stack.ports.model),
               "scripted_model_at_the_relay_address": (relay_host, stack.ports.model),
               "gateway_port": ("127.0.0.1", stack.ports.inference), "nats": ("127.0.0.1", stack.ports.nats)}
    # the planner's network namespace, as code running in the planner would see it
    probe = subprocess.run(["nsenter", "-t", str(pid), "-n", sys.executable, "-c", PROBE, json.dumps(targets), base],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    for name in targets:
        assert seen[name].startswith("refused"), (name, seen[name])
    # the one channel it has is the gateway, which takes no model key and no forged grant
    for attempt in ("channel_with_model_key", "channel_with_no_grant"):
        status, body = seen[attempt]
        assert status == 401 and "session grant" in body, (attempt, status, body)
