"""Deciding model calls (pure): the data classes in a prompt, the pack's data rules, and the route to an upstream.

Budgets are checked by the handler (they live in the shared counters); everything else about a
model call is decided here from the tenant's policy alone, so `policy eval`-style tools and tests
can call it without a bus.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from caduceus_contracts import DataClassSpec
from caduceus_policy.facts.content import MAX_SCANNED_CHARS, Classifier, classify, find_secrets
from caduceus_policy.pack.model import SECRET_CLASS, TenantPolicy

ROUTE_POLICY_PREFIX = "model-route:"
DATA_POLICY_PREFIX = "model-data:"


@dataclass(frozen=True)
class ModelVerdict:
    verdict: str  # allow or deny
    reason: str
    policy_ids: tuple[str, ...] = ()
    upstream: str = ""
    data_classes: tuple[str, ...] = ()
    redact_prompt: tuple[DataClassSpec, ...] = ()
    redact_response: tuple[DataClassSpec, ...] = ()
    deny_response: tuple[DataClassSpec, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)


def data_classes_in(text: str, classifiers: tuple[Classifier, ...]) -> tuple[str, ...]:
    """The data classes present in `text`: `secret` for credentials by their shapes, then the tenant's classes."""
    text = text[:MAX_SCANNED_CHARS]
    found = [SECRET_CLASS] if [k for k in find_secrets([text]) if k != "high_entropy_token"] else []
    return (*found, *sorted(classify([text], classifiers)))


def spec_of(name: str, classifiers: tuple[Classifier, ...]) -> DataClassSpec:
    """What the gateway needs to find a class in text (`secret` is built in there too)."""
    for classifier in classifiers:
        if classifier.name == name:
            return DataClassSpec(name=name, patterns=tuple(p.pattern for p in classifier.patterns),
                                 words=classifier.words)
    return DataClassSpec(name=name)


def decide_model_call(policy: TenantPolicy | None, *, roles: tuple[str, ...], workspace: str,
                      prompt: str) -> ModelVerdict:
    """Allow or deny one model call on its prompt's data classes, and choose its upstream."""
    if policy is None:
        return ModelVerdict("deny", "the policy pack has no section for this tenant: no model calls")
    models = policy.models
    present = data_classes_in(prompt, policy.classifiers)
    denied = [name for name in present if models.prompt_rules.get(name) == "deny"]
    if denied:
        return ModelVerdict("deny", f"the prompt holds {', '.join(denied)} data, which the pack does not let "
                                    "reach any model; remove it and ask again",
                            tuple(f"{DATA_POLICY_PREFIX}prompt:{name}" for name in denied), data_classes=present)
    route = next((r for r in models.routes if r.matches(roles, workspace, set(present))), None)
    upstream = route.upstream if route is not None else models.default
    if not upstream:
        return ModelVerdict("deny", "no model route of the pack matches this call and it names no default "
                                    "upstream", data_classes=present)
    ids = (f"{ROUTE_POLICY_PREFIX}{route.id}",) if route is not None else (f"{ROUTE_POLICY_PREFIX}default",)
    redacted = tuple(name for name in present if models.prompt_rules.get(name) == "redact")
    ids += tuple(f"{DATA_POLICY_PREFIX}prompt:{name}" for name in redacted)

    def specs(action: str) -> tuple[DataClassSpec, ...]:
        return tuple(spec_of(name, policy.classifiers) for name, act in models.response_rules.items()
                     if act == action)

    why = f"route {route.id}" if route is not None else "the default route"
    reason = f"allowed to upstream {upstream} by {why}" + (f"; redacting {', '.join(redacted)}" if redacted else "")
    return ModelVerdict("allow", reason, ids, upstream=upstream, data_classes=present,
                        redact_prompt=tuple(spec_of(n, policy.classifiers) for n in redacted),
                        redact_response=specs("redact"), deny_response=specs("deny"))
