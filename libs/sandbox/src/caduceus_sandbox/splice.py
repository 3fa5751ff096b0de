"""Copy bytes both ways between two stream pairs until both sides are done: the relays' one job."""

from __future__ import annotations

import asyncio
import contextlib

CHUNK = 65536
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, other: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # half-close: the other direction may still be talking
    except (ConnectionError, OSError):
        # A reset on one side ends both directions; closing makes the other pump's read end too.
        writer.close()
        other.close()


async def splice(a: Stream, b: Stream) -> None:
    """Relay a <-> b; returns when both directions are done, with both writers closed."""
    try:
        await asyncio.gather(_pump(a[0], b[1], a[1]), _pump(b[0], a[1], b[1]))
    finally:
        for writer in (a[1], b[1]):
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
