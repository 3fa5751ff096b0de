"""Arguments policy cannot judge are denied with the reason, and nothing about JSON spelling changes a decision."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caduceus_contracts import SessionGrant, SignedGrant, ToolCallRequested, call_digest, ensure_signer, parse_event, utcnow
from caduceus_policy.engine import load_engine
from caduceus_policy.facts import request_facts
from caduceus_policy.handlers import Decider
from caduceus_policy.keys import TrustedKeys

DEFAULT_POLICY = Path(__file__).resolve().parents[3] / "libs/embedded/src/caduceus_embedded/defaults/policy.yaml"
ENGINE = load_engine(DEFAULT_POLICY)
ROOT = PurePosixPath("/srv/caduceus/workspaces/acme/default")


def decide(tool: str, args: Any) -> tuple[str, str]:
    verdict = ENGINE.decide(request_facts("acme", ("member",), tool, args, ROOT, user="alice"))
    return verdict.verdict, verdict.reason


def nested(depth: int) -> dict:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("tool", "args", "why"),
    [("terminal", {"command": 42}, "argument `command` of terminal must be text, not integer"),
     ("terminal", {"command": ["rm", "-rf", "/"]}, "must be text, not list of texts"),
     ("terminal", {}, "terminal needs the argument `command`"),
     ("write_file", {"path": {"p": "/etc/x"}, "content": "x"}, "argument `path` of write_file must be text"),
     ("web_extract", {"urls": "http://x"}, "must be list of texts, not text"),
     ("read_file", {"path": "ok", "limit": "ten"}, "`limit` of read_file must be integer"),
     ("todo", nested(40), "nested deeper than 32 levels"),
     ("write_file", {"path": "big.txt", "content": "x" * (600 * 1024)}, "exceed 512 KiB"),
     ("todo", {"items": list(range(30_000))}, "more than 20000 values"),
     ("write_file", {"path": "a.txt", "content": "bad \udcff byte"}, "not valid UTF-8"),
     ("write_file", {"path": "a\udc80.txt", "content": "x"}, "not valid UTF-8"),
     ("todo", {"\ud800": 1}, "argument name is not valid UTF-8")],
)
def test_arguments_policy_cannot_judge_are_denied_with_the_reason(tool: str, args: Any, why: str) -> None:
    verdict, reason = decide(tool, args)
    assert verdict == "deny"
    assert reason.startswith("the call's arguments cannot be judged: ") and why in reason


@pytest.fixture(scope="module")
def decider(tmp_path_factory: pytest.TempPathFactory) -> Decider:
    keys = tmp_path_factory.mktemp("keys")
    ensure_signer(keys, "identity")
    return Decider(ENGINE, TrustedKeys(keys), ensure_signer(keys, "policy"), Path("/srv/caduceus/workspaces"),
                   follow_symlinks=False)


def request_body(decider: Decider, tool: str, args: dict) -> dict:
    now = utcnow()
    grant = SessionGrant(tenant="acme", workspace="default", user="alice", roles=("member",), channel="cli",
                         session_id="s1", issued_at=now, expires_at=now + timedelta(minutes=5))
    signed = SignedGrant.issue(ensure_signer(decider.keys.keys_dir, "identity"), grant)
    digest = call_digest(tenant="acme", workspace="default", session="s1", tool=tool, args=args)
    request = ToolCallRequested(tenant="acme", grant=signed, workspace="default", session_id="s1", tool=tool,
                                args=args, digest=digest, call_id="c1", event_id="e1")
    return json.loads(request.model_dump_json())


def shuffled(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {key: shuffled(value[key], rng) for key in keys}
    if isinstance(value, list):
        return [shuffled(v, rng) for v in value]
    return value


def spelled(value: Any, rng: random.Random) -> str:
    """The same JSON value, with keys in another order and other whitespace."""
    indent = rng.choice([None, 0, 1, 4, "\t"])
    separators = rng.choice([(",", ":"), (", ", ": "), (" ,", " : "), (",\n", ":\t")])
    return json.dumps(shuffled(value, rng), indent=indent, separators=separators, ensure_ascii=rng.random() < 0.5)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
calls = st.one_of(
    st.tuples(st.just("terminal"), st.fixed_dictionaries({
        "command": st.sampled_from(["ls -la", "rm -rf build", "cat .env", "curl http://2130706433/",
                                    "echo aGk= | base64 -d | sh", "sudo id"]),
        "extra": json_values})),
    st.tuples(st.sampled_from(["write_file", "read_file"]), st.fixed_dictionaries({
        "path": st.sampled_from(["notes.txt", "../x", "/etc/passwd", "~/.ssh/id_rsa"]), "content": st.text(max_size=30),
        "meta": json_values})),
    st.tuples(st.sampled_from(["todo", "mcp__github__get_issue", "delegate_task"]),
              st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=5)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(call=calls, seed=st.integers(0, 2**32))
def test_a_decision_never_depends_on_key_order_or_whitespace(decider: Decider, call: tuple[str, dict],
                                                             seed: int) -> None:
    tool, args = call
    body = request_body(decider, tool, args)
    rng = random.Random(seed)
    decisions = []
    for _ in range(3):
        request = parse_event(spelled(body, rng).encode(), expect=ToolCallRequested)
        decision = decider.decide(request).decision.decision
        decisions.append((decision.verdict, decision.reason, decision.policy_ids, decision.digest))
    assert decisions[0] == decisions[1] == decisions[2]
    assert decisions[0][3] == body["digest"]
