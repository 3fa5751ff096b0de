"""Identity: OIDC token verification, tenants, session grants; the dev issuer."""
