"""Fixtures for the bus tests: settings and a connection to the session's real nats-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from caduceus_bus import BusSettings, EventConnection


@pytest.fixture()
def settings(nats_server) -> BusSettings:
    return BusSettings(nats_url=nats_server.url)


@pytest.fixture()
def tenant() -> str:
    """A tenant of the test's own, so its subjects see no other test's messages."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture()
async def connection(settings: BusSettings) -> AsyncIterator[EventConnection]:
    conn = await EventConnection.connect(settings, "bus-tests")
    await conn.ensure_stream()
    yield conn
    await conn.close()
