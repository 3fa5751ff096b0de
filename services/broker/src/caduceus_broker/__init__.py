"""Runtime broker: Hermes planner and executor workers per tenant/workspace, dispatch of decided calls."""

from caduceus_broker.executor import ROUTES as EXECUTOR_ROUTES
from caduceus_broker.handlers import ROUTES
from caduceus_broker.planner import ROUTES as PLANNER_ROUTES
from caduceus_broker.sandboxing import WORKER_PACKAGES
from caduceus_broker.settings import BrokerSettings, ModelSettings, WorkerSettings

__all__ = ["EXECUTOR_ROUTES", "PLANNER_ROUTES", "ROUTES", "WORKER_PACKAGES", "BrokerSettings", "ModelSettings",
           "WorkerSettings"]
