"""Verifying the whole trail: every chain (each tenant's, and the system chain) against the checkpoints the audit key signed.

For `caduceus audit verify` and anyone who holds checkpoints outside the database. The
checkpoints come from the database itself and from any outside source given (an exported
file, the bus); each must carry a valid audit signature, or the verdict says it is forged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from caduceus_audit.adapters.store import AuditStore
from caduceus_audit.domain.verification import ChainVerdict, forged_checkpoint, malformed_checkpoint, verify_links
from caduceus_contracts import AuditCheckpointed, ChainCheckpoint, Keyring, SignatureError


class MissingAuditKey(Exception):
    """There are checkpoints to check but no trusted audit public key to check them with."""


@dataclass(frozen=True)
class HeldCheckpoint:
    """A checkpoint and where it was found (for messages: "the database", a file, "the bus")."""

    source: str
    event: AuditCheckpointed


def verify_trail(store: AuditStore, keyring: Keyring, *, tenant: str | None = None,
                 outside: Sequence[HeldCheckpoint] = ()) -> list[ChainVerdict]:
    """One verdict per chain (or for `tenant`), in chain order, after one per unreadable checkpoint row of it.

    Raises MissingAuditKey, StoreUnavailable.
    """
    held = [HeldCheckpoint("the database", event) for event in store.checkpoints.events(tenant)]
    held += [c for c in outside if tenant is None or c.event.tenant == tenant]
    if held and not any(issuer == "audit" for issuer, _key in keyring.keys.values()):
        raise MissingAuditKey(f"{len(held)} checkpoints to check, but no audit public key is trusted")
    unreadable = store.checkpoints.unreadable(tenant)
    tenants = [tenant] if tenant is not None else sorted(set(store.tenants()) | {c.event.tenant for c in outside})
    verdicts = []
    for name in tenants:
        verdicts += [malformed_checkpoint(name, row.seq, row.row_id, row.why) for row in unreadable if row.tenant == name]
        verdicts.append(_verify_tenant(store, keyring, name, [c for c in held if c.event.tenant == name]))
    return verdicts


def _verify_tenant(store: AuditStore, keyring: Keyring, tenant: str, held: list[HeldCheckpoint]) -> ChainVerdict:
    trusted: list[ChainCheckpoint] = []
    for checkpoint in held:
        try:
            trusted.append(checkpoint.event.checkpoint.verify(keyring))
        except SignatureError as exc:
            return forged_checkpoint(tenant, checkpoint.event.checkpoint.checkpoint.seq, checkpoint.source, str(exc))
    return verify_links(tenant, store.chain(tenant), checkpoints=trusted, anchor=store.archives.anchor(tenant),
                        locate=lambda wanted: store.locate(tenant, wanted))
