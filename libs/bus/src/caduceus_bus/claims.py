"""Keys written once, in the JetStream bucket `caduceus_used_decisions`: the one arbiter of whether a call runs.

A decision authorizes one execution (its key, `<tenant>.<workspace>.<decision_id>`, is written by the executor or
MCP gateway that uses it). A call is taken once: its key, `<tenant>.<workspace>.call.<call_id>`, is written either
by the process about to run it (`ran <decision_id>`) or by its requester that stopped waiting (`closed`), and
JetStream keeps only the first write (expected last subject sequence 0; even a delete marker cannot reopen a key).

So a requester told "denied, nothing ran" after waiting in vain for a decision is never contradicted by a run a
moment later (a late decision, a skewed clock, a redelivery), on any replica: either it closed the call first and
no runner can take it, or a runner took it first and the requester waits for its outcome instead.
"""

from __future__ import annotations

import hashlib
import re

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from caduceus_bus.connection import through_elections

USED_DECISIONS_BUCKET = "caduceus_used_decisions"
# How long a write waits out the bucket's leader election before giving up (a caller then fails closed).
CLAIM_WAIT_S = 10.0
CLOSED = b"closed"
_PLAIN_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


async def ensure_used_decisions(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create the bucket if it is not there (the broker does, before it starts any executor)."""
    try:
        await js.key_value(USED_DECISIONS_BUCKET)
    except BucketNotFoundError:
        config = KeyValueConfig(bucket=USED_DECISIONS_BUCKET, history=1, storage=StorageType.FILE, replicas=replicas,
                                description="Decisions used and calls taken or closed: keys written once")
        try:
            await js.create_key_value(config)
        except Exception:
            await js.key_value(USED_DECISIONS_BUCKET)  # another broker replica created it first


class ClaimUnknown(Exception):
    """The bucket did not say whether the key was free: a runner must not run, a requester cannot tell."""


async def write_once(kv: KeyValue, key: str, value: bytes, what: str, within_s: float = CLAIM_WAIT_S) -> bool:
    """Write `key` if it was never written: True when this write was first, False when another was.

    On a cluster electing the bucket's leader the write is tried again for up to `within_s`. A write stored but
    not confirmed then meets its own key and answers False: the caller acts as if it lost (never twice)."""
    try:
        await through_elections(lambda: kv.update(key, value, last=0), within_s, what)
        return True
    except KeyWrongLastSequenceError:
        return False
    except Exception as exc:  # cannot tell: every caller fails closed
        raise ClaimUnknown(f"the bucket {USED_DECISIONS_BUCKET} did not answer ({type(exc).__name__}: {exc})") \
            from None


def call_key(tenant: str, workspace: str, call_id: str) -> str:
    """The key of one call; an id that is not a plain subject token (dots, wildcards, spaces) is hashed."""
    token = call_id if _PLAIN_TOKEN.fullmatch(call_id) else "h" + hashlib.sha256(call_id.encode()).hexdigest()[:40]
    return f"{tenant}.{workspace}.call.{token}"


class CallClaims:
    """Takes calls (a runner) or closes them (a requester) in the bucket, bound on first use.

    The bucket is created by the broker before it starts any worker; a process that may not create it (a planner,
    an executor) finds it there. Raises ClaimUnknown when the bucket cannot be reached."""

    def __init__(self, js: JetStreamContext, within_s: float = CLAIM_WAIT_S, kv: KeyValue | None = None) -> None:
        self.js = js
        self.within_s = within_s
        self._kv = kv

    async def bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await through_elections(lambda: self.js.key_value(USED_DECISIONS_BUCKET), self.within_s,
                                                   f"the bucket {USED_DECISIONS_BUCKET}")
            except Exception as exc:
                raise ClaimUnknown(f"the bucket {USED_DECISIONS_BUCKET} cannot be read ({type(exc).__name__}: "
                                   f"{exc})") from None
        return self._kv

    async def take(self, tenant: str, workspace: str, call_id: str, decision_id: str) -> bool:
        """A runner about to run the call under `decision_id`: False when it was taken or closed before."""
        return await write_once(await self.bucket(), call_key(tenant, workspace, call_id),
                                f"ran {decision_id}".encode(), f"the claim of call {call_id}", self.within_s)

    async def close(self, tenant: str, workspace: str, call_id: str) -> bool:
        """A requester that stops waiting: True when nothing can run the call any more, False when a runner took
        it first (its outcome is on its way)."""
        return await write_once(await self.bucket(), call_key(tenant, workspace, call_id), CLOSED,
                                f"the closing of call {call_id}", self.within_s)


def call_claim_subjects(bucket: str = USED_DECISIONS_BUCKET, *, tenant: str = "{tenant}",
                        workspace: str = "{workspace}") -> tuple[str, str]:
    """What a process needs on the bus to bind the bucket and write call keys (of one tenant/workspace by default:
    route tables fill the placeholders)."""
    return f"$JS.API.STREAM.INFO.KV_{bucket}", f"$KV.{bucket}.{tenant}.{workspace}.call.>"
