"""Bus handlers: what comes back from a turn (replies, notices, tool calls and their decisions and outcomes) goes
to the relay, which hands it to the people following that conversation on this replica.

Every replica gets every message (no queue groups): the person's browser may be connected to any of them.
"""

from __future__ import annotations

from caduceus_bus import Route, RouteTable
from caduceus_contracts import ChatNotice, ChatReply, ToolCallCompleted, ToolCallDecided, ToolCallRequested, subjects
from caduceus_gateway.relay import Relay


async def relay_event(relay: Relay, event: ChatReply | ChatNotice | ToolCallRequested | ToolCallDecided
                      | ToolCallCompleted) -> None:
    relay.deliver(event)


# Every message the gateway handles; it publishes people's messages (chat.in) and nothing that decides anything.
ROUTES = RouteTable(
    role="gateway",
    routes=(
        Route(subjects.CHAT_REPLY_ALL, ChatReply, relay_event, concurrency=16, malformed="ignore"),
        Route(subjects.CHAT_NOTICE_ALL, ChatNotice, relay_event, concurrency=16, malformed="ignore"),
        # what the turn does, shown beside the conversation; the audit trail reports malformed ones
        Route(subjects.TOOL_REQUESTED_ALL, ToolCallRequested, relay_event, concurrency=16, malformed="ignore"),
        Route(subjects.TOOL_DECIDED_ALL, ToolCallDecided, relay_event, concurrency=16, malformed="ignore"),
        Route(subjects.TOOL_COMPLETED_ALL, ToolCallCompleted, relay_event, concurrency=16, malformed="ignore"),
    ),
    publishes=(subjects.CHAT_IN_ALL, subjects.APPROVAL_ANSWERED_ALL, subjects.APPROVAL_VOUCH_ALL),
    grants=("stream-setup",),
    # Slack (caduceus_gateway.slack) follows the approvals of the tenants it serves, to post and update them
    extra_subscribes=(subjects.APPROVAL_ALL,),
)
