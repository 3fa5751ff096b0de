"""No spelling of a dangerous call is allowed where its plain spelling is not (the grammar is bench/policy_fuzz.py;
the bench runs it for longer and reports)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings

BENCH = Path(__file__).resolve().parents[3] / "bench" / "policy_fuzz.py"
_spec = importlib.util.spec_from_file_location("policy_fuzz", BENCH)
assert _spec is not None and _spec.loader is not None
fuzz = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fuzz
_spec.loader.exec_module(fuzz)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuzz.dangerous_calls())
def test_no_equivalent_spelling_of_a_dangerous_call_is_allowed(call: tuple[str, str, dict]) -> None:
    plain, tool, args = call
    fuzz.check_variant(plain, tool, args)


@settings(max_examples=100, deadline=None, database=None)
@given(fuzz.spelled_command([(fuzz.PROGRAM, "rm"), (fuzz.WORD, "-rf"), (fuzz.PATH, "build")]))
def test_the_reader_sees_the_program_through_the_spellings_or_says_it_cannot(command: str) -> None:
    from caduceus_policy import request_facts

    facts = request_facts("acme", ("member",), "terminal", {"command": command}, fuzz.ROOT).facts
    assert facts["destructive"] or facts["dynamic_command"] or facts["command_not_understood"], command
