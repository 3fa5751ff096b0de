"""OIDC token verification shared by the services that accept a person's token (identity, approval)."""

from caduceus_oidc.identity import TOKEN_REMEDY, Refused, TokenRefused, VerifiedIdentity
from caduceus_oidc.verifier import (
    ALLOWED_ALGORITHMS,
    MAX_TOKEN_BYTES,
    OidcVerifier,
    ProviderUnavailable,
    unverified_header,
    unverified_issuer,
)

__all__ = [
    "ALLOWED_ALGORITHMS", "MAX_TOKEN_BYTES", "TOKEN_REMEDY", "OidcVerifier", "ProviderUnavailable", "Refused",
    "TokenRefused", "VerifiedIdentity", "unverified_header", "unverified_issuer",
]
