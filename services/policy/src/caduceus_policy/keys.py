"""The public keys policy trusts, kept fresh from the keys directory."""

from __future__ import annotations

from pathlib import Path

from caduceus_contracts import Keyring, SessionGrant, SignedGrant, load_keyring


class TrustedKeys:
    """A keyring loaded from `<keys_dir>/*.pub`, reloaded when a grant names a key it does not know.

    Identity may start (and create its key) after policy, or rotate its key; reloading on an
    unknown key id picks that up without a restart.
    """

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = keys_dir
        self.keyring: Keyring = load_keyring(keys_dir)

    def verify_grant(self, signed: SignedGrant) -> SessionGrant:
        """The grant if identity signed it and it is unexpired; raises SignatureError or GrantExpired."""
        if signed.key_id not in self.keyring.keys:
            self.keyring = load_keyring(self.keys_dir)
        return signed.verified(self.keyring)
