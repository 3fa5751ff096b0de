"""The inference gateway: the planner's only way to a model (routing, budgets before the call, data rules, usage)."""

from caduceus_inference.app import HEALTH_SUBJECT, SERVICE, InferenceService, build
from caduceus_inference.gateway import REFUSED_HEADER
from caduceus_inference.handlers import ROUTES
from caduceus_inference.settings import InferenceSettings, Upstream

__all__ = ["HEALTH_SUBJECT", "REFUSED_HEADER", "ROUTES", "SERVICE", "InferenceService", "InferenceSettings",
           "Upstream", "build"]
