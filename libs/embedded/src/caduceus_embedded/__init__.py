"""The embedded stack: nats-server, Temporal dev server and every service on one machine; the scripted model."""

from pathlib import Path

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
    "demo_mcp_server",
]


def demo_mcp_server() -> Path:
    """The demo's MCP server script (a real `mcp` SDK server over stdio; see demo_mcp/warehouse.py)."""
    return Path(__file__).resolve().parent / "demo_mcp" / "warehouse.py"
