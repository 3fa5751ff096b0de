"""Benchmark: one chat turn with one tool call, end to end, through the web chat vs through `caduceus chat`.

Web chat: a signed-in browser session (HTTP, as tests/test_webchat.py drives it) posts the message with the
conversation's event stream open; timed from the POST until the reply arrives on the stream. Baselines, in the
same run against the same stack, interleaved turn by turn: the client library's `ChatClient.send` (what
`caduceus chat` does once started) and the `caduceus chat` command itself (a new process per turn, as a person
runs it). The turn is the scripted model's `noop`: one `todo` call, decided by policy, then the reply.

    .venv/bin/python bench/webchat_turn.py [--turns N]   (default 20)

Writes bench/results/webchat-turn-<date>.md and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx

RESULTS = Path(__file__).parent / "results"
MESSAGE = "noop"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": statistics.median(samples) * 1e3, "p90_ms": percentile(samples, 0.9) * 1e3,
            "mean_ms": statistics.fmean(samples) * 1e3}


class WebChat:
    def __init__(self, base_url: str) -> None:
        self.base = base_url
        self.http = httpx.AsyncClient(follow_redirects=False, timeout=60)
        self.csrf = ""

    async def sign_in(self, tenant: str, user: str) -> None:
        authorize = (await self.http.get(f"{self.base}/login")).headers["location"]
        params = dict(parse_qsl(urlsplit(authorize).query))
        chosen = await self.http.post(authorize.split("?")[0], data={**params, "who": f"{tenant}/{user}"})
        await self.http.get(chosen.headers["location"])
        self.csrf = re.search(r'data-csrf="([^"]+)"', (await self.http.get(f"{self.base}/")).text).group(1)

    async def conversation(self) -> str:
        made = await self.http.post(f"{self.base}/c", data={"csrf": self.csrf, "workspace": "default"})
        return made.headers["location"].rsplit("/", 1)[1]

    async def turn(self, conversation: str) -> float:
        connected, calls = asyncio.Event(), []
        started = 0.0

        async def follow() -> float:
            async with self.http.stream("GET", f"{self.base}/c/{conversation}/events",
                                        timeout=httpx.Timeout(60, read=None)) as stream:
                async for line in stream.aiter_lines():
                    if line.startswith(": connected"):
                        connected.set()
                    elif line.startswith("data: "):
                        update = json.loads(line[6:])
                        calls.append(update["kind"])
                        if update["kind"] == "reply":
                            if update["status"] != "ok" or "call" not in calls:
                                raise RuntimeError(f"unexpected web chat turn: {update} after {calls}")
                            return time.perf_counter() - started
            raise RuntimeError("the event stream ended before the reply")

        following = asyncio.create_task(follow())
        await asyncio.wait_for(connected.wait(), 10)
        started = time.perf_counter()
        sent = await self.http.post(f"{self.base}/c/{conversation}/messages", json={"text": MESSAGE},
                                    headers={"X-CSRF-Token": self.csrf})
        sent.raise_for_status()
        return await asyncio.wait_for(following, 120)


async def client_turn(client, token: str, session: str) -> float:
    started = time.perf_counter()
    transcript = await client.send(tenant="acme", token=token, text=MESSAGE, session_id=session, timeout=120,
                                   watch=True)
    elapsed = time.perf_counter() - started
    if transcript.reply.status != "ok" or len(transcript.calls) != 1:
        raise RuntimeError(f"unexpected client turn: {transcript.reply} with {len(transcript.calls)} calls")
    return elapsed


def cli_turn(state_dir: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).parent / "caduceus"), "chat", "--tenant", "acme", "--user",
                           "alice", "--state-dir", str(state_dir), "--json", MESSAGE],
                          capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"caduceus chat failed: {done.stderr or done.stdout}")
    return elapsed


async def run(stack, turns: int) -> dict[str, list[float]]:
    from caduceus_client import ChatClient
    from caduceus_identity.devtoken import mint_dev_token

    web = WebChat(stack.info.webchat_url)
    await web.sign_in("acme", "alice")
    conversation = await web.conversation()
    client = await ChatClient.connect(stack.info.bus_settings("client"))
    token = mint_dev_token(stack.info.dev_issuer_url, "acme", "alice")
    samples: dict[str, list[float]] = {"web chat": [], "client library": [], "caduceus chat": []}
    try:
        await web.turn(conversation)  # warm-up: starts the acme/default worker pair
        await client_turn(client, token, "bench-client")
        for _ in range(turns):
            samples["web chat"].append(await web.turn(conversation))
            samples["client library"].append(await client_turn(client, token, "bench-client"))
            samples["caduceus chat"].append(await asyncio.to_thread(cli_turn, stack.layout.root))
    finally:
        await client.close()
        await web.http.aclose()
    return samples


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores ({cpu}), {platform.platform()}, Python {platform.python_version()}"


def main() -> None:
    from caduceus_embedded.ports import StackPorts
    from caduceus_embedded.stack import EmbeddedStack

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=20, help="turns of each kind")
    options = parser.parse_args()
    stack = EmbeddedStack(Path(tempfile.mkdtemp(prefix="bench-webchat-")), StackPorts.free(),
                          on_progress=lambda line: print(f"  {line}", file=sys.stderr))
    stack.start()
    try:
        samples = asyncio.run(run(stack, options.turns))
    finally:
        stack.stop()
    stats = {name: summary(values) for name, values in samples.items()}
    base = stats["client library"]["p50_ms"]
    lines = [
        "# A chat turn with one tool call: web chat vs `caduceus chat`",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `.venv/bin/python bench/webchat_turn.py --turns {options.turns}`",
        f"- turns of each kind: {options.turns}, interleaved, one conversation each, against one embedded stack "
        "(every service on this machine); the turn is the scripted model's `noop` (one `todo` call allowed by "
        "policy, then the reply)",
        "",
        "| path | p50 ms | p90 ms | mean ms | p50 vs client library |",
        "|---|---|---|---|---|",
    ]
    for name, s in stats.items():
        lines.append(f"| {name} | {s['p50_ms']:.0f} | {s['p90_ms']:.0f} | {s['mean_ms']:.0f} | "
                     f"{s['p50_ms'] / base:.2f}x |")
    lines += [
        "",
        "How to read it: every path runs the same turn through identity, the broker, the planner, policy and "
        "the executor; the web chat adds the browser's HTTP POST, the gateway's publish and the relay to the event "
        "stream. The client library is what `caduceus chat` does once its process is up; the `caduceus chat` row "
        "is the command as a person runs it, a new Python process per turn (its start-up is most of the difference). "
        "`ChatClient.send` waits 0.2 s after the reply for the turn's last outcome events (so does `caduceus chat`), "
        "which is why the web chat, timed to the reply itself, comes out ahead of it.",
    ]
    report = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"webchat-turn-{datetime.now(UTC):%Y-%m-%d}.md"
    out.write_text(report)
    print(report)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
