"""What a worker is told about the bus: the broker's servers, its own credential, and on a cluster the same
patience with a stream leader's election as the broker (a planner's request or an executor's outcome published
while the leader's node is lost is stored after the election, not failed)."""

from __future__ import annotations

from pathlib import Path

from caduceus_broker.bus_access import WorkerBusAccess
from caduceus_bus import BusSettings


def test_on_a_cluster_a_worker_waits_out_an_election_as_the_broker_does(tmp_path: Path) -> None:
    cluster = BusSettings(nats_url="nats://a:4222,nats://b:4222", publish_retry_s=15)
    env = WorkerBusAccess(cluster, None).environment("planner", "acme", "default", "w-1", tmp_path)
    assert env["CADUCEUS_NATS_URL"] == "nats://a:4222,nats://b:4222"
    assert BusSettings.model_validate({"nats_url": env["CADUCEUS_NATS_URL"],
                                       "publish_retry_s": env["CADUCEUS_PUBLISH_RETRY_S"]}).publish_retry_s == 15


def test_on_one_server_a_worker_is_told_nothing_more(tmp_path: Path) -> None:
    env = WorkerBusAccess(BusSettings(nats_url="nats://a:4222"), None).environment("executor", "acme", "default",
                                                                                  "w-1", tmp_path)
    assert env == {"CADUCEUS_NATS_URL": "nats://a:4222"}
