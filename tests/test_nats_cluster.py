"""A 3-node NATS cluster from the nats-server wheel: the event stream and KV buckets at three replicas, and a
node killed with kill -9 loses nothing. The whole stack on a cluster, with the stream leader's node killed under
governed calls, is tests/test_faults.py."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import nats.errors
import pytest

from caduceus_bus import BusSettings, EventConnection, open_bucket

sys.path.insert(0, str(Path(__file__).parent))  # the suite imports in importlib mode: the shared harness

pytestmark = pytest.mark.timeout(240)


def node_of(leader: str) -> int:
    """0-based node number of a server name `caduceus-nats-<n>`."""
    return int(leader.rsplit("-", 1)[1]) - 1


async def test_a_cluster_keeps_every_event_when_the_stream_leader_is_killed(nats_cluster):
    settings = BusSettings(nats_url=nats_cluster.url, stream_replicas=3, publish_retry_s=15)
    conn = await EventConnection.connect(settings, "cluster-test")
    try:
        await conn.ensure_stream()
        info = await conn.js.stream_info(settings.stream_name)
        assert info.config.num_replicas == 3
        bucket = await open_bucket(conn.js, "cluster_test", replicas=3)
        assert (await bucket.status()).stream_info.config.num_replicas == 3
        await bucket.put("lease", b"one")

        from caduceus_contracts import ErrorEvent

        def event(n: int) -> ErrorEvent:
            return ErrorEvent(tenant="acme", service="test", subject="x", reason=f"event {n}", excerpt="")

        for n in range(20):
            await conn.publish("cad.v1.error.acme.test", event(n))
        nats_cluster.kill(node_of(info.cluster.leader))
        # Publishing goes on through the election of a new leader: every event is confirmed, none twice.
        for n in range(20, 40):
            await conn.publish("cad.v1.error.acme.test", event(n))
        info = await conn.js.stream_info(settings.stream_name)
        assert info.state.messages == 40
        # The bucket is a stream of its own with its own leader, which may have been on the killed node too: a
        # read asked during that election times out (nothing is lost), so ask again until one answers.
        assert await read_through_election(bucket, "lease") == b"one"
    finally:
        await conn.close()


async def read_through_election(bucket, key: str, within_s: float = 30) -> bytes:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        try:
            return (await bucket.get(key)).value
        except nats.errors.TimeoutError:
            if asyncio.get_running_loop().time() > deadline:
                raise


async def test_a_killed_node_started_again_catches_up(nats_cluster):
    settings = BusSettings(nats_url=nats_cluster.url, stream_replicas=3, publish_retry_s=15)
    conn = await EventConnection.connect(settings, "cluster-test")
    try:
        await conn.ensure_stream()
        nats_cluster.kill(2)
        from caduceus_contracts import ErrorEvent

        for n in range(10):
            await conn.publish("cad.v1.error.acme.test",
                               ErrorEvent(tenant="acme", service="test", subject="x", reason=f"{n}", excerpt=""))
        nats_cluster.start(2)
        for _ in range(100):
            info = await conn.js.stream_info(settings.stream_name)
            if info.cluster and all(peer.current for peer in info.cluster.replicas or []):
                break
            await asyncio.sleep(0.1)
        assert all(peer.current for peer in info.cluster.replicas), info.cluster
    finally:
        await conn.close()
