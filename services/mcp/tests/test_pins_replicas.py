"""Replicas of the MCP gateway starting together on a new pins database all start: the one that loses the race to
create a table finds it made."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from caduceus_mcp.pins import PinStore


def _open(url: str) -> bool:
    PinStore(url).engine.dispose()
    return True


def test_replicas_opening_a_new_pins_database_at_once_all_start(tmp_path: Path) -> None:
    for attempt in range(5):
        url = f"sqlite:///{tmp_path / f'pins-{attempt}.db'}"
        with ProcessPoolExecutor(6) as pool:
            assert all(pool.map(_open, [url] * 12))
