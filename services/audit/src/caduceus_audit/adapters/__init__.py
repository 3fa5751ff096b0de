"""Adapters of the audit service: the SQL store and the JetStream consumer."""
