"""Turn records in JetStream KV, shared by every policy replica (the logic is in caduceus_policy.turns).

One key per turn holds its record; every change is a compare-and-set on the key's revision, retried
when another replica changed it first, so two replicas deciding calls of one turn at once never lose a
count. A replica remembers each record as it last wrote it and writes the next change against that revision
directly, reading the record first only when another replica changed it since (the write is refused then). A
second key per tool call remembers which turn and digest it belongs to, so the call's outcome
(`tool.completed`, which names neither) can be counted as a failure of that call. Records expire with
the bucket's age limit; a turn lasts minutes.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from caduceus_bus import create_key, open_bucket
from caduceus_policy.turns import TurnRecord

BUCKET = "caduceus_policy_turns"
RECORD_AGE_S = 86_400.0
CAS_ATTEMPTS = 50
MAX_REMEMBERED_TURNS = 10_000
T = TypeVar("T")


def _hashed(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]


def turn_key(tenant: str, turn_id: str) -> str:
    return f"{tenant}.t{_hashed(turn_id)}"


def call_key(tenant: str, call_id: str) -> str:
    return f"{tenant}.c{_hashed(call_id)}"


class TurnRecords:
    """Read-modify-write of turn records, and the call -> turn index."""

    def __init__(self, kv: KeyValue, max_remembered: int = MAX_REMEMBERED_TURNS) -> None:
        self.kv = kv
        self.max_remembered = max_remembered
        # key -> the record and its revision as this replica last wrote it
        self._known: OrderedDict[str, tuple[TurnRecord, int]] = OrderedDict()

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str = BUCKET, *, replicas: int = 1) -> TurnRecords:
        return cls(await open_bucket(js, bucket, max_age_s=RECORD_AGE_S, replicas=replicas))

    async def change(self, key: str, step: Callable[[TurnRecord], tuple[TurnRecord, T]]) -> tuple[TurnRecord, T]:
        """Apply `step` to the shared record (retrying on a concurrent change); the new record and its result."""
        known = self._known.pop(key, None)
        for _ in range(CAS_ATTEMPTS):
            if known is not None:
                (record, revision), known, fresh = known, None, False
            else:
                record, revision, fresh = *await self._read(key), True
            updated, result = step(record)
            if updated == record:
                if not fresh:
                    continue  # nothing to write: answer from the shared record, not from memory of it
                return record, result
            try:
                if revision:
                    revision = await self.kv.update(key, updated.to_json(), last=revision)
                else:
                    revision = await create_key(self.kv, key, updated.to_json())
            except KeyWrongLastSequenceError:
                continue  # another replica changed the turn first: read it again
            self._known[key] = (updated, revision)
            while len(self._known) > self.max_remembered:
                self._known.popitem(last=False)
            return updated, result
        raise RuntimeError(f"turn record {key} kept changing under {CAS_ATTEMPTS} attempts")

    async def _read(self, key: str) -> tuple[TurnRecord, int]:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return TurnRecord(), 0
        return TurnRecord.from_json(entry.value), entry.revision or 0

    async def remember_call(self, tenant: str, call_id: str, turn: str, digest: str) -> None:
        await self.kv.put(call_key(tenant, call_id), json.dumps({"turn": turn, "digest": digest}).encode())

    async def call_of(self, tenant: str, call_id: str) -> tuple[str, str] | None:
        """(turn key, digest) of a tool call this policy charged, or None."""
        try:
            entry = await self.kv.get(call_key(tenant, call_id))
        except KeyNotFoundError:
            return None
        raw = json.loads(entry.value or b"{}")
        return str(raw["turn"]), str(raw["digest"])
