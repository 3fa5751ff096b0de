"""When a chain is checkpointed, and what the checkpoint says (pure)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from caduceus_contracts import ChainCheckpoint
from caduceus_contracts.models import FINGERPRINT_HEX, HASH_PATTERN

_HASH = re.compile(HASH_PATTERN)


class ChainDamaged(ValueError):
    """The records to checkpoint cannot be vouched for as they are: the chain was tampered with."""


class ChainGap(ChainDamaged):
    """The records to checkpoint are not numbered one after another."""


def checkpoint_due(*, head: int, checkpointed: int, waiting_s: float, every: int, interval_s: float) -> bool:
    """True when a chain has records past its last checkpoint and either enough of them or for long enough."""
    pending = head - checkpointed
    return pending > 0 and (pending >= every or waiting_s >= interval_s)


def checkpoint_for(tenant: str, prev_seq: int, hashes: Sequence[tuple[int, str]], issued_at: datetime) -> ChainCheckpoint:
    """The checkpoint of records after `prev_seq` given their (seq, hash) in order. Raises ChainDamaged."""
    expected = list(range(prev_seq + 1, prev_seq + 1 + len(hashes)))
    if not hashes or [seq for seq, _ in hashes] != expected:
        raise ChainGap(f"records of {tenant!r} after {prev_seq} are not numbered one after another")
    for seq, hash_hex in hashes:
        if not isinstance(hash_hex, str) or not _HASH.fullmatch(hash_hex):
            raise ChainDamaged(f"record {seq} of {tenant!r} holds no valid hash")
    return ChainCheckpoint(tenant=tenant, seq=hashes[-1][0], hash=hashes[-1][1], prev_seq=prev_seq,
                           fingerprints="".join(hash_hex[:FINGERPRINT_HEX] for _, hash_hex in hashes),
                           issued_at=issued_at)
