"""Identity: OIDC token verification, tenants, session grants; the dev issuer."""

from caduceus_identity.handlers import ROUTES

__all__ = ["ROUTES"]
