"""OIDC token verification shared by the services that accept a person's token (identity, approval, gateway), and
the sign-in of their web pages (authorization code with PKCE)."""

from caduceus_oidc.identity import TOKEN_REMEDY, Refused, TokenRefused, VerifiedIdentity
from caduceus_oidc.signin import OidcClient, SignInFailed, pkce_pair
from caduceus_oidc.verifier import (
    ALLOWED_ALGORITHMS,
    MAX_TOKEN_BYTES,
    OidcVerifier,
    ProviderUnavailable,
    unverified_header,
    unverified_issuer,
)

__all__ = [
    "ALLOWED_ALGORITHMS", "MAX_TOKEN_BYTES", "TOKEN_REMEDY", "OidcClient", "OidcVerifier", "ProviderUnavailable",
    "Refused", "SignInFailed", "TokenRefused", "VerifiedIdentity", "pkce_pair", "unverified_header",
    "unverified_issuer",
]
