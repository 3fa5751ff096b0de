"""Published policy packs in JetStream KV: `live` is what every replica decides with, `shadow` a candidate.

A pack is stored as its files (name -> text) with its version; replicas watch the bucket and
reload on every change. What is stored is checked again by each replica before use.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from caduceus_bus import open_bucket
from caduceus_contracts import utcnow

log = logging.getLogger(__name__)
BUCKET = "caduceus_policy_packs"
LIVE, SHADOW = "live", "shadow"


@dataclass(frozen=True)
class PublishedPack:
    version: str
    files: Mapping[str, str]
    published_at: str = ""
    revision: int = 0

    def to_json(self) -> bytes:
        return json.dumps({"version": self.version, "files": dict(self.files),
                           "published_at": self.published_at}).encode()

    @classmethod
    def from_json(cls, data: bytes, revision: int = 0) -> PublishedPack:
        """Raises ValueError when the stored value is not a published pack."""
        raw = json.loads(data)
        files = raw.get("files")
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise ValueError("the stored value has no `files` mapping of names to texts")
        return cls(version=str(raw.get("version", "")), files=files, published_at=str(raw.get("published_at", "")),
                   revision=revision)


# (key, the pack or None when removed, why the stored value is not a pack)
PackUpdate = Callable[[str, PublishedPack | None, str | None], Awaitable[None]]


class PackStore:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self._watch: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str = BUCKET, *, replicas: int = 1) -> PackStore:
        return cls(await open_bucket(js, bucket, history=10, replicas=replicas))

    async def get(self, key: str) -> PublishedPack | None:
        """The stored pack; None when there is none. Raises ValueError when what is stored is not a pack."""
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        return PublishedPack.from_json(entry.value or b"", entry.revision or 0)

    async def publish(self, key: str, version: str, files: Mapping[str, str]) -> int:
        pack = PublishedPack(version=version, files=files, published_at=utcnow().isoformat())
        return await self.kv.put(key, pack.to_json())

    async def seed(self, version: str, files: Mapping[str, str]) -> bool:
        """Publish as live only if nothing is live yet (replicas starting together agree on one). True if seeded."""
        pack = PublishedPack(version=version, files=files, published_at=utcnow().isoformat())
        try:
            await self.kv.create(LIVE, pack.to_json())
            return True
        except Exception:
            return False

    async def clear(self, key: str) -> None:
        await self.kv.delete(key)

    async def watch(self, on_update: PackUpdate) -> None:
        """Call `on_update(key, pack, problem)` for the current packs and every later change, until cancelled."""
        watcher = await self.kv.watchall()

        async def loop() -> None:
            try:
                async for entry in watcher:
                    if entry is None:
                        continue
                    if entry.operation in (KV_DEL, KV_PURGE):
                        await on_update(entry.key, None, None)
                        continue
                    try:
                        pack = PublishedPack.from_json(entry.value or b"", entry.revision or 0)
                    except ValueError as exc:
                        await on_update(entry.key, None, f"not a published pack: {exc}")
                        continue
                    await on_update(entry.key, pack, None)
            finally:
                await watcher.stop()

        self._watch = asyncio.create_task(loop(), name="policy-pack-watch")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            try:
                await self._watch
            except (asyncio.CancelledError, Exception):
                pass
