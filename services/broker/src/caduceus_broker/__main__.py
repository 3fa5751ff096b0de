"""`python -m caduceus_broker`: the runtime broker, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging

from caduceus_broker.app import BrokerApp
from caduceus_broker.settings import BrokerSettings, ModelSettings
from caduceus_bus import BusSettings, stop_event
from caduceus_telemetry import setup_telemetry, shutdown_telemetry

log = logging.getLogger("caduceus.broker")


async def serve() -> None:
    app = BrokerApp(BrokerSettings(), BusSettings(), ModelSettings())
    stop = stop_event()
    await app.start()
    assert app.handlers is not None
    watcher = asyncio.create_task(app.handlers.pool.watch())
    log.info("broker ready")
    try:
        await stop.wait()
    finally:
        watcher.cancel()
        await app.stop()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    provider = setup_telemetry("broker")
    try:
        asyncio.run(serve())
    finally:
        shutdown_telemetry(provider)


if __name__ == "__main__":
    main()
