"""Benchmark: the audit store's append, verify and export throughput on SQLite.

Consumer: the audit service itself (in this process) draining a JetStream backlog of
--events tool requests from a real nats-server into SQLite: fetch, parse, redact, chain,
commit, acknowledge, checkpoint; what the service sustains end to end.

Append: the same tool-request events (redacted bodies as the consumer stores them) appended
with chaining (`AuditStore.append_batch`: duplicate check, chain head, hash, insert) and,
as the baseline in the same run, inserted plainly into a table of the same shape, both in
batches of the consumer's default size. Also how fast the consumer turns messages into
entries (parse, redact, canonical JSON), which happens before either.

Verify: a chain of --records records (default 1,000,000) with a signed checkpoint every
1,000, bulk-inserted precomputed, then `verify_trail` (every hash recomputed, every
checkpoint's signature and fingerprints checked).

Export: the appended records read from the store and written in each format to a sink
that discards them (formatting and reading, not the network).

    python3 dev.py bench            # or: .venv/bin/python bench/audit_throughput.py
    --events N    events for the append and export measurements (default 20000)
    --records N   records in the chain verified (default 1000000)

Writes bench/results/audit-throughput-<date>.md and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from governed_roundtrip import machine
from sqlalchemy import MetaData, insert

from caduceus_audit import AuditStore
from caduceus_audit.adapters.store import RecordFilter, chained_row
from caduceus_audit.adapters.tables import RECORDS
from caduceus_audit.app import build
from caduceus_audit.domain.chain import GENESIS_HASH
from caduceus_audit.domain.checkpoints import checkpoint_for
from caduceus_audit.domain.entries import AuditEntry, entry_for_message
from caduceus_audit.exporting import FORMATS, Export, Formatter
from caduceus_audit.settings import AuditSettings
from caduceus_audit.verify import verify_trail
from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    AuditCheckpointed,
    Keyring,
    SessionGrant,
    SignedCheckpoint,
    SignedGrant,
    Signer,
    ToolCallRequested,
    call_digest,
    subjects,
)
from caduceus_embedded.ports import free_port
from caduceus_embedded.servers import start_nats

RESULTS = Path(__file__).parent / "results"
BATCH = AuditSettings.model_fields["audit_batch_size"].default  # the consumer's (CADUCEUS_AUDIT_BATCH_SIZE)
MAX_BATCH = 1000  # its largest
ROUNDS = 3  # cheap measurements are repeated and the best kept: other work on the machine only slows a run down
CHECKPOINT_EVERY = 1000
BUILD_BATCH = 20_000


class Discard:
    """A sink that drops what it is sent: export measured without the network."""

    def send(self, items: Sequence[Any]) -> None:
        pass

    def close(self) -> None:
        pass


def tool_request_messages(n: int) -> list[tuple[str, bytes, dict[str, str]]]:
    """n tool requests as they travel on the bus: subject, JSON body, headers (message id, trace context)."""
    identity, now = Signer.generate("identity"), datetime.now(UTC)
    grant = SignedGrant.issue(identity, SessionGrant(tenant="acme", workspace="default", user="alice",
                                                     roles=("member",), channel="cli", session_id="s1", issued_at=now,
                                                     expires_at=now + timedelta(hours=1)))
    messages = []
    for i in range(n):
        args = {"command": f"grep -rn 'needle {i}' src/ | head -50", "timeout": 30}
        session = f"s{i % 50}"
        event = ToolCallRequested(tenant="acme", grant=grant, workspace="default", session_id=session, tool="terminal",
                                  args=args, digest=call_digest(tenant="acme", workspace="default", session=session,
                                                                tool="terminal", args=args))
        headers = {"Nats-Msg-Id": event.event_id, "traceparent": f"00-{i + 1:032x}-{i + 1:016x}-01"}
        messages.append((subjects.tool_requested("acme"), event.model_dump_json().encode(), headers))
    return messages


def entries_of(messages: list[tuple[str, bytes, dict[str, str]]]) -> list[AuditEntry]:
    """What the consumer makes of each message before appending it: parsed, redacted, canonical."""
    now = datetime.now(UTC)
    return [entry_for_message(subject, data, headers, stream_seq=n, received_at=now)
            for n, (subject, data, headers) in enumerate(messages, 1)]


def measure_consumer(messages: list[tuple[str, bytes, dict[str, str]]], work: Path) -> float:
    """Publish the messages as a backlog, then time the audit service draining it; returns events/s."""
    port = free_port()
    nats = start_nats(port, work / "nats", work / "nats.log")
    try:
        return asyncio.run(_drain(f"nats://127.0.0.1:{port}", messages, work))
    finally:
        nats.stop()


async def _drain(nats_url: str, messages: list[tuple[str, bytes, dict[str, str]]], work: Path) -> float:
    conn = await EventConnection.connect(BusSettings(nats_url=nats_url), "bench-publisher")
    await conn.ensure_stream()
    pending = [await conn.js.publish_async(subject, data, headers=headers) for subject, data, headers in messages]
    await asyncio.gather(*pending)
    await conn.close()
    store = AuditStore(f"sqlite:///{work}/consumer.db")
    service = build(AuditSettings(nats_url=nats_url, state_dir=work, audit_db_url=f"sqlite:///{work}/consumer.db",
                                  audit_fetch_timeout_s=0.2))
    started = time.perf_counter()  # start() consumes at once: connecting and binding count, a few ms
    await service.start()
    while await asyncio.to_thread(store.count) < len(messages):
        await asyncio.sleep(0.1)
    elapsed = time.perf_counter() - started
    await service.stop()
    store.close()
    return len(messages) / elapsed


def append_chained(entries: list[AuditEntry], db: Path, batch: int) -> float:
    """Append in batches with chaining; returns events/s."""
    chained = AuditStore(f"sqlite:///{db}")
    chained.ensure_schema()
    started = time.perf_counter()
    for start in range(0, len(entries), batch):
        chained.append_batch(entries[start:start + batch])
    elapsed = time.perf_counter() - started
    assert chained.verify_chain("acme").ok
    chained.close()
    return len(entries) / elapsed


def append_plain(entries: list[AuditEntry], db: Path) -> float:
    """The same rows inserted into a table of the same shape, same batches, no chaining; returns events/s."""
    plain = AuditStore(f"sqlite:///{db}")
    plain.ensure_schema()
    table = RECORDS.to_metadata(MetaData(), name="plain_record")
    table.create(plain.engine)
    now = datetime.now(UTC)
    started = time.perf_counter()
    for start in range(0, len(entries), BATCH):
        rows = [{"tenant": e.tenant, "seq": start + n + 1, "event_id": e.event_id, "kind": e.kind,
                 "subject": e.subject, "session_id": e.session_id, "call_id": e.call_id, "trace_id": e.trace_id,
                 "occurred_at": e.occurred_at, "recorded_at": now, "body": e.body, "rejected": e.rejected,
                 "reject_reason": e.reject_reason, "prev_hash": "", "hash": ""}
                for n, e in enumerate(entries[start:start + BATCH])]
        with plain.database.writing() as conn:
            conn.execute(insert(table), rows)
    elapsed = time.perf_counter() - started
    plain.close()
    return len(entries) / elapsed


def measure_append(entries: list[AuditEntry], work: Path) -> dict[str, float]:
    """Chained and plain appends, alternated ROUNDS times on fresh files; the best of each (the machine is shared)."""
    rates: dict[str, list[float]] = {"chained": [], "plain": [], "chained_large": []}
    for round_ in range(ROUNDS):
        rates["chained"].append(append_chained(entries, work / f"chained-{round_}.db", BATCH))
        rates["plain"].append(append_plain(entries, work / f"plain-{round_}.db"))
        rates["chained_large"].append(append_chained(entries, work / f"chained-large-{round_}.db", MAX_BATCH))
    return {name: max(values) for name, values in rates.items()}


def measure_intake(messages: list[tuple[str, bytes, dict[str, str]]]) -> tuple[list[AuditEntry], float]:
    best, entries = 0.0, []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        entries = entries_of(messages)
        best = max(best, len(messages) / (time.perf_counter() - started))
    return entries, best


def measure_export(db: Path, count: int) -> dict[str, float]:
    store = AuditStore(f"sqlite:///{db}")
    rates = {}
    for fmt in FORMATS:
        run = Export(store, RecordFilter(), Formatter(fmt, hostname="bench"), Discard())
        started = time.perf_counter()
        run.catch_up()
        run.finish()
        assert run.exported == count
        rates[fmt] = count / (time.perf_counter() - started)
    store.close()
    return rates


def build_chain(store: AuditStore, records: int, signer: Signer) -> float:
    """Bulk-insert a chain of precomputed records with a signed checkpoint every CHECKPOINT_EVERY; returns seconds."""
    started, moment = time.perf_counter(), datetime(2026, 1, 1, tzinfo=UTC)
    body = ('{"args":{"command":"ls -la"},"call_id":"c","digest":"' + "d" * 64 + '","kind":"tool.requested",'
            '"session_id":"s1","tenant":"acme","tool":"terminal","workspace":"default","text":"' + "x" * 200 + '"}')
    prev_hash, rows, hashes = GENESIS_HASH, [], []
    for seq in range(1, records + 1):
        at = moment + timedelta(milliseconds=seq)
        entry = AuditEntry(tenant="acme", event_id=f"e{seq}", kind="tool.requested",
                           subject="cad.v1.tool.requested.acme", session_id="s1", call_id=f"c{seq}",
                           occurred_at=at, body=body, trace_id=f"{seq:032x}")
        row = chained_row(entry, seq, prev_hash, at)
        prev_hash = row["hash"]
        rows.append(row)
        hashes.append((seq, prev_hash))
        if seq % CHECKPOINT_EVERY == 0:
            checkpoint = checkpoint_for("acme", seq - CHECKPOINT_EVERY, hashes, at)
            store.checkpoints.add(AuditCheckpointed.of(SignedCheckpoint.issue(signer, checkpoint)))
            hashes = []
        if len(rows) == BUILD_BATCH or seq == records:
            with store.database.writing() as conn:
                conn.execute(insert(RECORDS), rows)
            rows = []
    return time.perf_counter() - started


def measure_verify(work: Path, records: int) -> tuple[float, float]:
    signer = Signer.generate("audit")
    keyring = Keyring()
    keyring.trust("audit", signer.private_key.public_key())
    store = AuditStore(f"sqlite:///{work}/verify.db")
    store.ensure_schema()
    build_s = build_chain(store, records, signer)
    started = time.perf_counter()
    (verdict,) = verify_trail(store, keyring)
    verify_s = time.perf_counter() - started
    assert verdict.ok and verdict.records == records and verdict.checkpoints == records // CHECKPOINT_EVERY, verdict
    store.close()
    return build_s, verify_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events appended and exported")
    parser.add_argument("--records", type=int, default=1_000_000, help="records in the chain verified")
    options, _others = parser.parse_known_args()  # `dev.py bench ARGS` hands every benchmark the same arguments
    load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    try:
        messages = tool_request_messages(options.events)
        entries, intake = measure_intake(messages)
        consumer = measure_consumer(messages, work)
        append = measure_append(entries, work)
        export = measure_export(work / "chained-0.db", options.events)
        build_s, verify_s = measure_verify(work, options.records)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        "# Audit store throughput (SQLite)",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `python3 dev.py bench` (bench/audit_throughput.py --events {options.events} "
        f"--records {options.records})",
        f"- SQLite in WAL mode on local disk, as the embedded stack runs it; load average {load:.1f} when it started "
        "(the machine is shared: rates move with it)",
        "",
        "| measurement | rate | note |",
        "|---|---|---|",
        f"| audit service, end to end | {consumer:,.0f} events/s | draining a JetStream backlog of {options.events:,}: "
        f"fetch, parse, redact, chain, commit, acknowledge (batches of {BATCH}) |",
        f"| append, chained | {append['chained']:,.0f} events/s | `append_batch` in batches of {BATCH}: duplicate "
        "check, chain head, hash over every column, insert |",
        f"| append, plain insert (baseline) | {append['plain']:,.0f} events/s | the same rows, same table shape, "
        f"same batches, no chaining |",
        f"| chaining cost | {append['plain'] / append['chained']:.2f}x | plain over chained |",
        f"| append, chained, batches of {MAX_BATCH} | {append['chained_large']:,.0f} events/s | the largest "
        "CADUCEUS_AUDIT_BATCH_SIZE: fewer commits (each one a disk sync) |",
        f"| messages to entries | {intake:,.0f} events/s | parse, redact, canonical JSON (before either append) |",
        f"| verify | {options.records / verify_s:,.0f} records/s | {options.records:,} records and "
        f"{options.records // CHECKPOINT_EVERY:,} signed checkpoints in {verify_s:.1f} s "
        f"(data set bulk-built in {build_s:.1f} s) |",
        *(f"| export {fmt} | {rate:,.0f} records/s | read from the store, formatted, discarded |"
          for fmt, rate in export.items()),
        "",
        f"How to read it: chained and plain appends run in the same process on the same events, alternated "
        f"{ROUNDS} times (best of each shown), so their ratio is what the tamper-evidence costs on this machine. "
        "The service end to end is what one audit process sustains: a JetStream fetch, then parsing and redacting "
        "(\"messages to entries\"), then the chained append and its commit, then the acknowledgements, one batch "
        "after another; the chaining is the smallest of those costs. Verify includes reading every row back from "
        "SQLite.",
    ]
    report = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"audit-throughput-{datetime.now(UTC):%Y-%m-%d}.md"
    out.write_text(report)
    print(report)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
