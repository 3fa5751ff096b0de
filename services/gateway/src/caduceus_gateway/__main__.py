"""`python -m caduceus_gateway`: run the chat gateway until SIGINT or SIGTERM."""

from caduceus_bus import main_of
from caduceus_gateway.app import build
from caduceus_web import HttpUnavailable

main = main_of("gateway", build, (HttpUnavailable,))

if __name__ == "__main__":
    main()
