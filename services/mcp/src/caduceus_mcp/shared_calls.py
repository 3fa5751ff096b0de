"""The MCP endpoint's calls in progress, shared by its replicas.

A client told "waiting for approval" calls the same tool with the same arguments again to get the result. With two
or more replicas behind one port, that call can reach another replica than the first: without this, that replica
knew nothing of the waiting call and asked again (a second approval for the approvers, and a second run if both
were approved). So each call in progress is recorded in the JetStream bucket `caduceus_mcp_calls` under its action
(tenant, workspace, person, tool, arguments), and a replica that gets a call it does not hold takes that call up:
it reads back from the event stream what was decided and answered for it so far, and waits for the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass

from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from caduceus_bus import EventConnection, create_key
from caduceus_bus.read_back import read_back
from caduceus_contracts import Event, ToolCallCompleted, ToolCallDecided, subjects

log = logging.getLogger(__name__)
CALLS_BUCKET = "caduceus_mcp_calls"
# How long a bucket operation may take before the replica acts alone (it then asks again, as before).
KV_WAIT_S = 2.0


@dataclass(frozen=True)
class SharedCall:
    """A call in progress at some replica: its id, its digest, and when it was asked."""

    call_id: str
    digest: str
    asked_at: float


def action_key(tenant: str, workspace: str, user: str, tool: str, canonical_args: bytes) -> str:
    """The key of one action: a person calling one tool with these (canonical JSON) arguments."""
    digest = hashlib.sha256(b"\0".join((user.encode(), tool.encode(), canonical_args))).hexdigest()[:40]
    return f"{tenant}.{workspace}.{digest}"


class SharedCalls:
    """Records the endpoint's calls in progress by action, and reads back what happened to one."""

    def __init__(self, connection: EventConnection, kv: KeyValue) -> None:
        self.connection = connection
        self.kv = kv

    @classmethod
    async def open(cls, connection: EventConnection, keep_s: float, replicas: int = 1) -> "SharedCalls":
        """Bind the bucket, creating it (entries expire after `keep_s`, as a waiting call is kept)."""
        js = connection.js
        try:
            kv = await js.key_value(CALLS_BUCKET)
        except BucketNotFoundError:
            try:
                kv = await js.create_key_value(KeyValueConfig(
                    bucket=CALLS_BUCKET, history=1, ttl=keep_s, storage=StorageType.FILE, replicas=replicas,
                    description="The MCP endpoint's calls in progress, by action: shared by its replicas"))
            except Exception:
                kv = await js.key_value(CALLS_BUCKET)  # another replica created it first
        return cls(connection, kv)

    async def take(self, key: str, call: SharedCall) -> SharedCall:
        """Record `call` under its action, unless a call is in progress for it already: that one is returned."""
        value = json.dumps({"call_id": call.call_id, "digest": call.digest, "asked_at": call.asked_at}).encode()
        for _ in range(3):  # a call released between our create and our read: try again
            try:
                await create_key(self.kv, key, value)
                return call
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await self.kv.get(key)
            except (KeyNotFoundError, KeyDeletedError):
                continue
            record = json.loads(entry.value or b"{}")
            return SharedCall(str(record["call_id"]), str(record["digest"]), float(record["asked_at"]))
        return call

    async def holder(self, key: str) -> str | None:
        """The id of the call in progress for this action, if any."""
        try:
            entry = await self.kv.get(key)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        return json.loads(entry.value).get("call_id") if entry.value else None

    async def release(self, key: str, call_id: str) -> None:
        """The call has its answer: a later call with the same action is a new call."""
        try:
            entry = await self.kv.get(key)
        except (KeyNotFoundError, KeyDeletedError):
            return
        if entry.value and json.loads(entry.value).get("call_id") == call_id:
            try:
                await self.kv.delete(key, last=entry.revision)
            except KeyWrongLastSequenceError:
                pass  # released and taken again meanwhile: that call is another's

    async def so_far(self, tenant: str, workspace: str, call: SharedCall) -> list[ToolCallDecided | ToolCallCompleted]:
        """What was decided and answered for the call since it was asked (read back from the event stream)."""
        since_s = max(0.0, time.time() - call.asked_at) + 5.0
        events: list[Event] = await read_back(
            self.connection.nc, self.connection.js, self.connection.settings.stream_name, since_s,
            (subjects.tool_decided(tenant), subjects.tool_completed(tenant, workspace)), reader="mcp-endpoint")
        return [e for e in events if isinstance(e, ToolCallDecided | ToolCallCompleted) and e.call_id == call.call_id]
