"""JetStream KV: the shared counters of rate limits and budgets, and the published policy packs."""
