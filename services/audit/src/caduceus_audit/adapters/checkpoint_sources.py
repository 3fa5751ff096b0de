"""Checkpoints held outside the audit database: an exported JSONL file, or the event stream on the bus.

A database administrator can rewrite the chains and the checkpoint table together; they
cannot rewrite a file someone else keeps or the JetStream stream, nor sign with the audit
key. Verifying against these is what detects a rewritten history that is internally
consistent.
"""

from __future__ import annotations

from pathlib import Path

import nats
import nats.errors
from nats.js.api import DeliverPolicy

from caduceus_bus import BusSettings, CredentialsUnreadable, auth_options
from caduceus_contracts import AuditCheckpointed, ContractError, parse_event, subjects

# How long reading the stream waits for the next checkpoint it knows is there, and for NATS to answer at all.
BUS_READ_TIMEOUT_S = 5.0


class CheckpointSourceError(Exception):
    """A checkpoint file or the bus could not be read; the message says what to do."""


def write_checkpoint_file(path: Path, events: list[AuditCheckpointed]) -> None:
    """Export checkpoints as JSONL, one checkpoint event per line (what `read_checkpoint_file` reads)."""
    path.write_text("".join(event.model_dump_json() + "\n" for event in events), encoding="utf-8")


def read_checkpoint_file(path: Path) -> list[AuditCheckpointed]:
    """Every checkpoint of an exported file (`caduceus audit checkpoints`); signatures are checked later."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointSourceError(f"cannot read the checkpoint file {path}: {exc}") from None
    found = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = parse_event(line, expect=AuditCheckpointed)
        except ContractError as exc:
            raise CheckpointSourceError(f"{path} line {number} is not a checkpoint event ({exc}): export checkpoints "
                                        "with `caduceus audit checkpoints --output FILE`") from None
        assert isinstance(event, AuditCheckpointed)
        found.append(event)
    return found


async def read_bus_checkpoints(settings: BusSettings, tenant: str | None = None) -> list[AuditCheckpointed]:
    """Every checkpoint the event stream holds (of one tenant), read with a throwaway ordered consumer.

    Reading the stream takes a credential allowed to create a consumer on it (the embedded stack's
    `operator` one); a chat client's can only watch checkpoints as they are published.
    """
    subject = subjects.audit_checkpoint(tenant) if tenant else subjects.AUDIT_CHECKPOINT_ALL
    try:
        credentials = auth_options(settings)
    except CredentialsUnreadable as exc:
        raise CheckpointSourceError(str(exc)) from None
    try:
        # One attempt, not the services' reconnect-forever: a verifier must say it cannot reach the bus.
        nc = await nats.connect(settings.nats_servers, name="caduceus-audit-verify", allow_reconnect=False,
                                max_reconnect_attempts=1, reconnect_time_wait=0.1, error_cb=_quiet,
                                connect_timeout=BUS_READ_TIMEOUT_S, **credentials)
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise CheckpointSourceError(f"cannot reach NATS at {settings.nats_url} to read checkpoints ({exc}): pass "
                                    "--nats-url, or leave out --bus") from None
    try:
        return await _read_stream(nc.jetstream(timeout=BUS_READ_TIMEOUT_S), settings.stream_name, subject)
    except (TimeoutError, nats.errors.Error) as exc:
        raise CheckpointSourceError(f"reading checkpoints from stream {settings.stream_name} failed ({exc})") from None
    finally:
        await nc.close()


async def _quiet(_error: Exception) -> None:
    """Connection errors are reported once, as a CheckpointSourceError, not logged with a traceback per attempt."""


async def _read_stream(js: nats.js.JetStreamContext, stream: str, subject: str) -> list[AuditCheckpointed]:
    info = await js.stream_info(stream, subjects_filter=subject)
    count = sum((info.state.subjects or {}).values())
    if not count:
        return []
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    found = []
    try:
        for _ in range(count):
            msg = await sub.next_msg(timeout=BUS_READ_TIMEOUT_S)
            try:
                event = parse_event(msg.data, expect=AuditCheckpointed, subject=msg.subject)
            except ContractError:
                continue  # the audit service kept it as a rejected record; it vouches for nothing
            assert isinstance(event, AuditCheckpointed)
            found.append(event)
    finally:
        await sub.unsubscribe()
    return found
