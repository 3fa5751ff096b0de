"""Client library: send a chat message to Caduceus over the bus and wait for the reply.

Any chat integration can use it: publish a `ChatMessageIn` with the person's
OIDC token, receive the `ChatReply`; with `watch=True` it also collects what the
turn did (each tool call, its decision and its outcome) for a transcript.
`ApprovalsClient` lists and answers approvals through the approval service's API.
"""

from caduceus_client.approvals import ApprovalsClient, ApprovalsError
from caduceus_client.chat import ChatClient, ChatTimeout, ToolCallRecord, TurnTranscript

__all__ = ["ApprovalsClient", "ApprovalsError", "ChatClient", "ChatTimeout", "ToolCallRecord", "TurnTranscript"]
