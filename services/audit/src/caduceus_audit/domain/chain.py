"""The per-tenant hash chain (pure): how a record's hash is made and how a chain is checked.

Each record's hash covers its place (tenant, seq), its identity (event_id, kind,
subject), its stored body and the previous record's hash, so editing, deleting,
inserting or reordering records breaks the chain at the first record touched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from caduceus_contracts import canonical_json

GENESIS_HASH = "0" * 64


def record_hash(*, tenant: str, seq: int, event_id: str, kind: str, subject: str, body: str, prev_hash: str) -> str:
    """SHA-256 (hex) over the RFC 8785 canonical JSON of one record's chained fields."""
    payload = {"tenant": tenant, "seq": seq, "event_id": event_id, "kind": kind, "subject": subject,
               "body": body, "prev_hash": prev_hash}
    return hashlib.sha256(canonical_json(payload)).hexdigest()


class ChainLink(Protocol):
    tenant: str
    seq: int
    event_id: str
    kind: str
    subject: str
    body: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class ChainVerdict:
    """The outcome of checking one tenant's chain: where it first breaks, and why, if it does."""

    ok: bool
    first_bad_seq: int | None
    reason: str

    def as_tuple(self) -> tuple[bool, int | None, str]:
        return self.ok, self.first_bad_seq, self.reason


def verify_links(tenant: str, links: Iterable[ChainLink]) -> ChainVerdict:
    """Recompute a tenant's chain from its records in seq order; report the first record that breaks it."""
    expected_seq, prev_hash = 1, GENESIS_HASH
    for link in links:
        if link.tenant != tenant:
            return ChainVerdict(False, link.seq, f"record {link.seq} belongs to tenant {link.tenant!r}, not {tenant!r}")
        if link.seq != expected_seq:
            return ChainVerdict(False, expected_seq,
                                f"expected record {expected_seq} but found {link.seq}: records missing or reordered")
        if link.prev_hash != prev_hash:
            return ChainVerdict(False, link.seq, f"record {link.seq} does not link to record {link.seq - 1}")
        recomputed = record_hash(tenant=link.tenant, seq=link.seq, event_id=link.event_id, kind=link.kind,
                                 subject=link.subject, body=link.body, prev_hash=link.prev_hash)
        if recomputed != link.hash:
            return ChainVerdict(False, link.seq, f"record {link.seq} was changed after it was stored (hash mismatch)")
        expected_seq, prev_hash = expected_seq + 1, link.hash
    count = expected_seq - 1
    return ChainVerdict(True, None, f"chain of tenant {tenant!r} intact: {count} record{'s' if count != 1 else ''}")
