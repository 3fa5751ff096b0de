"""What every Caduceus process shares on the bus: route tables and their runner, publishing, streams, tracing,
and the bus's authorization."""

from caduceus_bus.authority import (
    SERVER_CONFIG_FILE,
    WORKER_SIGNING_FILE,
    BusAuthority,
    CredentialError,
    WorkerCredential,
    WorkerCredentialIssuer,
)
from caduceus_bus.claims import (
    CLAIM_WAIT_S,
    USED_DECISIONS_BUCKET,
    CallClaims,
    ClaimUnknown,
    call_claim_subjects,
    call_key,
    ensure_used_decisions,
    write_once,
)
from caduceus_bus.connect import CredentialsUnreadable, auth_options, take_credentials
from caduceus_bus.connection import (
    EventConnection,
    Publisher,
    create_key,
    event_headers,
    excerpt,
    settle,
    through_elections,
)
from caduceus_bus.lifecycle import stop_event
from caduceus_bus.permissions import (
    Grant,
    PermissionFile,
    PermissionsError,
    Role,
    load_permissions,
    permissions_from_tables,
    render_permissions,
)
from caduceus_bus.router import Delivery, Router
from caduceus_bus.routes import (
    CORE,
    Core,
    Pull,
    Route,
    RouteTable,
    kv_bucket_subjects,
    pull_consumer_subjects,
    worker_health_subject,
)
from caduceus_bus.runner import ConfigurationError, main_of, serve
from caduceus_bus.service import BusService
from caduceus_bus.settings import BusSettings, default_state_dir, nats_servers, with_state_paths
from caduceus_bus.streams import ensure_stream, open_bucket, stream_config
from caduceus_bus.tracing import extract_context, inject_headers

__all__ = [
    "CLAIM_WAIT_S", "CORE", "SERVER_CONFIG_FILE", "USED_DECISIONS_BUCKET", "WORKER_SIGNING_FILE", "auth_options",
    "BusAuthority", "BusService", "BusSettings", "call_claim_subjects", "call_key", "CallClaims", "ClaimUnknown",
    "ConfigurationError", "Core", "create_key", "CredentialError", "CredentialsUnreadable", "default_state_dir",
    "Delivery", "ensure_stream", "ensure_used_decisions", "event_headers", "EventConnection", "excerpt",
    "extract_context", "Grant", "inject_headers", "kv_bucket_subjects", "load_permissions", "main_of", "nats_servers",
    "open_bucket", "PermissionFile", "permissions_from_tables", "PermissionsError", "Publisher", "Pull",
    "pull_consumer_subjects", "render_permissions", "Role", "Route", "Router", "RouteTable", "serve", "settle",
    "stop_event", "stream_config", "take_credentials", "through_elections", "with_state_paths",
    "worker_health_subject", "WorkerCredential", "WorkerCredentialIssuer", "write_once",
]
