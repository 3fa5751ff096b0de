"""The public keys policy trusts, kept fresh from the keys directory, and the grants they verified."""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime
from pathlib import Path

from caduceus_contracts import (
    ReloadingKeyring,
    SessionGrant,
    SignedGrant,
    canonical_json,
    utcnow,
)

MAX_VERIFIED_GRANTS = 4096


class TrustedKeys:
    """The keys of `<keys_dir>` (a ReloadingKeyring: identity may start after policy, or rotate its key).

    A grant is verified once per session turn but arrives with every tool call of the turn, so
    signatures that verified are remembered, keyed by the exact signed bytes, the signature and
    the key id: any other content or signature (a forged grant reusing a grant id included) is
    verified from scratch, a key no longer trusted is never taken from memory, and expiry is
    checked on every call.
    """

    def __init__(self, keys_dir: Path, max_remembered: int = MAX_VERIFIED_GRANTS) -> None:
        self.keys_dir = keys_dir
        self.keyring = ReloadingKeyring(keys_dir)
        self.max_remembered = max_remembered
        self._verified: OrderedDict[tuple[str, str, bytes], object] = OrderedDict()

    def verify_grant(self, signed: SignedGrant, *, now: datetime | None = None) -> SessionGrant:
        """The grant if identity signed it and it is unexpired; raises SignatureError or GrantExpired."""
        payload = canonical_json(signed.grant.model_dump(mode="json"))
        remembered = (signed.key_id, signed.signature, payload)
        trusted = self.keyring.key(signed.key_id)
        if trusted is None or self._verified.get(remembered) is not trusted[1]:
            self.keyring.verify_bytes(payload, key_id=signed.key_id, signature=signed.signature,
                                      issuers={"identity"})
            self._remember(remembered, self.keyring.keys[signed.key_id][1])
        else:
            self._verified.move_to_end(remembered)
        signed.check_current(now or utcnow())
        return signed.grant

    def _remember(self, key: tuple[str, str, bytes], public_key: object) -> None:
        self._verified[key] = public_key
        while len(self._verified) > self.max_remembered:
            self._verified.popitem(last=False)

