"""Model calls decided from the pack alone: data classes in the prompt, data rules, routes (first match wins)."""

from __future__ import annotations

import textwrap

import pytest

from caduceus_policy.model_calls import decide_model_call
from caduceus_policy.pack import PackError, parse_pack

PACK = textwrap.dedent("""\
    version: "m1"
    tenants:
      acme:
        classifiers:
          classified: {words: [top secret]}
          customer_data: {patterns: ['CUST-[0-9]{6}']}
        models:
          default: outside
          routes:
            - {id: classified-stays-home, upstream: self-hosted, data_classes: [classified]}
            - {id: lab-uses-lab, upstream: lab, workspaces: [lab]}
            - {id: interns-go-small, upstream: small, roles: [intern]}
          prompt_rules: {secret: redact, customer_data: deny}
          response_rules: {secret: redact, classified: deny}
      plain:
        rules: []
      closed:
        models: {routes: [{id: only-admins, upstream: outside, roles: [admin]}]}
    """)


def decide(prompt: str, *, tenant: str = "acme", roles: tuple[str, ...] = ("member",), workspace: str = "default"):
    pack = parse_pack({"p.yaml": PACK})
    return decide_model_call(pack.tenants.get(tenant), roles=roles, workspace=workspace, prompt=prompt)


@pytest.mark.parametrize(("prompt", "roles", "workspace", "upstream", "rule"), [
    ("plan my week", ("member",), "default", "outside", "model-route:default"),
    ("this is Top Secret", ("member",), "default", "self-hosted", "model-route:classified-stays-home"),
    # a data-class route wins over a workspace or role route listed after it
    ("top secret plans", ("intern",), "lab", "self-hosted", "model-route:classified-stays-home"),
    ("run the experiment", ("intern",), "lab", "lab", "model-route:lab-uses-lab"),
    ("draft an email", ("intern",), "default", "small", "model-route:interns-go-small"),
])
def test_routes_pick_the_upstream_first_match_first(prompt, roles, workspace, upstream, rule) -> None:
    verdict = decide(prompt, roles=roles, workspace=workspace)
    assert (verdict.verdict, verdict.upstream, verdict.policy_ids[0]) == ("allow", upstream, rule)


def test_a_denied_class_in_the_prompt_denies_the_call_naming_it() -> None:
    verdict = decide("who is CUST-004211?")
    assert verdict.verdict == "deny" and verdict.policy_ids == ("model-data:prompt:customer_data",)
    assert "customer_data" in verdict.reason


def test_a_credential_is_the_secret_class_and_is_redacted_not_denied() -> None:
    verdict = decide("my key is AKIAIOSFODNN7EXAMPLE")
    assert (verdict.verdict, verdict.data_classes) == ("allow", ("secret",))
    assert [spec.name for spec in verdict.redact_prompt] == ["secret"]
    assert "model-data:prompt:secret" in verdict.policy_ids


def test_response_rules_travel_with_the_decision_as_patterns_the_gateway_applies() -> None:
    verdict = decide("hello")
    assert [s.name for s in verdict.redact_response] == ["secret"]
    assert [(s.name, s.words) for s in verdict.deny_response] == [("classified", ("top secret",))]


def test_a_tenant_without_models_uses_the_default_upstream_with_credentials_redacted() -> None:
    verdict = decide("key AKIAIOSFODNN7EXAMPLE", tenant="plain")
    assert (verdict.verdict, verdict.upstream, [s.name for s in verdict.redact_prompt]) == (
        "allow", "default", ["secret"])


def test_no_matching_route_and_no_default_denies() -> None:
    assert decide("hi", tenant="closed").verdict == "deny"
    assert decide("hi", tenant="closed", roles=("admin",)).upstream == "outside"


def test_a_tenant_not_in_the_pack_gets_no_model_calls() -> None:
    assert decide("hi", tenant="globex").verdict == "deny"


@pytest.mark.parametrize(("models", "problem"), [
    ("{routes: [{id: r, upstream: x, colour: red}]}", "unknown key `colour`"),
    ("{prompt_rules: {secret: shred}}", "deny or redact"),
    ("{routes: [{upstream: x}]}", "give the route an `id`"),
    ("[default]", "`models` is a mapping"),
])
def test_a_bad_models_section_is_refused_with_what_to_write(models: str, problem: str) -> None:
    with pytest.raises(PackError) as caught:
        parse_pack({"p.yaml": f'version: "x"\ntenants:\n  acme:\n    models: {models}\n'})
    assert problem in str(caught.value)


def test_pack_tests_cover_model_calls_with_their_upstream() -> None:
    from caduceus_policy.engine import engine_from_files
    from caduceus_policy.pack.cases import run_cases

    tests = textwrap.dedent("""\
        tests:
          - {name: classified stays home, tenant: acme, prompt: "TOP SECRET plans", expect: allow,
             expect_upstream: self-hosted}
          - {name: customers never leave, tenant: acme, prompt: "CUST-000001", expect: deny}
          - {name: a wrong expectation fails, tenant: acme, prompt: "hi", expect: allow, expect_upstream: lab}
        """)
    engine = engine_from_files({"p.yaml": PACK + tests})
    results = run_cases(engine, engine.pack.tests)
    assert [r.passed for r in results] == [True, True, False]
    assert results[2].problem == "expected upstream lab, got outside"


def test_a_model_case_with_a_tool_is_refused() -> None:
    with pytest.raises(PackError) as caught:
        parse_pack({"p.yaml": PACK + "tests:\n  - {tenant: acme, tool: terminal, prompt: hi, expect: allow}\n"})
    assert "gives `prompt` (text) and no `tool`" in str(caught.value)
