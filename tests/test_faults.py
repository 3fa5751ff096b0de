"""Fault injection, short form: the embedded stack with two replicas of every service on a 3-node NATS cluster
and every store in one PostgreSQL database (`caduceus up --replicas 2 --nats-nodes 3 --database-url`), a steady
load of governed calls from two tenants, and one fault at a time: one replica of each service killed with SIGKILL
(the stateless web-facing ones, identity, gateway and inference, together), then the Temporal dev server, which is
restarted, then the nats-server node leading the event stream, started again 5 s later, then PostgreSQL restarted;
some calls need an admin's approval, given through the approvals API. The harness is bench/faults.py; its long form
runs there and kills each replica on its own.

After each fault: no call lost (each got a result, a denial or an error), none ran twice (the tool's own ledger in
the workspace), none ran without an `allow` decision for its digest or after its requester was told it was denied,
every answer within the gateway's bound, the audit trail verifies (what `caduceus audit verify` checks; the command
itself runs at the end), the stream holds as many events as audit stored, a chat turn per tenant is answered, and
the shared web ports (approvals UI, web chat, MCP endpoint, inference) answer while a replica is down."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus_bus import EventConnection
from caduceus_embedded.stack import EmbeddedStack
from caduceus_embedded.testing import PostgresServer

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
import faults  # bench/faults.py: the harness both forms share

pytestmark = pytest.mark.timeout(600)
PHASE_S = 3.0


@pytest.fixture(scope="module")
def database(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    if postgres_server.restart is None:
        pytest.skip("the PostgreSQL fault needs a PostgreSQL the test can restart (not a container)")
    yield postgres_server


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory, database: PostgresServer) -> Iterator[EmbeddedStack]:
    saved = {k: os.environ.get(k) for k in ("CADUCEUS_MODEL_BASE_URL", "CADUCEUS_AUDIT_CHECKPOINT_INTERVAL_S")}
    os.environ.pop("CADUCEUS_MODEL_BASE_URL", None)  # the scripted model
    os.environ["CADUCEUS_AUDIT_CHECKPOINT_INTERVAL_S"] = "2"
    try:
        with database.database("faults") as url, \
                faults.replicated_stack(tmp_path_factory.mktemp("faults"), replicas=2, nats_nodes=3,
                                        database_url=url) as stack:
            yield stack
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def copies_of(stack: EmbeddedStack) -> dict[str, int]:
    """How many nodes keep the event stream and the policy's buckets."""
    conn = await EventConnection.connect(stack.bus_settings("operator"), "faults-copies", role="operator")
    try:
        streams = [stack.bus_settings().stream_name, "KV_caduceus_policy_limits", "KV_caduceus_policy_packs"]
        return {name: (await conn.js.stream_info(name)).config.num_replicas for name in streams}
    finally:
        await conn.close()


def test_status_lists_every_replica_with_a_process_of_its_own(replicated: EmbeddedStack) -> None:
    result = CliRunner().invoke(app, ["status", "--state-dir", str(replicated.layout.root), "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["database"].startswith("postgresql+psycopg2://") and "/faults_" in status["database"]
    assert len(status["nats"]) == 3
    copies = asyncio.run(copies_of(replicated))
    assert set(copies.values()) == {3}, f"the stream and the buckets are kept on every node: {copies}"
    listed = {s["name"]: s for s in status["services"]}
    for name in (*faults.SERVICE_FAULTS, "broker"):
        assert listed[name]["up"] and listed[f"{name}-2"]["up"], sorted(listed)
    pids = [s["pid"] for s in listed.values()]
    assert len(pids) == len(set(pids))


def test_each_kill_leaves_every_call_answered_once_and_the_audit_trail_whole(replicated: EmbeddedStack,
                                                                             database: PostgresServer) -> None:
    chosen = faults.faults_of(replicas=2, nats_nodes=3, postgres=True, services=faults.SHORT_SERVICE_FAULTS)
    phases = faults.run(replicated, chosen, PHASE_S, say=print, database=database)
    print("\n" + faults.table(phases) + "\n\n" + faults.answers_not_ok(phases))
    assert [p.fault.split(" (")[0] for p in phases][:-2] == [*faults.SHORT_SERVICE_FAULTS, "temporal"]
    assert {one for p in phases for one in p.fault.split(" (")[0].split("+")} >= set(faults.SERVICE_FAULTS)
    assert phases[-2].fault.endswith("(stream leader)") and phases[-1].fault == "postgres"
    for p in phases:
        assert p.sent > 0, f"{p.fault}: no load during the phase"
        assert p.lost == 0, f"{p.fault}: {p.lost} calls never answered"
        assert p.executed_twice == 0, f"{p.fault}: {p.executed_twice} calls ran twice"
        assert p.ran_without_decision == 0, f"{p.fault}: {p.ran_without_decision} ran without an allow decision"
        assert p.ran_after_a_denial == 0, f"{p.fault}: {p.ran_after_a_denial} ran after their requester was told no"
        assert p.slowest_s <= faults.BOUND_S, f"{p.fault}: an answer took {p.slowest_s:.1f} s"
        assert p.recovered_s is not None, f"{p.fault}: no call succeeded for every tenant after the kill"
        assert p.audit_verify == "ok", f"{p.fault}: {p.audit_verify}"
        assert p.stream_events == p.stored_events, f"{p.fault}: stream {p.stream_events}, stored {p.stored_events}"
        assert p.turns == f"{len(faults.TENANTS)}/{len(faults.TENANTS)}", f"{p.fault}: chat turns {p.turns}"
        assert p.web_ports == "ok", f"{p.fault}: {p.web_ports}"
    # the load got results, not only denials: a kill is survived by the other replica, not by refusing everything
    assert sum(p.ok for p in phases) > sum(p.sent for p in phases) // 2
    assert faults.audit_verify_cli(replicated) == "ok"  # the command itself, once (each phase checked in-process)
