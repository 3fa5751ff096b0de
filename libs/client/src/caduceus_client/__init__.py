"""Client library: send a chat message to Caduceus over the bus and wait for the reply.

Any chat integration can use it: publish a `ChatMessageIn` with the person's
OIDC token, receive the `ChatReply`; with `watch=True` it also collects what the
turn did (each tool call, its decision and its outcome) for a transcript.
"""

from caduceus_client.chat import ChatClient, ToolCallRecord, TurnTranscript

__all__ = ["ChatClient", "ToolCallRecord", "TurnTranscript"]
