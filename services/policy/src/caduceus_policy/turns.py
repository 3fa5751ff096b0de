"""Turn guardrails (pure): what one turn has done so far, and whether its next call may go.

A turn is one chat message and everything the agent does for it; identity issues a fresh signed grant
for each message, so the grant's id names the turn and the planner cannot start a new count by itself.
The record lives in JetStream KV (adapters/turns.py), so every policy replica sees the same counts; the
functions here only say what a call does to it. A stopped turn stays stopped: every later call of it is
refused with the same reason, which the person reads as the turn's reply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from caduceus_policy.pack.model import Guardrail, TurnLimits, format_duration

GUARDRAIL_POLICY_PREFIX = "guardrail:"
STOPPED = "this turn was stopped: "
# Tool statuses that count as a failed attempt of the same call.
FAILED_STATUSES = ("error", "denied", "refused")
# A model call's prompt digest among the turn's call digests (tool-call digests are bare hex).
MODEL_PROMPT = "prompt:"
# Distinct calls and prompts one turn's record follows for `same_call` (about 100 KB of KV value at most).
MAX_TRACKED_CALLS = 1500


@dataclass(frozen=True)
class Stop:
    """Why a turn stopped: the limit (`tool_calls`, `same_call`, ...), the entry that set it, the reply text."""

    limit: str
    guardrail: str
    reason: str

    @property
    def policy_id(self) -> str:
        return f"{GUARDRAIL_POLICY_PREFIX}{self.guardrail}:{self.limit}"


@dataclass(frozen=True)
class TurnRecord:
    """What a turn has used so far; `stop` is set once, by the first limit it reached."""

    tool_calls: int = 0
    model_calls: int = 0
    tokens: int = 0
    calls: dict[str, int] = field(default_factory=dict)  # call digest -> times asked
    failures: dict[str, int] = field(default_factory=dict)  # call digest -> times failed
    stop: Stop | None = None
    counted: tuple[str, ...] = ()  # model calls whose usage is in `tokens` (a redelivered usage counts once)

    def to_json(self) -> bytes:
        stop = None if self.stop is None else {"limit": self.stop.limit, "guardrail": self.stop.guardrail,
                                                "reason": self.stop.reason}
        return json.dumps({"tool_calls": self.tool_calls, "model_calls": self.model_calls, "tokens": self.tokens,
                           "calls": self.calls, "failures": self.failures, "stop": stop,
                           "counted": list(self.counted)}).encode()

    @classmethod
    def from_json(cls, data: bytes | None) -> TurnRecord:
        """The stored record; a record that cannot be read raises (the caller fails closed)."""
        if not data:
            return cls()
        raw = json.loads(data)
        stop = raw.get("stop")
        return cls(tool_calls=int(raw["tool_calls"]), model_calls=int(raw["model_calls"]), tokens=int(raw["tokens"]),
                   calls={str(k): int(v) for k, v in raw["calls"].items()},
                   failures={str(k): int(v) for k, v in raw["failures"].items()},
                   stop=Stop(str(stop["limit"]), str(stop["guardrail"]), str(stop["reason"])) if stop else None,
                   counted=tuple(str(c) for c in raw.get("counted", ())))


def _stopped(record: TurnRecord, limit: str, entry: Guardrail, detail: str) -> tuple[TurnRecord, Stop]:
    stop = Stop(limit, entry.id, f"{STOPPED}{detail}. Send a new message to go on.")
    return replace(record, stop=stop), stop


def _count(value: float) -> str:
    return f"{int(value):,}"


def _wall_time(record: TurnRecord, limits: TurnLimits, tenant: str,
               elapsed_s: float) -> tuple[TurnRecord, Stop] | None:
    if (wall := limits.get("wall_time_s")) and elapsed_s > wall[0]:
        return _stopped(record, "wall_time_s", wall[1], f"{format_duration(wall[0])} is the limit per turn for "
                                                        f"{wall[1].scope(tenant)} (it ran {elapsed_s:.0f} s)")
    return None


def wall_time_stop(limits: TurnLimits, tenant: str) -> tuple[float, str] | None:
    """The turn's wall time and the reply when a call is cut at it, when the pack limits it."""
    if not (wall := limits.get("wall_time_s")):
        return None
    return wall[0], (f"{STOPPED}{format_duration(wall[0])} is the limit per turn for {wall[1].scope(tenant)}, and it "
                     "ran out while the model was answering. Send a new message to go on.")


def tool_call(record: TurnRecord, limits: TurnLimits, *, tenant: str, tool: str, digest: str,
              elapsed_s: float) -> tuple[TurnRecord, Stop | None]:
    """The record after the turn asks one more tool call, and the stop when the call must not go."""
    if record.stop is not None:
        return record, record.stop
    if stopped := _wall_time(record, limits, tenant, elapsed_s):
        return stopped
    if (tokens := limits.get("tokens")) and record.tokens >= tokens[0]:
        return _stopped(record, "tokens", tokens[1], f"{_count(tokens[0])} tokens is the limit per turn for "
                                                     f"{tokens[1].scope(tenant)} (it used {_count(record.tokens)})")
    if (calls := limits.get("tool_calls")) and record.tool_calls >= calls[0]:
        return _stopped(record, "tool_calls", calls[1], f"{_count(calls[0])} tool calls is the limit per turn "
                                                        f"for {calls[1].scope(tenant)}")
    if (failing := limits.get("same_failing_call")) and record.failures.get(digest, 0) >= failing[0]:
        return _stopped(record, "same_failing_call", failing[1],
                        f"it was looping without progress: the same {tool} call failed "
                        f"{_count(record.failures[digest])} times ({_count(failing[0])} is the limit per turn for "
                        f"{failing[1].scope(tenant)})")
    if (same := limits.get("same_call")) and record.calls.get(digest, 0) >= same[0]:
        return _stopped(record, "same_call", same[1],
                        f"it was looping without progress: it asked for the same {tool} call "
                        f"{_count(record.calls[digest] + 1)} times ({_count(same[0])} is the limit per turn for "
                        f"{same[1].scope(tenant)})")
    if same and (stopped := _too_many_to_track(record, digest, same[1], tenant)):
        return stopped
    calls = {**record.calls, digest: record.calls.get(digest, 0) + 1} if same else record.calls
    return replace(record, tool_calls=record.tool_calls + 1, calls=calls), None


def _too_many_to_track(record: TurnRecord, key: str, entry: Guardrail,
                       tenant: str) -> tuple[TurnRecord, Stop] | None:
    """A turn's record stays one small KV value: a turn asking more distinct calls than it can hold is stopped."""
    if key in record.calls or len(record.calls) < MAX_TRACKED_CALLS:
        return None
    return _stopped(record, "same_call", entry, f"it asked {_count(len(record.calls))} different calls, more than "
                                                f"Caduceus follows in one turn for {entry.scope(tenant)}")


def model_call(record: TurnRecord, limits: TurnLimits, *, tenant: str, estimated_tokens: int, elapsed_s: float,
               prompt_digest: str = "") -> tuple[TurnRecord, Stop | None]:
    """The record after the turn asks one more model call, and the stop when the call must not go. The same
    prompt sent again (a retry that changes nothing) counts against `same_call` like a repeated tool call."""
    if record.stop is not None:
        return record, record.stop
    if stopped := _wall_time(record, limits, tenant, elapsed_s):
        return stopped
    if (calls := limits.get("model_calls")) and record.model_calls >= calls[0]:
        return _stopped(record, "model_calls", calls[1], f"{_count(calls[0])} model calls is the limit per turn "
                                                         f"for {calls[1].scope(tenant)}")
    if (tokens := limits.get("tokens")) and record.tokens + estimated_tokens > tokens[0]:
        return _stopped(record, "tokens", tokens[1],
                        f"{_count(tokens[0])} tokens is the limit per turn for {tokens[1].scope(tenant)} (it used "
                        f"{_count(record.tokens)} and the next model call needs about {_count(estimated_tokens)})")
    key, same = f"{MODEL_PROMPT}{prompt_digest}", limits.get("same_call")
    if prompt_digest and same and record.calls.get(key, 0) >= same[0]:
        return _stopped(record, "same_call", same[1],
                        f"it was looping without progress: it sent the model the same prompt "
                        f"{_count(record.calls[key] + 1)} times ({_count(same[0])} is the limit per turn for "
                        f"{same[1].scope(tenant)})")
    if prompt_digest and same and (stopped := _too_many_to_track(record, key, same[1], tenant)):
        return stopped
    calls = {**record.calls, key: record.calls.get(key, 0) + 1} if prompt_digest and same else record.calls
    return replace(record, model_calls=record.model_calls + 1, calls=calls), None


def used_tokens(record: TurnRecord, tokens: int, call_id: str = "") -> TurnRecord:
    """The record with one model call's real tokens added (once per call, however often its usage arrives)."""
    if call_id and call_id in record.counted:
        return record
    return replace(record, tokens=record.tokens + max(0, tokens),
                   counted=(*record.counted, call_id) if call_id else record.counted)


def failed(record: TurnRecord, digest: str) -> TurnRecord:
    return replace(record, failures={**record.failures, digest: record.failures.get(digest, 0) + 1})
