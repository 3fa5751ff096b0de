"""NATS/JetStream helpers shared by every Caduceus process: brokers, the event stream, publishing, tracing."""

from caduceus_bus.app import (
    EVENT_SUBSCRIBER,
    ensure_event_stream,
    make_broker,
    raw_body,
)
from caduceus_bus.authority import (
    BusAuthority,
    CredentialError,
    WorkerCredential,
    WorkerCredentialIssuer,
)
from caduceus_bus.connect import CredentialsUnreadable, auth_options, take_credentials
from caduceus_bus.connection import EventConnection
from caduceus_bus.events import EventPublisher, event_headers, excerpt
from caduceus_bus.lifecycle import stop_event
from caduceus_bus.permissions import PermissionFile, PermissionsError, load_permissions
from caduceus_bus.settings import BusSettings, default_state_dir, with_state_paths
from caduceus_bus.streams import ensure_stream, stream_config
from caduceus_bus.tracing import extract_context, inject_headers

__all__ = [
    "EVENT_SUBSCRIBER", "BusAuthority", "BusSettings", "CredentialError", "CredentialsUnreadable", "EventConnection",
    "EventPublisher", "PermissionFile", "PermissionsError", "WorkerCredential", "WorkerCredentialIssuer",
    "auth_options", "default_state_dir", "ensure_event_stream", "ensure_stream", "event_headers", "excerpt",
    "extract_context", "inject_headers", "load_permissions", "make_broker", "raw_body", "stop_event", "stream_config",
    "take_credentials", "with_state_paths",
]
