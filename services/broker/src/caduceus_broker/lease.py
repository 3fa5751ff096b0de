"""Leases on workspaces: exactly one broker replica runs a tenant/workspace's planner and executor at a time.

A lease is a key `<tenant>.<workspace>` in the JetStream KV bucket `caduceus_broker_leases`, holding the owner's
broker id. It is taken by a create (JetStream stores it only if the key has no live value), renewed by an update
that names the revision the owner last wrote (so a renewal fails once anyone else wrote the key), and expires by
the bucket's max age: a broker that dies stops renewing, and `lease_ttl_s` later the key is gone and another
replica can take it. A broker that cannot renew for most of a TTL stops the workspace's workers itself before
anyone else can take the lease (fencing), so two planners never serve one workspace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from caduceus_bus import create_key, open_bucket
from caduceus_contracts import new_id, utcnow

log = logging.getLogger("caduceus.broker.lease")
LEASES_BUCKET = "caduceus_broker_leases"
# A renewal attempt every TTL/RENEWALS_PER_TTL; a lease not renewed for FENCE_FRACTION of its TTL is given up.
RENEWALS_PER_TTL = 4
FENCE_FRACTION = 0.75

LostCallback = Callable[[str, str, str], Awaitable[None]]


def lease_key(tenant: str, workspace: str) -> str:
    return f"{tenant}.{workspace}"


def broker_id() -> str:
    """This broker process's id in the leases it holds: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}-{os.getpid()}-{new_id()[:6]}"


@dataclass
class Held:
    revision: int
    renewed_at: float
    taken_at: float = field(default_factory=time.monotonic)


class LeaseUnavailable(RuntimeError):
    """The bucket of leases did not answer: nobody can say who owns the workspace."""


class Leases:
    """The leases this broker holds, and the way to take, renew and release them."""

    def __init__(self, kv: KeyValue, owner: str, ttl_s: float, on_lost: LostCallback | None = None) -> None:
        self.kv = kv
        self.owner = owner
        self.ttl_s = ttl_s
        self.on_lost = on_lost
        self.held: dict[tuple[str, str], Held] = {}
        # Workspaces found held by another replica, and until when not to ask again (one KV read per event would
        # be one per call per replica).
        self._others: dict[tuple[str, str], float] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    @classmethod
    async def open(cls, js: JetStreamContext, owner: str, ttl_s: float, *, replicas: int = 1,
                   on_lost: LostCallback | None = None) -> "Leases":
        """Bind (or create, with max age `ttl_s`) the bucket of leases."""
        return cls(await open_bucket(js, LEASES_BUCKET, max_age_s=ttl_s, replicas=replicas), owner, ttl_s, on_lost)

    def owns(self, tenant: str, workspace: str) -> bool:
        """Held: taken and not given up (renew() gives a lease up before anyone else could take it)."""
        return (tenant, workspace) in self.held

    async def holder(self, tenant: str, workspace: str) -> str | None:
        """The broker id holding the lease now (None: nobody). Raises LeaseUnavailable."""
        try:
            entry = await self.kv.get(lease_key(tenant, workspace))
        except (KeyNotFoundError, KeyDeletedError):
            return None
        except Exception as exc:
            raise LeaseUnavailable(f"{type(exc).__name__}: {exc}") from None
        if not entry.value:
            return None
        try:
            return str(json.loads(entry.value)["broker"])
        except (ValueError, KeyError, TypeError):
            return entry.value.decode("utf-8", "replace")

    async def acquire(self, tenant: str, workspace: str) -> bool:
        """Hold the lease: True if this broker holds it (it did, or took it now), False if another one does.

        Raises LeaseUnavailable when the bucket does not answer (the caller must not act as the owner).
        """
        key = (tenant, workspace)
        async with self._locks.setdefault(key, asyncio.Lock()):
            if self.owns(tenant, workspace):
                return True
            if self._others.get(key, 0.0) > time.monotonic():
                return False
            value = json.dumps({"broker": self.owner, "since": utcnow().isoformat()}).encode()
            try:
                revision = await create_key(self.kv, lease_key(tenant, workspace), value)
            except KeyWrongLastSequenceError:  # a live lease: another replica's, or a stale one of ours
                self._others[key] = time.monotonic() + self.ttl_s / RENEWALS_PER_TTL
                return False
            except Exception as exc:
                raise LeaseUnavailable(f"{type(exc).__name__}: {exc}") from None
            self.held[key] = Held(revision, time.monotonic())
            self._others.pop(key, None)
            log.info("took the lease on %s/%s (revision %d)", tenant, workspace, revision)
            return True

    async def renew(self) -> None:
        """Renew every lease held; give up (and report) one that someone else took or that went unrenewed too long."""
        for (tenant, workspace), held in list(self.held.items()):
            value = json.dumps({"broker": self.owner, "renewed": utcnow().isoformat()}).encode()
            try:
                # Bounded: a renewal waiting on an election must not outlast the time left to renew.
                held.revision = await asyncio.wait_for(
                    self.kv.update(lease_key(tenant, workspace), value, last=held.revision),
                    self.ttl_s / RENEWALS_PER_TTL)
                held.renewed_at = time.monotonic()
                continue
            except KeyWrongLastSequenceError:
                if await self._wrote_last(tenant, workspace, held):
                    continue  # an earlier renewal that timed out here was stored after all
                reason = "another broker holds it now (it expired before this broker could renew it)"
            except Exception as exc:
                if time.monotonic() - held.renewed_at < self.ttl_s * FENCE_FRACTION:
                    log.warning("could not renew the lease on %s/%s (%s); trying again", tenant, workspace,
                                type(exc).__name__)
                    continue
                reason = (f"not renewed for {time.monotonic() - held.renewed_at:.1f} s "
                          f"({type(exc).__name__}: {exc})")
            await self._lose(tenant, workspace, reason)

    async def _wrote_last(self, tenant: str, workspace: str, held: Held) -> bool:
        """Whether the key's live value is this broker's own (then adopt its revision)."""
        try:
            entry = await self.kv.get(lease_key(tenant, workspace))
            if entry.value and json.loads(entry.value).get("broker") == self.owner and entry.revision:
                held.revision = entry.revision
                return True
        except Exception:
            pass
        return False

    async def _lose(self, tenant: str, workspace: str, reason: str) -> None:
        if self.held.pop((tenant, workspace), None) is None:
            return
        log.warning("lost the lease on %s/%s: %s", tenant, workspace, reason)
        if self.on_lost is not None:
            await self.on_lost(tenant, workspace, reason)

    async def keep(self) -> None:
        """Renew the leases held, forever (a background task)."""
        while True:
            await asyncio.sleep(self.ttl_s / RENEWALS_PER_TTL)
            try:
                await self.renew()
            except Exception:
                log.exception("renewing leases failed")

    async def once(self, name: str) -> bool:
        """True for the first replica to ask about `name` within a TTL (who answers something all replicas see)."""
        try:
            await create_key(self.kv, f"once.{name}", self.owner.encode())
            return True
        except KeyWrongLastSequenceError:
            return False
        except Exception:  # nobody can tell: answering twice beats not answering
            return True

    async def release(self, tenant: str, workspace: str) -> None:
        """Give the lease up now (its workers are stopped): another replica may take it at once."""
        held = self.held.pop((tenant, workspace), None)
        if held is None:
            return
        try:
            await self.kv.delete(lease_key(tenant, workspace), last=held.revision)
        except Exception as exc:  # it expires by itself
            log.info("could not release the lease on %s/%s (%s); it expires in %g s", tenant, workspace,
                     type(exc).__name__, self.ttl_s)

    async def release_all(self) -> None:
        for tenant, workspace in list(self.held):
            await self.release(tenant, workspace)
