"""A stand-in Caduceus service for the stack tests: a real process that connects to NATS and answers its
health subject, like every service does.

Environment: STANDIN_NAME (its service name), STANDIN_MODE (`ok`; `exit` to fail at start as a misconfigured
service does, exit 3; `slow-bus` to fail at start with exit 1 as a service whose bus timed out does, the first
STANDIN_FAILURES times, counted in the file STANDIN_COUNT),
CADUCEUS_NATS_CREDENTIALS (its bus credential, which the stack issues for its role). It refuses to
start when the signing keys are not in CADUCEUS_KEYS_DIR yet (the stack must make them first). A request on
`standin.crash.<name>` makes it die with exit code 5, as a crashing service would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import nats


async def main() -> int:
    name = os.environ["STANDIN_NAME"]
    if os.environ.get("STANDIN_MODE") == "exit":
        print(f"standin {name}: cannot open its database, giving up", flush=True)
        return 3
    if os.environ.get("STANDIN_MODE") == "slow-bus":
        count = Path(os.environ["STANDIN_COUNT"])
        failed = int(count.read_text()) if count.exists() else 0
        if failed < int(os.environ.get("STANDIN_FAILURES", "1")):
            count.write_text(str(failed + 1))
            print(f"standin {name} stopped: nats: timeout", flush=True)
            return 1
    keys = Path(os.environ["CADUCEUS_KEYS_DIR"])
    missing = [issuer for issuer in ("identity", "policy", "approval") if not (keys / f"{issuer}.pub").exists()]
    if missing:
        print(f"standin {name}: no public key for {missing} in {keys}", flush=True)
        return 4
    nc = await nats.connect(os.environ["CADUCEUS_NATS_URL"].split(","), name=f"standin-{name}",
                            user_credentials=os.environ["CADUCEUS_NATS_CREDENTIALS"],
                            inbox_prefix=f"_INBOX.{name}")
    done = asyncio.Event()
    crashed = False

    async def health(msg) -> None:
        await msg.respond(b"ok")

    async def crash(msg) -> None:
        nonlocal crashed
        crashed = True
        done.set()

    await nc.subscribe(f"caduceus.health.{name}", cb=health)
    await nc.subscribe(f"standin.crash.{name}", cb=crash)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    print(f"standin {name}: ready", flush=True)
    await done.wait()
    await nc.close()
    print(f"standin {name}: {'crashing' if crashed else 'stopped'}", flush=True)
    return 5 if crashed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
