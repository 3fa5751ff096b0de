"""Policy Decision Point: decides every tool call and signs the decision.

Usable without a server: `evaluate(load_rule_file(path), tenant, roles, tool, args, workspace_root)`.
"""

from caduceus_policy.domain import (
    PolicyEngine,
    Rule,
    RuleEngine,
    RuleSet,
    Verdict,
    evaluate,
)
from caduceus_policy.facts import RequestFacts, extract_facts, request_facts
from caduceus_policy.rulefile import RuleFileError, load_engine, load_rule_file, parse_rules

__all__ = [
    "PolicyEngine", "RequestFacts", "Rule", "RuleEngine", "RuleFileError", "RuleSet", "Verdict", "evaluate",
    "extract_facts", "load_engine", "load_rule_file", "parse_rules", "request_facts",
]
