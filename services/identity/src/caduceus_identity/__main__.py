"""`python -m caduceus_identity`: verify chat messages and issue session grants until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys

from pydantic import ValidationError

from caduceus_bus import stop_event
from caduceus_directory import DirectoryError
from caduceus_identity.adapters.dev_issuer import DevIssuerError
from caduceus_identity.app import ConfigurationError, bootstrap
from caduceus_identity.settings import IdentitySettings
from caduceus_telemetry import setup_telemetry, shutdown_telemetry

log = logging.getLogger("caduceus_identity")


async def serve(settings: IdentitySettings) -> None:
    """Run identity until the process is asked to stop."""
    service = bootstrap(settings)
    stop = stop_event()
    await service.start()
    try:
        await stop.wait()
    finally:
        log.info("identity is stopping")
        await service.stop()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    provider = setup_telemetry("identity")
    try:
        settings = IdentitySettings()
        asyncio.run(serve(settings))
    except (DirectoryError, DevIssuerError, ConfigurationError) as exc:
        print(f"identity cannot start: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"identity cannot start: a CADUCEUS_ setting is invalid:\n{exc}", file=sys.stderr)
        return 2
    finally:
        shutdown_telemetry(provider)
    return 0


if __name__ == "__main__":
    sys.exit(main())
