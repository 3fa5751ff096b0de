"""Adapters of the audit service: the SQL store, the JetStream consumer, the bus and file checkpoint sources."""
