"""Replay: recorded tool calls (and model calls) decided again by a candidate policy, and every decision that would change.

The candidate is any function from a recorded call to a verdict (the CLI wires
`caduceus_policy.load_engine(pack)` into it), so replay knows nothing of how a pack is
written. A call is compared with what policy itself decided when it was recorded (an
approval's later allow or deny is the person's, not the policy's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from caduceus_audit.recorded import RecordedCall


class Verdict(Protocol):
    """What a policy engine answers for one call (caduceus_policy.Verdict fits)."""

    @property
    def verdict(self) -> str: ...

    @property
    def reason(self) -> str: ...

    @property
    def policy_ids(self) -> tuple[str, ...]: ...


Decide = Callable[[RecordedCall], Verdict]


@dataclass(frozen=True)
class ChangedDecision:
    """A recorded call the candidate policy would decide differently."""

    call: RecordedCall
    verdict: str
    reason: str
    policy_ids: tuple[str, ...]
    upstream: str = ""  # a model call's new upstream


@dataclass
class ReplayReport:
    replayed: int = 0
    # Calls with no recorded policy decision (policy was down or slow: the call was denied without one).
    undecided: int = 0
    changed: list[ChangedDecision] = field(default_factory=list)


def replay(calls: Iterable[RecordedCall], decide: Decide) -> ReplayReport:
    """Decide every recorded call again and keep the ones whose verdict differs from policy's recorded one."""
    report = ReplayReport()
    for call in calls:
        report.replayed += 1
        if call.policy_verdict is None:
            report.undecided += 1
            continue
        again = decide(call)
        # a model call routed to another upstream is a changed decision too
        if again.verdict != call.policy_verdict or getattr(again, "upstream", call.upstream) != call.upstream:
            report.changed.append(ChangedDecision(call, again.verdict, again.reason, tuple(again.policy_ids),
                                                  str(getattr(again, "upstream", ""))))
    return report
