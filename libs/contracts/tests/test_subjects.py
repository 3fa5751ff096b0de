"""Subject builders: a tenant, workspace or session name can never smuggle a wildcard or token into a subject."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caduceus_contracts import subjects
from caduceus_contracts.subjects import SubjectError

TENANT_BUILDERS = [
    subjects.chat_in, subjects.turn_requested, subjects.tool_requested, subjects.tool_decided,
    lambda t: subjects.chat_reply(t, "s-1"), lambda t: subjects.turn_assigned(t, "default"),
    lambda t: subjects.tool_dispatched(t, "default"), lambda t: subjects.tool_completed(t, "default"),
    lambda t: subjects.worker_event(t, "default"), subjects.audit_checkpoint,
]
BAD_TOKENS = ["*", ">", "acme.*", "acme.>", "a.b", "acme ", " acme", "ac me", "Acme", "ACME", "", "-acme", "_acme",
              "acme\n", "a" * 64, "acme\t", "é"]
valid_tokens = st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,62}\Z")


@pytest.mark.parametrize("builder", TENANT_BUILDERS)
@pytest.mark.parametrize("bad", BAD_TOKENS)
def test_builders_refuse_tenants_that_are_not_one_plain_token(builder, bad):
    with pytest.raises(SubjectError, match="invalid tenant"):
        builder(bad)


@pytest.mark.parametrize("bad", BAD_TOKENS)
def test_builders_refuse_bad_workspaces(bad):
    with pytest.raises(SubjectError, match="invalid workspace"):
        subjects.tool_dispatched("acme", bad)


@pytest.mark.parametrize("bad", ["*", ">", "a.b", "a b", "", "x" * 129])
def test_builders_refuse_bad_session_ids(bad):
    with pytest.raises(SubjectError, match="invalid session id"):
        subjects.chat_reply("acme", bad)


@pytest.mark.parametrize("builder", TENANT_BUILDERS)
@given(tenant=valid_tokens)
def test_tenant_is_the_fifth_token_of_every_subject(builder, tenant):
    subject = builder(tenant)
    assert subject.split(".")[4] == tenant
    assert subjects.tenant_of(subject) == tenant
    assert "*" not in subject and ">" not in subject


@given(st.text(max_size=70))
def test_a_tenant_is_accepted_only_if_it_is_one_safe_token(text):
    try:
        subject = subjects.tool_requested(text)
    except SubjectError:
        assert not subjects.TOKEN_RE.fullmatch(text)
        return
    assert subject == f"cad.v1.tool.requested.{text}" and len(subject.split(".")) == 5


def test_error_subject_names_tenant_and_service():
    subject = subjects.error("acme", "policy")
    assert subject == "cad.v1.error.acme.policy"
    assert subjects.tenant_of(subject) == "acme"


def test_error_subject_for_an_invalid_tenant_goes_to_the_system_tenant():
    assert subjects.error("acme.>", "policy") == "cad.v1.error._system.policy"
    assert subjects.tenant_of(subjects.error("acme.>", "policy")) == subjects.SYSTEM_TENANT


def test_error_subject_refuses_a_bad_service_name():
    with pytest.raises(SubjectError, match="invalid service"):
        subjects.error("acme", "po.licy")


@pytest.mark.parametrize("subject", ["cad.v1.chat.in", "other.v1.chat.in.acme", "cad.v2.chat.in.acme",
                                     "cad.v1.chat.in.ACME", "cad.v1.chat.in.*", "cad.v1.chat.in.>"])
def test_tenant_of_a_subject_without_a_valid_tenant_is_none(subject):
    assert subjects.tenant_of(subject) is None


def test_any_tenant_wildcards_only_the_tenant_token():
    assert subjects.any_tenant(subjects.tool_completed("acme", "default")) == "cad.v1.tool.completed.*.default"
    assert subjects.any_tenant(subjects.error("acme", "policy")) == "cad.v1.error.*.policy"


def test_the_system_chain_is_a_chain_but_no_tenant():
    assert subjects.is_chain(subjects.SYSTEM_TENANT) and subjects.is_chain("acme")
    assert subjects.audit_checkpoint(subjects.SYSTEM_TENANT) == "cad.v1.audit.checkpoint._system"
    assert subjects.tenant_of("cad.v1.chat.in.ACME") is None
    with pytest.raises(SubjectError, match="invalid tenant"):
        subjects.chat_in(subjects.SYSTEM_TENANT)
