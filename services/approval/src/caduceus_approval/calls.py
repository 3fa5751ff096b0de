"""What the approval service remembers from the bus to show people: recent call requests and conversations.

An `approve` decision names a call by id and digest only; who asked, with which arguments and in
which conversation comes from the call's ToolCallRequested (trusted once identity's grant verifies)
and the turn's TurnRequested.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from pathlib import Path

from caduceus_contracts import (
    ReloadingKeyring,
    SignatureError,
    ToolCallRequested,
    TurnRequested,
)

MAX_REMEMBERED = 20_000


class RecentCalls:
    """Recent call requests by call id and the last message of each conversation, bounded in number and age."""

    def __init__(self, keys_dir: Path, ttl_s: float = 900.0) -> None:
        self.keys_dir = keys_dir
        self.ttl_s = ttl_s
        self._keyring = ReloadingKeyring(keys_dir)
        self._requests: OrderedDict[str, tuple[float, ToolCallRequested]] = OrderedDict()
        self._turns: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._arrived = asyncio.Condition()

    def _grant_verifies(self, grant) -> bool:
        try:
            self._keyring.verify(grant.grant.model_dump(mode="json"), key_id=grant.key_id, signature=grant.signature,
                                 issuers={"identity"})
        except SignatureError:
            return False
        return True

    async def remember_request(self, request: ToolCallRequested) -> bool:
        """Keep a request whose grant identity signed; False (and nothing kept) otherwise."""
        if not self._grant_verifies(request.grant):
            return False
        _put(self._requests, request.call_id, request, self.ttl_s)
        async with self._arrived:
            self._arrived.notify_all()
        return True

    def remember_turn(self, turn: TurnRequested) -> None:
        if self._grant_verifies(turn.grant):
            _put(self._turns, turn.grant.grant.session_id, turn.text, self.ttl_s)

    async def request(self, call_id: str, timeout: float) -> ToolCallRequested | None:
        """The call's request, waiting up to `timeout` for it to arrive (a decision can overtake it)."""
        try:
            async with asyncio.timeout(timeout):
                async with self._arrived:
                    await self._arrived.wait_for(lambda: call_id in self._requests)
        except TimeoutError:
            return None
        return self._requests[call_id][1]

    def conversation(self, session_id: str) -> str:
        """The message that started the conversation's current turn, or "" when none was seen."""
        entry = self._turns.get(session_id)
        return entry[1] if entry else ""


def _put(table: OrderedDict, key: str, value: object, ttl_s: float) -> None:
    now = time.monotonic()
    table[key] = (now, value)
    table.move_to_end(key)
    while table and (len(table) > MAX_REMEMBERED or now - next(iter(table.values()))[0] > ttl_s):
        table.popitem(last=False)
