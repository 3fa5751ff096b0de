"""Identity: OIDC token verification, tenants, session grants; the dev issuer.

What other code (the CLI) uses of it: dev tokens, pairing chat accounts, service accounts, the issuers a
deployment trusts and the identity store. The tenant directory is caduceus_directory; token checks caduceus_oidc.
"""

from caduceus_identity.adapters.issuers import DeploymentIssuer, IssuerRegistry
from caduceus_identity.adapters.store import IdentityStore
from caduceus_identity.devtoken import DevTokenError, mint_dev_token
from caduceus_identity.gatekeeper import approve_pairing
from caduceus_identity.handlers import ROUTES
from caduceus_identity.linking import PairingRefused, ServiceAccount, looks_like_api_key, shown_code
from caduceus_identity.settings import IdentitySettings

__all__ = [
    "ROUTES", "DeploymentIssuer", "DevTokenError", "IdentitySettings", "IdentityStore", "IssuerRegistry", "PairingRefused",
    "ServiceAccount", "approve_pairing", "looks_like_api_key", "mint_dev_token", "shown_code",
]
