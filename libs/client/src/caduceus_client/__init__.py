"""Client library: send chat messages to Caduceus over the bus and wait for replies."""
