"""Checking one tenant's chain (pure): recompute every link, compare with signed checkpoints, and say
which record is the first bad one and what happened to it.

The walk streams records in seq order and keeps O(1) state, so millions of records
are checked in one pass. Only when a record fails does it look further: at the next
record, at nearby positions the record's hash would fit, and (through `locate`, a
lookup by hash the caller provides) at where its predecessor went. From that it tells:

- changed:   a record's content no longer matches its hash, or it was rewritten with a
             recomputed hash (the next record no longer links to it, or a checkpoint
             signed a different fingerprint for it);
- missing:   records were deleted (a gap in the numbers, or an unvouched archive);
- inserted:  a record that was never appended sits in the chain;
- reordered: a record sits at another position than the one it was appended at;
- truncated: the chain ends before the last record a checkpoint signed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from caduceus_audit.domain.chain import GENESIS_HASH, ChainLink, link_hash, malformed_column
from caduceus_contracts import ChainCheckpoint

Problem = Literal["changed", "missing", "inserted", "reordered", "truncated", "forged checkpoint",
                  "malformed checkpoint"]
# How far from its position a moved record is looked for (its hash is tried at each seq).
NEARBY = 8


@dataclass(frozen=True)
class Anchor:
    """Where the stored chain starts: at genesis, or right after an archived range ending at `seq`."""

    seq: int = 0
    hash: str = GENESIS_HASH


GENESIS = Anchor()


@dataclass(frozen=True)
class ChainVerdict:
    """The outcome of checking one tenant's chain: intact, or its first bad record and what is wrong."""

    tenant: str
    ok: bool
    reason: str
    first_bad_seq: int | None = None
    problem: Problem | None = None
    event_id: str | None = None
    records: int = 0
    checkpoints: int = 0
    last_checkpoint_seq: int | None = None
    archived_through: int = 0

    def as_tuple(self) -> tuple[bool, int | None, str]:
        return self.ok, self.first_bad_seq, self.reason


def forged_checkpoint(tenant: str, seq: int, source: str, why: str) -> ChainVerdict:
    """The verdict for a checkpoint whose signature does not verify: someone tried to vouch for a history."""
    return ChainVerdict(tenant, False, f"the checkpoint for record {seq} from {source} is not signed by the audit "
                        f"service ({why})", first_bad_seq=seq, problem="forged checkpoint")


def malformed_checkpoint(tenant: str, seq: object, row_id: int, why: str) -> ChainVerdict:
    """The verdict for a stored checkpoint row that is no signed checkpoint any more (edited in the database)."""
    where = f"record {seq}" if isinstance(seq, int) else f"seq {seq!r}"
    return ChainVerdict(tenant, False, f"the checkpoint row {row_id} (for {where}) is not a signed checkpoint: {why}",
                        first_bad_seq=seq if isinstance(seq, int) else None, problem="malformed checkpoint")


def verify_links(tenant: str, links: Iterable[ChainLink], *, checkpoints: Sequence[ChainCheckpoint] = (),
                 anchor: Anchor = GENESIS, locate: Callable[[str], int | None] | None = None) -> ChainVerdict:
    """Check a tenant's records (in seq order) against their own links and the signed checkpoints.

    `checkpoints` must already be signature-checked. `anchor` is the end of the archived range, if
    any. `locate(hash)` returns the seq of the stored record holding that hash (or None); it is only
    called to explain a failure.
    """
    return _Walk(tenant, _ordered(checkpoints), anchor, locate or (lambda _hash: None)).run(iter(links))


def _ordered(checkpoints: Sequence[ChainCheckpoint]) -> list[ChainCheckpoint]:
    unique = {(c.seq, c.hash, c.prev_seq, c.fingerprints): c for c in checkpoints}
    return sorted(unique.values(), key=lambda c: (c.seq, c.prev_seq))


@dataclass
class _Walk:
    tenant: str
    checkpoints: list[ChainCheckpoint]
    anchor: Anchor
    locate: Callable[[str], int | None]
    count: int = 0
    prev: ChainLink | None = None
    _next_checkpoint: int = field(default=0)

    @property
    def last_checkpoint_seq(self) -> int | None:
        return self.checkpoints[-1].seq if self.checkpoints else None

    def verdict(self, ok: bool, reason: str, *, seq: int | None = None, problem: Problem | None = None,
                event_id: str | None = None) -> ChainVerdict:
        return ChainVerdict(self.tenant, ok, reason, seq, problem, event_id, self.count, len(self.checkpoints),
                            self.last_checkpoint_seq, self.anchor.seq)

    def run(self, links: Iterator[ChainLink]) -> ChainVerdict:
        if (bad := self._conflicting_checkpoints() or self._unvouched_anchor()) is not None:
            return bad
        expected, prev_hash = self.anchor.seq + 1, self.anchor.hash
        link = next(links, None)
        while link is not None:
            following = next(links, None)
            # A malformed next record explains nothing about this one; it is reported when its turn comes.
            readable_next = following if following is None or malformed_column(following) is None else None
            if (bad := self._check(link, readable_next, expected, prev_hash)) is not None:
                return bad
            self.count += 1
            self.prev, expected, prev_hash, link = link, expected + 1, link.hash, following
        last = expected - 1
        if self.last_checkpoint_seq is not None and self.last_checkpoint_seq > last:
            return self.verdict(False, f"the chain ends at record {last}, but a checkpoint signed record "
                                f"{self.last_checkpoint_seq}: records {last + 1}..{self.last_checkpoint_seq} were "
                                "deleted (truncated after a checkpoint)", seq=last + 1, problem="truncated")
        checked = f", {len(self.checkpoints)} checkpoint{'s' if len(self.checkpoints) != 1 else ''}"
        archived = f", records up to {self.anchor.seq} archived" if self.anchor.seq else ""
        return self.verdict(True, f"chain of tenant {self.tenant!r} intact: {self.count} "
                            f"record{'s' if self.count != 1 else ''}{checked if self.checkpoints else ''}{archived}")

    def _conflicting_checkpoints(self) -> ChainVerdict | None:
        for earlier, later in zip(self.checkpoints, self.checkpoints[1:]):
            if earlier.seq == later.seq and earlier.hash != later.hash:
                return self.verdict(False, f"two signed checkpoints disagree about record {earlier.seq}: the audit "
                                    "key signed two histories (is it leaked?)", seq=earlier.seq,
                                    problem="forged checkpoint")
        return None

    def _unvouched_anchor(self) -> ChainVerdict | None:
        if self.anchor.seq == 0:
            return None
        vouching = [c for c in self.checkpoints if c.seq == self.anchor.seq]
        if any(c.hash == self.anchor.hash for c in vouching):
            return None
        why = ("a checkpoint signed another hash for it" if vouching else
               "no signed checkpoint vouches for where the archive ends (pass the exported checkpoints)")
        return self.verdict(False, f"records 1..{self.anchor.seq} are recorded as archived, but {why}: treat them as "
                            "deleted", seq=1, problem="missing")

    def _check(self, link: ChainLink, following: ChainLink | None, expected: int,
               prev_hash: str) -> ChainVerdict | None:
        if link.tenant != self.tenant:
            return self.verdict(False, f"record {link.seq} belongs to tenant {link.tenant!r}", seq=link.seq,
                                problem="inserted", event_id=link.event_id)
        if (column := malformed_column(link)) is not None:
            return self._malformed(link, column, expected)
        if link.seq < expected:
            return self.verdict(False, f"a second record numbered {link.seq} (event {link.event_id}) was inserted",
                                seq=link.seq, problem="inserted", event_id=link.event_id)
        if link.seq > expected:
            return self._gap(link, expected)
        if link_hash(link) != link.hash:
            return self._foreign_or_changed(link, following, prev_hash)
        if link.prev_hash != prev_hash:
            return self._broken_link(link)
        return self._against_checkpoints(link, following)

    def _malformed(self, link: ChainLink, column: str, expected: int) -> ChainVerdict:
        seq = link.seq if column != "seq" else expected
        value = repr(getattr(link, column))
        shown = value if len(value) <= 40 else value[:37] + "..."
        where = f"record {seq}" if column != "seq" else f"the record after {expected - 1}"
        event_id = link.event_id if isinstance(link.event_id, str) else None
        return self.verdict(False, f"{where} holds {shown} in its {column} column, which no appended record can: it "
                            "was changed after it was stored", seq=seq, problem="changed", event_id=event_id)

    def _gap(self, link: ChainLink, expected: int) -> ChainVerdict:
        if self._origin(link) == expected:
            return self.verdict(False, f"record {link.seq} was appended as record {expected}: its number was changed",
                                seq=expected, problem="reordered", event_id=link.event_id)
        span = f"record {expected} is" if link.seq == expected + 1 else f"records {expected}..{link.seq - 1} are"
        return self.verdict(False, f"{span} missing (deleted): the chain jumps from {expected - 1} to {link.seq}",
                            seq=expected, problem="missing")

    def _foreign_or_changed(self, link: ChainLink, following: ChainLink | None, prev_hash: str) -> ChainVerdict:
        origin = self._origin(link)
        if origin is not None and origin > link.seq:
            return self.verdict(False, f"record {link.seq} holds the record appended as {origin}: records were "
                                "reordered", seq=link.seq, problem="reordered", event_id=link.event_id)
        if origin is not None:
            inserted = f"record {origin} was" if origin == link.seq - 1 else f"records {origin}..{link.seq - 1} were"
            first = self.prev.event_id if self.prev is not None and origin == link.seq - 1 else None
            return self.verdict(False, f"{inserted} inserted: record {link.seq} was appended as {origin}", seq=origin,
                                problem="inserted", event_id=first)
        if following is not None and following.prev_hash == prev_hash and self._origin(following) == link.seq:
            return self.verdict(False, f"record {link.seq} (event {link.event_id}) was inserted: the record after it "
                                f"was appended as {link.seq}", seq=link.seq, problem="inserted",
                                event_id=link.event_id)
        return self.verdict(False, f"record {link.seq} was changed after it was stored: its content no longer "
                            "matches its hash", seq=link.seq, problem="changed", event_id=link.event_id)

    def _broken_link(self, link: ChainLink) -> ChainVerdict:
        if self.prev is None:
            return self.verdict(False, f"record {link.seq} does not continue the chain from record {self.anchor.seq} "
                                "(genesis or the archived range): it was changed and its hash recomputed",
                                seq=link.seq, problem="changed", event_id=link.event_id)
        moved_to = self.locate(link.prev_hash)
        if moved_to is not None and moved_to != self.prev.seq:
            return self.verdict(False, f"record {self.prev.seq} is not the record appended there: that one now sits at "
                                f"{moved_to} (records were reordered)", seq=self.prev.seq, problem="reordered",
                                event_id=self.prev.event_id)
        return self.verdict(False, f"record {self.prev.seq} was changed and its hash recomputed to hide it: record "
                            f"{link.seq} still links to its original hash", seq=self.prev.seq, problem="changed",
                            event_id=self.prev.event_id)

    def _against_checkpoints(self, link: ChainLink, following: ChainLink | None) -> ChainVerdict | None:
        while (self._next_checkpoint < len(self.checkpoints)
               and self.checkpoints[self._next_checkpoint].seq < link.seq):
            self._next_checkpoint += 1
        if self._next_checkpoint == len(self.checkpoints):
            return None
        for checkpoint in self.checkpoints[self._next_checkpoint:]:
            expected = checkpoint.fingerprint(link.seq)
            if expected is None:
                break
            if link.hash.startswith(expected) and (checkpoint.seq != link.seq or checkpoint.hash == link.hash):
                continue
            if following is not None and following.hash.startswith(expected):
                return self.verdict(False, f"record {link.seq} (event {link.event_id}) was inserted: the record a "
                                    f"checkpoint signed as {link.seq} now follows it", seq=link.seq,
                                    problem="inserted", event_id=link.event_id)
            return self.verdict(False, f"record {link.seq} is not the record the checkpoint of record "
                                f"{checkpoint.seq} (signed {checkpoint.issued_at:%Y-%m-%d %H:%M:%S}Z) vouches for: "
                                "it was rewritten and the chain after it recomputed", seq=link.seq,
                                problem="changed", event_id=link.event_id)
        return None

    def _origin(self, link: ChainLink) -> int | None:
        """The seq this record's hash fits when it is not its own: where it was appended (None: changed)."""
        candidates: list[int] = []
        if link.prev_hash == GENESIS_HASH:
            candidates.append(1)
        elif (before := self.locate(link.prev_hash)) is not None:
            candidates.append(before + 1)
        for distance in range(1, NEARBY + 1):
            candidates += [link.seq + distance, link.seq - distance]
        for seq in dict.fromkeys(candidates):
            if seq >= 1 and seq != link.seq and link_hash(link, seq=seq) == link.hash:
                return seq
        return None
