"""`serve()`: how every Caduceus process runs, from `python -m caduceus_<service>` to a clean exit.

Settings, logging format, telemetry, signals, health (via BusService), graceful drain and exit codes are the
same for every service and worker:

    0   stopped on SIGINT/SIGTERM after answering what it held
    1   failed while running (the bus unreachable, a bug: the log says which)
    2   cannot start as configured (an invalid CADUCEUS_ setting, a missing or bad file); the message says
        what to fix
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable

from pydantic import ValidationError

from caduceus_bus.lifecycle import stop_event
from caduceus_bus.service import BusService
from caduceus_telemetry import setup_telemetry, shutdown_telemetry
from caduceus_web import HttpUnavailable

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
EXIT_OK, EXIT_FAILED, EXIT_CONFIGURATION = 0, 1, 2

log = logging.getLogger("caduceus")


class ConfigurationError(RuntimeError):
    """A process cannot start as configured; the message says which setting or file to change."""


def serve(name: str, build: Callable[[], BusService],
          configuration_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Build the service (reading its settings), run it until a signal, stop it cleanly; the exit code.

    `configuration_errors` are the exceptions `build` or `start` raise for a setup the operator must fix.
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    configuration = (ConfigurationError, ValidationError, HttpUnavailable, *configuration_errors)
    provider = setup_telemetry(name)
    try:
        try:
            service = build()
        except OSError as exc:  # a file it needs (keys, pack, database path) cannot be used
            print(f"{name} cannot start: {exc}", file=sys.stderr)
            return EXIT_CONFIGURATION
        asyncio.run(_run(service))
    except ValidationError as exc:
        print(f"{name} cannot start: a CADUCEUS_ setting is invalid:\n{exc}", file=sys.stderr)
        return EXIT_CONFIGURATION
    except configuration as exc:
        print(f"{name} cannot start: {exc}", file=sys.stderr)
        return EXIT_CONFIGURATION
    except OSError as exc:  # the bus unreachable after start, a disk gone
        print(f"{name} stopped: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        shutdown_telemetry(provider)
    return EXIT_OK


async def _run(service: BusService) -> None:
    stop = stop_event()
    starting = asyncio.create_task(service.start())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # a signal while starting (e.g. waiting for its database): stop at once
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await service.stop()
        return
    stopped.cancel()
    starting.result()  # a start that failed raises here (it has already released what it took)
    try:
        await stop.wait()
    finally:
        log.info("%s is stopping", service.table.role)
        await service.stop()


def main_of(name: str, build: Callable[[], BusService],
            configuration_errors: tuple[type[BaseException], ...] = ()) -> Callable[[], None]:
    """A `main()` for a `__main__` module: `serve` with its exit code as the process's."""

    def main() -> None:
        sys.exit(serve(name, build, configuration_errors))

    return main
