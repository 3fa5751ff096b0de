"""Policy Decision Point: decides every tool call and signs the decision.

Usable without a server, the way the service, `caduceus policy eval` and audit replay do:

    engine = load_engine(Path("policy.yaml"))
    verdict = engine.decide(request_facts(tenant, roles, tool, args, workspace_root, user="alice"))
"""

from caduceus_policy.adapters.packs import PackStore
from caduceus_policy.domain import PolicyEngine, Verdict
from caduceus_policy.engine import CedarEngine, engine_from_files, load_engine
from caduceus_policy.facts import KNOWN_FACTS, HostPaths, RequestFacts, extract_facts, request_facts
from caduceus_policy.handlers import PACKS_BUCKET, ROUTES
from caduceus_policy.model_calls import ModelVerdict, decide_model_call
from caduceus_policy.pack import Pack, PackError, load_pack
from caduceus_policy.pack.cases import run_cases
from caduceus_policy.pack.loader import parse_duration, parse_test_file
from caduceus_policy.pack.model import TurnLimits, turn_limits
from caduceus_policy.settings import PolicySettings

# The skeleton's name for a pack that cannot be used; kept so callers written against it still catch it.
RuleFileError = PackError

__all__ = [
    "PACKS_BUCKET", "ROUTES", "PolicySettings",
    "KNOWN_FACTS", "CedarEngine", "HostPaths", "Pack", "PackError", "PackStore", "PolicyEngine", "RequestFacts",
    "RuleFileError", "Verdict", "engine_from_files", "extract_facts", "load_engine", "load_pack", "parse_duration",
    "parse_test_file", "request_facts", "run_cases", "ModelVerdict", "decide_model_call",
    "TurnLimits", "turn_limits",
]
