"""`python -m caduceus_policy`: decide tool calls until SIGINT or SIGTERM."""

from caduceus_bus import main_of
from caduceus_policy.app import build
from caduceus_policy.pack import PackError
from caduceus_policy.settings import PolicySettings

main = main_of("policy", lambda: build(PolicySettings()), (PackError,))

if __name__ == "__main__":
    main()
