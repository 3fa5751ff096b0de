"""Adapters: the OIDC verifier, the dev issuer, the tenants file."""
