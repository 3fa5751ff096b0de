"""The embedded stack: nats-server, Temporal dev server and every service on one machine; the scripted model."""

from caduceus_embedded.binaries import MissingBinary
from caduceus_embedded.layout import StateLayout
from caduceus_embedded.ports import PortBusy, StackPorts
from caduceus_embedded.servers import ServerFailed
from caduceus_embedded.services import ServiceFailed
from caduceus_embedded.stack import EmbeddedStack, StackAlreadyRunning
from caduceus_embedded.stackinfo import StackInfo, default_state_dir, read_stack_info

__all__ = [
    "EmbeddedStack", "MissingBinary", "PortBusy", "ServerFailed", "ServiceFailed", "StackAlreadyRunning", "StackInfo",
    "StackPorts", "StateLayout", "default_state_dir", "read_stack_info",
]
