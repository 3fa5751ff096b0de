"""A complete chat integration for a platform Caduceus has no gateway for, in one file, with the client library.

The "platform" here is a line protocol on stdin, `<platform user>: <message>`, so it runs anywhere; a real one
replaces `read_messages()` with the platform's SDK and `print` with its send call. Everything Caduceus needs is
in `handle()`: the integration's service-account key (identity checks it, and that it may speak for the
platform), the platform user who wrote, one conversation per user, and that user's own channel (part of the
memory scope). It decides nothing: an unpaired user gets pairing instructions as the reply, approvals are
notices, and the agent's answer is the reply.

    caduceus identity service-account create --tenant acme --name line-bot --platform line   # prints the key
    echo "U42: hello" | python examples/minimal_integration.py --tenant acme --platform line --key cad_sa_... \\
        --creds <state dir>/keys/nats/client.creds
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from caduceus_bus import BusSettings
from caduceus_client import ChatClient


def read_messages() -> Iterator[tuple[str, str]]:
    """(platform user, text) for each `user: text` line on stdin."""
    for line in sys.stdin:
        user, sep, text = line.partition(":")
        if sep and user.strip() and text.strip():
            yield user.strip(), text.strip()


async def handle(client: ChatClient, args: argparse.Namespace, user: str, text: str) -> str:
    """One platform message in, the agent's reply (or why not) out; notices are shown as they arrive."""
    conversation = re.sub(r"[^A-Za-z0-9_-]", "-", f"{args.platform}-{user}")[:100]
    transcript = await client.send(
        tenant=args.tenant, token=args.key, text=text, session_id=conversation,
        channel=f"dm:{args.platform}:{user}", platform=args.platform, platform_user=user,
        on_notice=lambda notice: print(f"[{user}] (notice) {notice.text}", flush=True), timeout=args.timeout)
    assert transcript.reply is not None
    return transcript.reply.text


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--platform", required=True, help="the platform the service account may speak for")
    parser.add_argument("--key", required=True, help="the service account's API key (cad_sa_...)")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222", help="the bus")
    parser.add_argument("--creds", type=Path, help="the integration's bus credential (.creds)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a reply")
    args = parser.parse_args()
    client = await ChatClient.connect(BusSettings(nats_url=args.nats, nats_credentials=args.creds),
                                      name=f"caduceus-{args.platform}-integration")
    try:
        for user, text in read_messages():
            print(f"[{user}] {await handle(client, args, user, text)}", flush=True)
    finally:
        await client.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
