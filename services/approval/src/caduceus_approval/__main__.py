"""`python -m caduceus_approval`: run approvals until SIGINT or SIGTERM."""

from caduceus_approval.app import build
from caduceus_bus import main_of
from caduceus_web import HttpUnavailable

main = main_of("approval", build, (HttpUnavailable,))

if __name__ == "__main__":
    main()
