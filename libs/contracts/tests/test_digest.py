"""The call digest binds a decision to one exact call: who, where, which tool, which arguments."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from caduceus_contracts import CanonicalizationError, call_digest

CALL = {
    "tenant": "acme",
    "workspace": "default",
    "session": "s-1",
    "tool": "terminal",
    "args": {"command": "ls -la", "timeout": 30, "env": {"HOME": "/workspace", "paths": ["/a", "/b"]}},
}

tokens = st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,20}\Z")
arg_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=15,
)
args_dicts = st.dictionaries(st.text(max_size=10), arg_values, max_size=6)


def digest(**overrides) -> str:
    return call_digest(**{**CALL, **overrides})


def test_digest_is_sha256_hex():
    value = digest()
    assert len(value) == 64 and all(c in "0123456789abcdef" for c in value)


@pytest.mark.parametrize(
    "change",
    [
        {"tenant": "globex"},
        {"workspace": "other"},
        {"session": "s-2"},
        {"tool": "write_file"},
        {"args": {**CALL["args"], "command": "rm -rf /"}},
        {"args": {**CALL["args"], "extra": True}},
        {"args": {k: v for k, v in CALL["args"].items() if k != "timeout"}},
        {"args": {**CALL["args"], "timeout": 31}},
        {"args": {**CALL["args"], "timeout": "30"}},
        {"args": {**CALL["args"], "env": {"HOME": "/workspace", "paths": ["/a", "/c"]}}},
        {"args": {**CALL["args"], "env": {"HOME": "/workspace", "paths": ["/b", "/a"]}}},
        {"args": {**CALL["args"], "env": {"HOME": "/root", "paths": ["/a", "/b"]}}},
    ],
    ids=["tenant", "workspace", "session", "tool", "value", "added-key", "removed-key", "number", "type",
         "nested-value", "list-order", "nested-dict-value"],
)
def test_any_change_to_the_call_changes_the_digest(change):
    assert digest(**change) != digest()


def test_moving_a_value_between_fields_changes_the_digest():
    # Field boundaries are part of the canonical form: no "ab"+"c" == "a"+"bc" ambiguity.
    assert call_digest(tenant="acme", workspace="ab", session="c", tool="t", args={}) != call_digest(
        tenant="acme", workspace="a", session="bc", tool="t", args={}
    )


@given(args_dicts, st.randoms(use_true_random=False))
def test_reordered_keys_give_the_same_digest(args, rng):
    items = list(args.items())
    rng.shuffle(items)
    assert digest(args=dict(items)) == digest(args=args)


@given(args_dicts)
def test_arguments_that_went_through_json_keep_their_digest(args):
    assert digest(args=json.loads(json.dumps(args, indent=2))) == digest(args=args)


@given(args_dicts, args_dicts)
def test_different_arguments_give_different_digests(first, second):
    assume(json.dumps(first, sort_keys=True) != json.dumps(second, sort_keys=True))
    assert digest(args=first) != digest(args=second)


@given(tokens, tokens, st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20), args_dicts)
def test_digest_of_a_call_is_stable(tenant, workspace, session, tool, args):
    first = call_digest(tenant=tenant, workspace=workspace, session=session, tool=tool, args=args)
    shuffled = dict(random.Random(0).sample(list(args.items()), len(args)))
    assert call_digest(tenant=tenant, workspace=workspace, session=session, tool=tool, args=shuffled) == first


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_arguments_with_nan_or_infinity_have_no_digest(bad):
    with pytest.raises(CanonicalizationError):
        digest(args={"limit": bad})
