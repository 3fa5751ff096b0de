"""The default pack's false-positive cost and catch rate on the corpora in bench/corpus stay where README says.

Thresholds, not the measured figures: the figures themselves are published by bench/policy_corpus.py.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench" / "policy_corpus.py"


@pytest.fixture(scope="module")
def corpus():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("policy_corpus", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("held_out", "least"), [(False, 0.97), (True, 0.85)])
def test_ordinary_developer_commands_stay_allowed(corpus, held_out: bool, least: float) -> None:  # type: ignore[no-untyped-def]
    outcome = corpus.evaluate(corpus.benign_calls(held_out), allowed_is_expected=True)
    assert outcome.calls >= (100 if held_out else 300)
    assert outcome.share >= least, "\n".join(f"{call}: {reason}" for call, _, reason in outcome.misses)


@pytest.mark.parametrize(("held_out", "least"), [(False, 0.99), (True, 0.95)])
def test_hostile_calls_are_denied_or_held(corpus, held_out: bool, least: float) -> None:  # type: ignore[no-untyped-def]
    outcome = corpus.evaluate(corpus.hostile_calls(held_out), allowed_is_expected=False)
    assert outcome.calls >= (80 if held_out else 300)
    assert outcome.share >= least, "\n".join(call for call, _, _ in outcome.misses)
