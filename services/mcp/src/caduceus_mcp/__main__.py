"""`python -m caduceus_mcp`: run the MCP gateway until SIGINT or SIGTERM."""

from caduceus_bus import main_of
from caduceus_mcp.app import build
from caduceus_mcp.registry import RegistryError

main = main_of("mcp", build, (RegistryError,))

if __name__ == "__main__":
    main()
