"""Runtime broker: Hermes planner and executor workers per tenant/workspace, dispatch of decided calls."""
