"""Every role on the Caduceus bus, from the code: the services' and workers' route tables, the CLI's roles, and
the grants they share. `caduceus bus permissions` renders this as infra/nats/permissions.yaml (the file the
embedded stack and `caduceus bus authority` read); a test keeps the two equal.
"""

from __future__ import annotations

from caduceus_approval import ROUTES as APPROVAL
from caduceus_audit import ROUTES as AUDIT
from caduceus_broker import EXECUTOR_ROUTES, PLANNER_ROUTES
from caduceus_broker import ROUTES as BROKER
from caduceus_bus import Grant, PermissionFile, Role, RouteTable, kv_bucket_subjects, permissions_from_tables
from caduceus_contracts import subjects
from caduceus_gateway import ROUTES as GATEWAY
from caduceus_hermes_plugin import GATEWAY_ROUTES
from caduceus_identity import ROUTES as IDENTITY
from caduceus_inference import ROUTES as INFERENCE
from caduceus_mcp import ENDPOINT_ROUTES as MCP_ENDPOINT
from caduceus_mcp import ROUTES as MCP
from caduceus_policy import PACKS_BUCKET
from caduceus_policy import ROUTES as POLICY

STREAM = "CADUCEUS"

TABLES: tuple[RouteTable, ...] = (IDENTITY, POLICY, APPROVAL, BROKER, AUDIT, PLANNER_ROUTES, GATEWAY_ROUTES,
                                  EXECUTOR_ROUTES, GATEWAY, MCP, MCP_ENDPOINT, INFERENCE)

GRANTS = {
    # Every service makes sure the event stream exists at start (same config: creating it again is a no-op).
    # Only the operator may change the stream's configuration.
    "stream-setup": Grant(publish=("$JS.API.INFO", f"$JS.API.STREAM.CREATE.{STREAM}", f"$JS.API.STREAM.INFO.{STREAM}")),
    # The policy packs' key-value bucket: policy replicas watch it; `caduceus policy publish` (operator) writes it.
    "policy-packs": Grant(publish=tuple(kv_bucket_subjects(PACKS_BUCKET, watch=True))),
}

CLI_ROLES = {
    # Chat clients on the operator's machine (`caduceus chat`, `caduceus demo`, the client library): send a
    # person's message to any tenant (identity checks the token), read replies and notices, what turns did and
    # audit checkpoints; answer an approval as a person (approval checks the token).
    "client": Role(
        publish=(subjects.CHAT_IN_ALL, subjects.APPROVAL_ANSWERED_ALL),
        subscribe=(subjects.CHAT_REPLY_ALL, subjects.CHAT_NOTICE_ALL, subjects.APPROVAL_EVENTS, "cad.v1.turn.>",
                   "cad.v1.tool.>", "cad.v1.worker.>", subjects.AUDIT_EVENTS, "cad.v1.error.>"),
    ),
    # The stack itself (`caduceus up`): creates and updates the event stream, checks every service's health.
    # It also reports a service it left down after a crash loop, as the stack's own error event.
    "operator": Role(uses=("policy-packs",), publish=("$JS.API.>", "caduceus.health.>", "cad.v1.error._system.stack"),
                     subscribe=("caduceus.health.>",)),
}


def permission_file() -> PermissionFile:
    """The bus permissions the code implies."""
    return permissions_from_tables(TABLES, stream=STREAM, grants=GRANTS, clients=CLI_ROLES)
