"""Durable human approvals on Temporal."""

from typing import Any

__all__ = ["ROUTES"]


def __getattr__(name: str) -> Any:
    # Imported on first use: Temporal's workflow sandbox imports this package afresh for every workflow, and
    # the route table brings the bus, HTTP and OIDC modules, which it refuses.
    if name == "ROUTES":
        from caduceus_approval.handlers import ROUTES

        return ROUTES
    raise AttributeError(f"module 'caduceus_approval' has no attribute {name!r}")
