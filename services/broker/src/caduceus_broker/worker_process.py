"""What the planner and the executor share as processes: one tenant/workspace's worker on the bus, Hermes loaded
with the Caduceus plugin or not run at all."""

from __future__ import annotations

from caduceus_broker.settings import WorkerSettings
from caduceus_bus import BusService, BusSettings, ConfigurationError


class WorkerProcess(BusService):
    """A worker's route table bound to its own tenant and workspace (the only subjects its credential allows)."""

    # A call or turn in hand when stopping gets its answer: it may be waiting for a model or a tool.
    drain_s = 30.0

    def __init__(self, settings: WorkerSettings, bus: BusSettings) -> None:
        super().__init__(bus, connection_name=f"{self.table.role}-{settings.tenant}-{settings.workspace}",
                         tenant=settings.tenant, workspace=settings.workspace)
        self.settings = settings


def require_plugin(role: str) -> None:
    """Load Hermes's plugins; refuse to run unless the Caduceus middleware wraps every tool call."""
    from hermes_cli.plugins import discover_plugins, has_middleware

    discover_plugins()
    if not has_middleware("tool_execution"):
        raise ConfigurationError(f"the Caduceus plugin did not load in this {role}'s Hermes profile; refusing to run")
