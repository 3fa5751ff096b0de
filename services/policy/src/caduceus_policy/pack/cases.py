"""Running a pack's test cases: each case is one call and the decision the pack must make for it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from caduceus_policy.domain import PolicyEngine, Verdict
from caduceus_policy.facts import request_facts
from caduceus_policy.pack.model import TestCase

# Where test calls pretend to run: relative paths land here, so `../x` leaves and `notes.md` stays.
TEST_WORKSPACES = PurePosixPath("/srv/caduceus/workspaces")


@dataclass(frozen=True)
class CaseResult:
    case: TestCase
    verdict: Verdict
    passed: bool
    problem: str = ""


def run_model_case(engine: PolicyEngine, case: TestCase) -> CaseResult:
    """A model-call case: decided from the pack's `models:` section as the service does after budgets."""
    from caduceus_policy.model_calls import decide_model_call

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
    root = workspaces / case.tenant / case.workspace
    verdict = engine.decide(request_facts(case.tenant, case.roles, case.tool, case.args, root, user=case.user,
                                          workspace=case.workspace))
    problems = []
    if verdict.verdict != case.expect:
        problems.append(f"expected {case.expect}, got {verdict.verdict}")
    if case.expect_ids is not None and tuple(verdict.policy_ids) != case.expect_ids:
        problems.append(f"expected policy ids {list(case.expect_ids)}, got {list(verdict.policy_ids)}")
    return CaseResult(case, verdict, not problems, "; ".join(problems))


def run_cases(engine: PolicyEngine, cases: Iterable[TestCase]) -> list[CaseResult]:
    return [run_case(engine, case) for case in cases]
