"""Running a pack's test cases: each case is one call and the decision the pack must make for it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from caduceus_policy.domain import PolicyEngine, Verdict
from caduceus_policy.facts import request_facts
from caduceus_policy.pack.model import TestCase, TurnLimits, turn_limits

# Where test calls pretend to run: relative paths land here, so `../x` leaves and `notes.md` stays.
TEST_WORKSPACES = PurePosixPath("/srv/caduceus/workspaces")


@dataclass(frozen=True)
class CaseResult:
    case: TestCase
    verdict: Verdict
    passed: bool
    problem: str = ""


def turn_stop(engine: PolicyEngine, case: TestCase) -> Verdict | None:
    """The deny the pack's turn guardrails give the case's call, after what its `turn:` says the turn did."""
    from caduceus_policy.turns import TurnRecord, model_call, tool_call

    if case.turn is None:
        return None
    pack = getattr(engine, "pack", None)
    policy = pack.tenants.get(case.tenant) if pack is not None else None
    limits = turn_limits(policy.guardrails, case.roles, case.workspace) if policy is not None else TurnLimits()
    turn, digest = case.turn, "this-call"
    record = TurnRecord(tool_calls=int(turn.get("tool_calls", 0)), model_calls=int(turn.get("model_calls", 0)),
                        tokens=int(turn.get("tokens", 0)), calls={digest: int(turn.get("same_call", 0))},
                        failures={digest: int(turn.get("same_failed", 0))})
    elapsed = turn.get("ran_s", 0.0)
    if case.prompt is not None:
        _, stop = model_call(record, limits, tenant=case.tenant, estimated_tokens=max(1, len(case.prompt) // 4),
                             elapsed_s=elapsed)
    else:
        _, stop = tool_call(record, limits, tenant=case.tenant, tool=case.tool, digest=digest, elapsed_s=elapsed)
    return None if stop is None else Verdict("deny", stop.reason, (stop.policy_id,))


def checked(case: TestCase, verdict: Verdict) -> CaseResult:
    problems = []
    if verdict.verdict != case.expect:
        problems.append(f"expected {case.expect}, got {verdict.verdict}")
    if case.expect_ids is not None and tuple(verdict.policy_ids) != case.expect_ids:
        problems.append(f"expected policy ids {list(case.expect_ids)}, got {list(verdict.policy_ids)}")
    return CaseResult(case, verdict, not problems, "; ".join(problems))


def run_model_case(engine: PolicyEngine, case: TestCase) -> CaseResult:
    """A model-call case: decided from the pack's `models:` section as the service does after budgets."""
    from caduceus_policy.model_calls import decide_model_call

    if (stopped := turn_stop(engine, case)) is not None:
        return checked(case, stopped)
    pack = getattr(engine, "pack", None)
    model = decide_model_call(pack.tenants.get(case.tenant) if pack is not None else None, roles=case.roles,
                              workspace=case.workspace, prompt=case.prompt or "")
    verdict = Verdict(model.verdict, model.reason, model.policy_ids)  # type: ignore[arg-type]
    problems = []
    if model.verdict != case.expect:
        problems.append(f"expected {case.expect}, got {model.verdict}")
    if case.expect_upstream is not None and model.upstream != case.expect_upstream:
        problems.append(f"expected upstream {case.expect_upstream}, got {model.upstream or 'none'}")
    if case.expect_ids is not None and tuple(model.policy_ids) != case.expect_ids:
        problems.append(f"expected policy ids {list(case.expect_ids)}, got {list(model.policy_ids)}")
    return CaseResult(case, verdict, not problems, "; ".join(problems))


def run_case(engine: PolicyEngine, case: TestCase, workspaces: PurePosixPath = TEST_WORKSPACES) -> CaseResult:
    if case.prompt is not None:
        return run_model_case(engine, case)
    if (stopped := turn_stop(engine, case)) is not None:
        return checked(case, stopped)
    root = workspaces / case.tenant / case.workspace
    verdict = engine.decide(request_facts(case.tenant, case.roles, case.tool, case.args, root, user=case.user,
                                          workspace=case.workspace))
    return checked(case, verdict)


def run_cases(engine: PolicyEngine, cases: Iterable[TestCase]) -> list[CaseResult]:
    return [run_case(engine, case) for case in cases]
