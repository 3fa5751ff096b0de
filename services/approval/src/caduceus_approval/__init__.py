"""Durable human approvals on Temporal."""

from importlib import import_module
from typing import Any

# The public API, imported on first use: Temporal's workflow sandbox imports this package afresh for every
# workflow, and the route table brings the bus, HTTP and OIDC modules, which it refuses.
_PUBLIC = {
    "ROUTES": "caduceus_approval.handlers",
    "ApprovalSettings": "caduceus_approval.settings",
    "DESK_ISSUER": "caduceus_approval.domain",
    "load_or_create_secret": "caduceus_approval.web.sessions",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'caduceus_approval' has no attribute {name!r}")
