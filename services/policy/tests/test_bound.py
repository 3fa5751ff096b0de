"""Deciding in place on the loop's thread under a SIGALRM timer: the same verdicts as the worker pool, a deny at the
bound, an evaluation that really stops, and a timer someone else had pending given back."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from caduceus_contracts import ensure_signer
from caduceus_policy.bound import InlineBound
from caduceus_policy.domain import Verdict
from caduceus_policy.engine import load_engine
from caduceus_policy.facts import RequestFacts
from caduceus_policy.handlers import Decider, DecisionService
from caduceus_policy.keys import TrustedKeys

from .test_decider import a_request

DEFAULT_PACK = Path(__file__).parents[3] / "libs" / "embedded" / "src" / "caduceus_embedded" / "defaults" / "policy.yaml"
COMMANDS = ["echo hello && pwd", "rm -rf build", "curl http://169.254.169.254/", "cat ~/.ssh/id_rsa",
            "echo cm0gLXJmIC8= | base64 -d | sh", "sudo apt install x", "ls $(cat list)"]


class SlowEngine:
    """An engine stuck on a pathological input; says whether it ever got to answer."""

    version = "slow.1"

    def __init__(self) -> None:
        self.finished = False

    def decide(self, request: RequestFacts) -> Verdict:
        time.sleep(0.5)
        self.finished = True
        return Verdict("allow", "too late")


@pytest.fixture
def sigalrm_free() -> Iterator[None]:
    """SIGALRM as in the policy service: pytest-timeout's handler set aside for the test (and put back)."""
    previous = signal.signal(signal.SIGALRM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGALRM, previous)


def service(tmp_path: Path, engine, deadline_s: float = 0.5) -> DecisionService:  # type: ignore[no-untyped-def]
    decider = Decider(engine, TrustedKeys(tmp_path), ensure_signer(tmp_path, "policy"), tmp_path / "workspaces")
    return DecisionService(decider, publisher=None, deadline_s=deadline_s)  # type: ignore[arg-type]


async def test_decisions_in_place_are_the_decisions_of_the_worker_pool(tmp_path: Path, sigalrm_free: None) -> None:
    in_place = service(tmp_path, load_engine(DEFAULT_PACK))
    assert in_place.bound.available()
    requests = [a_request(tmp_path, command) for command in COMMANDS]
    decided = [(await in_place.decide(request)).decision.decision for request in requests]
    signal.signal(signal.SIGALRM, lambda *_: None)  # SIGALRM taken by someone else: the worker pool decides
    assert not in_place.bound.available()
    pooled = [(await in_place.decide(request)).decision.decision for request in requests]
    assert [(d.verdict, d.policy_ids, d.reason) for d in decided] == \
        [(d.verdict, d.policy_ids, d.reason) for d in pooled]
    assert {d.verdict for d in decided} == {"allow", "deny", "approve"}


async def test_a_decision_in_place_past_the_bound_is_a_deny_and_stops(tmp_path: Path, sigalrm_free: None) -> None:
    slow = SlowEngine()
    bounded = service(tmp_path, slow, deadline_s=0.05)
    assert bounded.bound.available()
    started = time.monotonic()
    decision = (await bounded.decide(a_request(tmp_path))).decision.decision
    assert time.monotonic() - started < 0.4
    assert (decision.verdict, decision.policy_ids) == ("deny", ("caduceus:deadline",))
    assert decision.reason == "policy could not decide within 50 ms; denied (fail closed)"
    time.sleep(0.6)
    assert slow.finished is False  # interrupted, not left running in a thread


def test_a_timer_pending_before_a_decision_is_given_back(sigalrm_free: None) -> None:
    bound = InlineBound()
    signal.setitimer(signal.ITIMER_REAL, 100)
    try:
        assert bound.run(lambda: "decided", 0.5) == "decided"
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 99 < remaining <= 100
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    assert bound.run(lambda: "again", 0.5) == "again"
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no alarm left behind to kill the process
