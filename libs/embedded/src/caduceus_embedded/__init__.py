"""The embedded stack: nats-server, Temporal dev server and every service on one machine; the scripted model."""
