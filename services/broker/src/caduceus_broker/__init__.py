"""Runtime broker: Hermes planner and executor workers per tenant/workspace, dispatch of decided calls."""

# What a worker imports from this repository; the rest comes from the virtualenv (its sandbox's runtime).
# Defined before the imports below: the sandboxing module they bring reads it.
WORKER_PACKAGES = ("caduceus_broker", "caduceus_bus", "caduceus_contracts", "caduceus_hermes_plugin",
                   "caduceus_telemetry", "caduceus_sandbox", "caduceus_web")

from caduceus_broker.executor import ROUTES as EXECUTOR_ROUTES  # noqa: E402
from caduceus_broker.handlers import ROUTES  # noqa: E402
from caduceus_broker.planner import ROUTES as PLANNER_ROUTES  # noqa: E402

__all__ = ["EXECUTOR_ROUTES", "PLANNER_ROUTES", "ROUTES", "WORKER_PACKAGES"]
