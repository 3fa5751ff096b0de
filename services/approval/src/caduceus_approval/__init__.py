"""Durable human approvals on Temporal."""
