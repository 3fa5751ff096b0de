"""The `caduceus` operator command."""
