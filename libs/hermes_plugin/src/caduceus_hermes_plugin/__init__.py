"""The Caduceus plugin for Hermes Agent: every tool call goes to the bus."""
