"""Turn guardrails in the pack (`guardrails:`): checked on load with the line and fix; which limit holds for a
turn (tenant, role, workspace); and what each call does to a turn's record (pure: no bus here)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caduceus_policy.pack import PackError, parse_pack
from caduceus_policy.pack.model import turn_limits
from caduceus_policy.turns import TurnRecord, failed, model_call, tool_call, used_tokens

GUARDRAILS = """\
    guardrails:
      - {id: acme-turns, tool_calls: 12, model_calls: 20, tokens: 5000, wall_time: 5m, same_call: 3,
         same_failing_call: 2}
      - {id: admins-do-more, roles: [admin], tool_calls: 40}
      - {id: research-runs-long, workspaces: [research], wall_time: 30m, tool_calls: 25}
      - {id: research-admins, workspaces: [research], roles: [admin], tool_calls: 60}
"""


def pack(guardrails: str) -> dict[str, str]:
    return {"policy.yaml": 'version: "v1"\ntenants:\n  acme:\n    rules:\n'
                           '      - {id: r, effect: allow, tools: [terminal]}\n' + guardrails}


def error_for(guardrails: str) -> str:
    with pytest.raises(PackError) as caught:
        parse_pack(pack(guardrails), origin="/etc/caduceus")
    return str(caught.value)


def limits_for(roles: tuple[str, ...], workspace: str = "default"):
    policy = parse_pack(pack(GUARDRAILS)).tenants["acme"]
    return turn_limits(policy.guardrails, roles, workspace)


@pytest.mark.parametrize(("roles", "workspace", "tool_calls", "entry"), [
    (("member",), "default", 12, "acme-turns"),  # the tenant's own entry
    (("admin",), "default", 40, "admins-do-more"),  # a role entry beats the tenant's
    (("member",), "research", 25, "research-runs-long"),  # a workspace entry beats a role's and the tenant's
    (("admin",), "research", 60, "research-admins"),  # workspace and role together beat either
    (("member", "admin"), "default", 40, "admins-do-more"),  # any of the person's roles
])
def test_the_most_specific_entry_sets_each_limit(roles: tuple[str, ...], workspace: str, tool_calls: int,
                                                 entry: str) -> None:
    limits = limits_for(roles, workspace)
    value, guardrail = limits.get("tool_calls")
    assert (value, guardrail.id) == (tool_calls, entry)
    # a limit the specific entry leaves out comes from the tenant's entry
    assert limits.get("model_calls")[1].id == "acme-turns"
    assert limits.get("wall_time_s")[0] == (1800 if workspace == "research" else 300)


def test_a_tenant_without_guardrails_has_no_turn_limits() -> None:
    policy = parse_pack(pack("")).tenants["acme"]
    assert not turn_limits(policy.guardrails, ("member",), "default")


@pytest.mark.parametrize(("guardrails", "line", "says"), [
    ("    guardrails: {tool_calls: 3}\n", 6, "`guardrails` is a list"),
    ("    guardrails:\n      - {tool_calls: 3}\n", 7, "give the guardrail an `id`"),
    ("    guardrails:\n      - {id: g, tool_calls: 0}\n", 7, "`tool_calls` must be a whole number of at least 1"),
    ("    guardrails:\n      - {id: g, tokens: 2.5}\n", 7, "`tokens` must be a whole number"),
    ("    guardrails:\n      - {id: g, same_call: true}\n", 7, "`same_call` must be a whole number"),
    ("    guardrails:\n      - {id: g, wall_time: forever}\n", 7, "`wall_time` is how long a turn may run"),
    ("    guardrails:\n      - {id: g, roles: []}\n", 7, "`roles` must be a non-empty list"),
    ("    guardrails:\n      - {id: g}\n", 7, "set at least one of model_calls"),
    ("    guardrails:\n      - {id: g, tool_calls: 3}\n      - {id: g, model_calls: 3}\n", 8, "must be unique"),
    ("    guardrails:\n      - id: g\n        max_tool_calls: 3\n", 8, "unknown key `max_tool_calls`"),
])
def test_a_bad_guardrail_is_refused_with_its_line_and_the_fix(guardrails: str, line: int, says: str) -> None:
    message = error_for(guardrails)
    assert message.startswith(f"/etc/caduceus/policy.yaml:{line}: tenant 'acme'"), message
    assert says in message


# --- what calls do to a turn ------------------------------------------------------------------------------------


def ask_tools(limits, record: TurnRecord, digests: list[str], *, elapsed_s: float = 1.0):
    stops = []
    for digest in digests:
        record, stop = tool_call(record, limits, tenant="acme", tool="terminal", digest=digest, elapsed_s=elapsed_s)
        stops.append(stop)
    return record, stops


def test_the_call_after_the_limit_stops_the_turn_and_every_later_call_gets_the_same_reason() -> None:
    limits = limits_for(("member",))
    record, stops = ask_tools(limits, TurnRecord(), [f"d{i}" for i in range(13)])
    assert stops[:12] == [None] * 12
    assert stops[12].reason == ("this turn was stopped: 12 tool calls is the limit per turn for acme. Send a new "
                                "message to go on.")
    assert stops[12].policy_id == "guardrail:acme-turns:tool_calls"
    # the model call that follows is refused for the same reason: that is the turn's reply
    _, stop = model_call(record, limits, tenant="acme", estimated_tokens=10, elapsed_s=2)
    assert stop == stops[12]


def test_a_role_limit_names_the_role() -> None:
    _, stops = ask_tools(limits_for(("admin",)), TurnRecord(), [f"d{i}" for i in range(41)])
    assert "40 tool calls is the limit per turn for role admin in acme" in stops[40].reason


def test_the_same_call_asked_again_and_again_is_a_loop() -> None:
    _, stops = ask_tools(limits_for(("member",)), TurnRecord(), ["same", "other", "same", "same", "same"])
    assert stops[:4] == [None] * 4
    assert stops[4].limit == "same_call"
    assert "looping without progress: it asked for the same terminal call 4 times" in stops[4].reason


def test_the_same_failing_call_is_a_loop_sooner() -> None:
    limits = limits_for(("member",))
    record, stops = ask_tools(limits, TurnRecord(), ["bad"])
    record = failed(record, "bad")
    record, stops = ask_tools(limits, record, ["bad"])
    assert stops == [None]
    record = failed(record, "bad")
    _, stops = ask_tools(limits, record, ["bad"])
    assert stops[0].limit == "same_failing_call"
    assert "the same terminal call failed 2 times" in stops[0].reason


def test_the_same_prompt_sent_again_and_again_is_a_loop_too() -> None:
    limits = limits_for(("member",))
    record, stops = TurnRecord(), []
    for digest in ["p1", "p2", "p1", "p1", "p1"]:
        record, stop = model_call(record, limits, tenant="acme", estimated_tokens=1, elapsed_s=1, prompt_digest=digest)
        stops.append(stop)
    assert stops[:4] == [None] * 4
    assert "it sent the model the same prompt 4 times (3 is the limit per turn for acme)" in stops[4].reason
    assert stops[4].policy_id == "guardrail:acme-turns:same_call"


def test_wall_time_stops_a_slow_turn_at_its_next_call() -> None:
    limits = limits_for(("member",))
    _, stops = ask_tools(limits, TurnRecord(), ["a"], elapsed_s=301)
    assert "5m is the limit per turn for acme (it ran 301 s)" in stops[0].reason
    _, stop = model_call(TurnRecord(), limits, tenant="acme", estimated_tokens=1, elapsed_s=301)
    assert stop.limit == "wall_time_s"


def test_tokens_and_model_calls_stop_the_turn_before_the_call() -> None:
    limits = limits_for(("member",))
    record = used_tokens(TurnRecord(), 4900)
    _, stop = model_call(record, limits, tenant="acme", estimated_tokens=50, elapsed_s=1)
    assert stop is None
    _, stop = model_call(record, limits, tenant="acme", estimated_tokens=200, elapsed_s=1)
    assert "5,000 tokens is the limit per turn for acme (it used 4,900" in stop.reason
    record = TurnRecord()
    for _ in range(20):
        record, stop = model_call(record, limits, tenant="acme", estimated_tokens=1, elapsed_s=1)
        assert stop is None
    _, stop = model_call(record, limits, tenant="acme", estimated_tokens=1, elapsed_s=1)
    assert stop.limit == "model_calls"


def test_a_turns_record_stays_small_whatever_the_agent_asks() -> None:
    from caduceus_policy.turns import MAX_TRACKED_CALLS

    limits = limits_for(("member",))
    full = TurnRecord(calls={f"d{i}": 1 for i in range(MAX_TRACKED_CALLS)})
    _, stop = tool_call(full, limits, tenant="acme", tool="terminal", digest="d7", elapsed_s=1)
    assert stop is None  # a call it already follows
    _, stop = tool_call(full, limits, tenant="acme", tool="terminal", digest="new", elapsed_s=1)
    assert stop is not None and f"it asked {MAX_TRACKED_CALLS:,} different calls" in stop.reason
    # without a same_call limit nothing is followed per call
    plain = parse_pack(pack("    guardrails:\n      - {id: g, tool_calls: 5}\n")).tenants["acme"].guardrails
    record, _ = tool_call(TurnRecord(), turn_limits(plain, ("member",), "default"), tenant="acme", tool="terminal",
                          digest="d", elapsed_s=1)
    assert record.calls == {} and record.tool_calls == 1


def test_a_model_calls_usage_delivered_twice_counts_once() -> None:
    record = used_tokens(used_tokens(TurnRecord(), 300, "m1"), 300, "m1")
    assert used_tokens(record, 200, "m2").tokens == 500


def test_a_record_survives_the_round_trip_through_kv() -> None:
    limits = limits_for(("member",))
    record, _ = ask_tools(limits, TurnRecord(), [f"d{i}" for i in range(13)])
    assert TurnRecord.from_json(record.to_json()) == record


# --- `policy test` cases with `turn:` ---------------------------------------------------------------------------


def cases_of(guardrails: str, tests: str):
    from caduceus_policy.engine import engine_from_files
    from caduceus_policy.pack.cases import run_cases

    files = pack(guardrails)
    files["policy.yaml"] += "tests:\n" + tests
    engine = engine_from_files(files)
    return run_cases(engine, engine.pack.tests)


def test_a_case_with_a_turn_tests_the_guardrails_and_fails_when_the_pack_would_let_the_call_go() -> None:
    results = cases_of(GUARDRAILS, """\
  - {name: stopped, tenant: acme, roles: [member], tool: terminal, args: {command: ls}, turn: {tool_calls: 12},
     expect: deny, expect_ids: ["guardrail:acme-turns:tool_calls"]}
  - {name: wrongly expected to go, tenant: acme, roles: [member], tool: terminal, args: {command: ls},
     turn: {same_failed: 2}, expect: allow}
  - {name: a fresh turn goes, tenant: acme, roles: [member], tool: terminal, args: {command: ls}, turn: {}, expect: allow}
  - {name: model calls too, tenant: acme, roles: [member], prompt: hi, turn: {model_calls: 20}, expect: deny}
""")
    assert [(r.case.name, r.passed) for r in results] == [("stopped", True), ("wrongly expected to go", False),
                                                          ("a fresh turn goes", True), ("model calls too", True)]
    assert results[1].problem == "expected allow, got deny"
    assert "the same terminal call failed 2 times" in results[1].verdict.reason


def test_a_bad_turn_in_a_case_is_refused_with_its_line() -> None:
    with pytest.raises(PackError) as caught:
        cases_of("", "  - {name: t, tenant: acme, tool: terminal, expect: deny, turn: {calls: 3}}\n")
    assert "policy.yaml:7: test 't', turn: unknown key `calls` in `turn`: use one of tool_calls" in str(caught.value)


# An agent's turn as anything it might do: ask a call (by digest), have one fail, use tokens, ask the model, wait.
STEPS = st.lists(st.one_of(
    st.tuples(st.just("tool"), st.sampled_from("abc")),
    st.tuples(st.just("failed"), st.sampled_from("abc")),
    st.tuples(st.just("tokens"), st.integers(0, 2000)),
    st.tuples(st.just("model"), st.integers(0, 2000)),
    st.tuples(st.just("wait"), st.floats(0, 200)),
), max_size=80)


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_whatever_the_agent_does_no_limit_is_passed_and_a_stopped_turn_stays_stopped(steps) -> None:
    limits = limits_for(("member",))  # 12 tool calls, 20 model calls, 5000 tokens, 5m, same call 3, failing 2
    record, elapsed, stopped_with = TurnRecord(), 0.0, None
    allowed_tools: dict[str, int] = {}
    allowed_models = 0
    for kind, value in steps:
        if kind == "wait":
            elapsed += value
            continue
        if kind == "failed":
            record = failed(record, value)
            continue
        if kind == "tokens":
            record = used_tokens(record, value)
            continue
        before = record
        if kind == "tool":
            record, stop = tool_call(record, limits, tenant="acme", tool="terminal", digest=value, elapsed_s=elapsed)
        else:
            record, stop = model_call(record, limits, tenant="acme", estimated_tokens=value, elapsed_s=elapsed)
        if stopped_with is not None:
            assert stop == stopped_with  # every call after the stop is refused for the same reason
            continue
        if stop is not None:
            stopped_with = stop
            continue
        assert elapsed <= 300
        if kind == "tool":
            allowed_tools[value] = allowed_tools.get(value, 0) + 1
            assert before.failures.get(value, 0) < 2 and before.tokens < 5000
        else:
            allowed_models += 1
            assert before.tokens + value <= 5000
    assert sum(allowed_tools.values()) <= 12 and max(allowed_tools.values(), default=0) <= 3
    assert allowed_models <= 20
    assert TurnRecord.from_json(record.to_json()) == record
