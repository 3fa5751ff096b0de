"""What a decision is, and what the service needs from whatever makes it.

Pure: no I/O. The service, `caduceus policy eval` and audit replay all talk to an engine
through `PolicyEngine.decide(RequestFacts) -> Verdict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from caduceus_policy.facts import RequestFacts
from caduceus_policy.pack.model import Limit

VerdictKind = Literal["allow", "deny", "approve"]


@dataclass(frozen=True)
class Verdict:
    """What policy says about one call, why (a sentence for people), and which policies said it.

    `limits` are the rate limits and budgets that apply when the call is allowed or approved:
    the service checks them against the shared counters before it signs.
    """

    verdict: VerdictKind
    reason: str
    policy_ids: tuple[str, ...] = ()
    approver_group: str | None = None
    quorum: int | None = None
    approval_timeout_s: float | None = None
    limits: tuple[Limit, ...] = ()
    facts: Mapping[str, Any] = field(default_factory=dict)


class PolicyEngine(Protocol):
    """What the policy service needs from an engine: a version to sign, and a verdict per request."""

    @property
    def version(self) -> str: ...

    def decide(self, request: RequestFacts) -> Verdict: ...
