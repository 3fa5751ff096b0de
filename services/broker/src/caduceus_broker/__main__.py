"""`python -m caduceus_broker`: the runtime broker, until SIGINT/SIGTERM."""

from caduceus_broker.app import build
from caduceus_bus import CredentialError, main_of

main = main_of("broker", build, (CredentialError,))

if __name__ == "__main__":
    main()
