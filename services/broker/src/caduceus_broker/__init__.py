"""Runtime broker: Hermes planner and executor workers per tenant/workspace, dispatch of decided calls."""

# What a worker imports from this repository; the rest comes from the virtualenv (its sandbox's runtime).
WORKER_PACKAGES = ("caduceus_broker", "caduceus_bus", "caduceus_contracts", "caduceus_hermes_plugin",
                   "caduceus_telemetry", "caduceus_sandbox")

__all__ = ["WORKER_PACKAGES"]
