"""`python -m caduceus_inference`: serve planners' model calls until SIGINT or SIGTERM."""

from caduceus_bus import main_of
from caduceus_inference.app import build

main = main_of("inference", build)

if __name__ == "__main__":
    main()
