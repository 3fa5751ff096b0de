"""Benchmark: how long a workspace is without an owner when its broker is killed, with two broker replicas.

The embedded stack (its broker is replica one) and a second broker process on the same bus and state; governed
`terminal` calls from a planner gateway (tests/ha_harness.py's GovernedLoad) run throughout. Each round kills the
workspace's owner with kill -9 and measures, from the kill:
- lease: until the other broker holds the workspace's lease (bounded below by CADUCEUS_LEASE_TTL_S);
- service: until the first call requested after the kill comes back ok (the new owner's pair started and ran it).
Baselines measured in the same run: the lease TTL itself, and the p50 of a governed call before any kill.
A killed stack broker is restarted by the stack; a killed second broker is started again, so each round has two.

    .venv/bin/python bench/broker_takeover.py [--rounds N] [--ttl S]   (default 3 rounds, TTL 10 s: the default)

Writes bench/results/broker-takeover-<date>.md and prints the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))


def machine() -> str:
    cpu = "unknown cpu"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores ({cpu}), {platform.platform()}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ttl", type=float, default=10.0, help="CADUCEUS_LEASE_TTL_S for both brokers")
    args = parser.parse_args()
    os.environ["CADUCEUS_LEASE_TTL_S"] = str(args.ttl)
    os.environ.pop("CADUCEUS_MODEL_BASE_URL", None)

    from ha_harness import GovernedLoad, holder_pid, start_second_broker

    from caduceus_embedded.ports import StackPorts
    from caduceus_embedded.stack import EmbeddedStack

    rows = []
    with tempfile.TemporaryDirectory(prefix="caduceus-takeover-") as tmp:
        stack = EmbeddedStack(Path(tmp) / "state", StackPorts.free())
        stack.start()
        second = start_second_broker(stack)
        load = GovernedLoad(stack)
        try:
            load.start()
            baseline = load.run(5, concurrency=2)
            call_p50 = statistics.median(r.latency_s for r in baseline if r.status == "ok")
            for number in range(args.rounds):
                owner = holder_pid(stack)
                stop = threading.Event()
                records: list = []

                def calls(stop: threading.Event = stop, records: list = records) -> None:
                    while not stop.is_set():
                        records.append(load.call())

                threads = [threading.Thread(target=calls, daemon=True) for _ in range(2)]
                for thread in threads:
                    thread.start()
                time.sleep(1.0)
                killed_at = time.monotonic()
                os.kill(owner, signal.SIGKILL)
                lease_s = None
                while time.monotonic() - killed_at < args.ttl + 60:
                    holder = holder_pid(stack)
                    if holder is not None and holder != owner:
                        lease_s = time.monotonic() - killed_at
                        break
                    time.sleep(0.1)
                # Until a call sent after the kill has come back ok, then a little more load.
                deadline = time.monotonic() + args.ttl + 90
                while time.monotonic() < deadline and not any(
                        r.sent_at > killed_at and r.status == "ok" for r in list(records)):
                    time.sleep(0.1)
                time.sleep(2.0)
                stop.set()
                for thread in threads:
                    thread.join(load.decision_s + load.completion_s + 10)
                served = [r.answered_at - killed_at for r in records
                          if r.sent_at > killed_at and r.status == "ok" and r.answered_at is not None]
                tally = load.tally(records)
                rows.append({"round": number + 1, "lease_s": lease_s, "service_s": min(served) if served else None,
                             "sent": tally.sent, "answered": tally.answered, "twice": tally.executed_twice,
                             "statuses": dict(tally.statuses), "killed": "stack's" if owner != second.pid
                             else "second"})
                if owner == second.pid:  # the stack restarts its own broker; the second one is started again
                    second = start_second_broker(stack, f"broker-2-{number + 2}")
                else:
                    time.sleep(3.0)
        finally:
            load.close()
            second.terminate()
            try:
                second.process.wait(15)
            except Exception:
                second.kill()
            stack.stop()

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    table = ["| round | broker killed | lease taken s | first ok call s | vs TTL | calls sent | answered | "
             "executed twice | outcomes |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = f"{row['lease_s'] / args.ttl:.2f}x" if row["lease_s"] is not None else "-"
        table.append(f"| {row['round']} | {row['killed']} | {fmt(row['lease_s'])} | {fmt(row['service_s'])} | "
                     f"{ratio} | {row['sent']} | {row['answered']} | {row['twice']} | {row['statuses']} |")
    now = datetime.now(UTC)
    command = f".venv/bin/python bench/broker_takeover.py --rounds {args.rounds} --ttl {args.ttl:g}"
    text = "\n".join([
        "# Broker takeover after the owner is killed (two broker replicas)", "",
        f"- date: {now:%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `{command}`",
        f"- baselines, same run: lease TTL {args.ttl:g} s (`CADUCEUS_LEASE_TTL_S`); p50 of a governed call before "
        f"any kill {call_p50 * 1e3:.0f} ms",
        "- load: governed `terminal` calls from 2 threads (tests/ha_harness.py), throughout each round", "",
        *table, "",
        "How to read it: *lease taken* is from the kill -9 to the other broker holding the workspace's lease: the "
        "TTL (the killed owner's last renewal can be up to a quarter TTL before the kill) plus up to one second of "
        "the survivor's lease watch. *first ok call* is from the kill to the first call requested after the kill "
        "coming back ok: the lease, then the new owner starting the workspace's planner and executor in their "
        "sandboxes, then the call. Calls in flight at the kill are answered with an error (dispatched) or a refusal "
        "(decided too long ago); *executed twice* must be 0.",
    ])
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"broker-takeover-{now:%Y-%m-%d}.md"
    out.write_text(text + "\n")
    print(text)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
