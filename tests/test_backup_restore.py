"""`caduceus backup` and `caduceus restore` on a real embedded stack: a governed turn is audited, the stopped stack
is backed up, restored into a fresh state dir, and that state dir verifies with the same records, the same keys
(mode 0600) and the same event stream, on which a restarted stack carries on."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus.commands.demo import DEMO_MESSAGE
from caduceus_audit import AuditStore
from caduceus_bus import EventConnection
from caduceus_client import ChatClient, TurnTranscript
from caduceus_embedded import StateLayout
from caduceus_embedded.ports import StackPorts
from caduceus_embedded.stack import EmbeddedStack
from caduceus_identity.devtoken import mint_dev_token

pytestmark = pytest.mark.timeout(300)
# What a stack started on a restored state dir adds itself: the broker tells of the workers the old one left.
FROM_A_START = {"worker.lifecycle"}


def caduceus(*args: str | Path):
    return CliRunner().invoke(app, [str(arg) for arg in args], catch_exceptions=False)


def audited(state: Path, at_least: int, timeout: float = 20.0) -> int:
    store = AuditStore(f"sqlite:///{state}/audit.db")
    deadline = time.monotonic() + timeout
    while (count := store.count()) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
    checkpointed = store.checkpoints.events("acme")
    while not checkpointed and time.monotonic() < deadline:
        time.sleep(0.2)
        checkpointed = store.checkpoints.events("acme")
    store.close()
    return count


async def stream_messages(stack: EmbeddedStack) -> int:
    connection = await EventConnection.connect(stack.bus_settings("operator"), "backup-test", role="operator")
    try:
        return (await connection.js.stream_info(connection.settings.stream_name)).state.messages
    finally:
        await connection.nc.close()


def chain(state: Path) -> list[tuple[str, str]]:
    store = AuditStore(f"sqlite:///{state}/audit.db")
    try:
        return [(record.kind, record.hash) for record in store.records()]
    finally:
        store.close()


@pytest.fixture()
def quick_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADUCEUS_AUDIT_CHECKPOINT_INTERVAL_S", "1")
    monkeypatch.delenv("CADUCEUS_MODEL_BASE_URL", raising=False)


async def governed_turn(stack: EmbeddedStack) -> TurnTranscript:
    chat = await ChatClient.connect(stack.info.bus_settings("client"))
    try:
        token = mint_dev_token(stack.info.dev_issuer_url, "acme", "alice")
        return await chat.send(tenant="acme", token=token, text=DEMO_MESSAGE, watch=True, timeout=180)
    finally:
        await chat.close()


def test_a_backup_of_a_governed_turn_restores_into_a_fresh_state_dir_that_verifies(
        tmp_path: Path, quick_checkpoints: None) -> None:
    old, new, backup = tmp_path / "old", tmp_path / "new", tmp_path / "caduceus.tar.gz"
    with EmbeddedStack(old, StackPorts.free()) as stack:
        transcript = asyncio.run(governed_turn(stack))
        assert transcript.calls, "the turn made no tool calls"
        audited(old, len(transcript.event_ids))

        running = caduceus("backup", "--state-dir", old, "--out", tmp_path / "live.tar.gz")
        assert running.exit_code == 2 and "--without-stream" in " ".join(running.output.split())
        live = caduceus("backup", "--state-dir", old, "--out", tmp_path / "live.tar.gz", "--without-stream", "--json")
        assert live.exit_code == 0, live.output
        assert json.loads(live.stdout)["stream"] == "left out (--without-stream)"

    records = audited(old, 0)
    made = caduceus("backup", "--state-dir", old, "--out", backup, "--json")
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["audit_records"] == records
    assert backup.stat().st_mode & 0o777 == 0o600

    restored = caduceus("restore", "--state-dir", new, backup, "--json")
    assert restored.exit_code == 0, restored.output
    summary = json.loads(restored.stdout)
    assert summary["audit_records"] == records and summary["stream"].startswith("store directory")

    verified = caduceus("audit", "verify", "--state-dir", new, "--json")
    assert verified.exit_code == 0, verified.output
    tenants = json.loads(verified.stdout)["tenants"]
    assert sum(t["records"] for t in tenants) == records and all(t["checkpoints"] for t in tenants)
    keys = sorted(p.relative_to(old) for p in (old / "keys").rglob("*") if p.is_file())
    assert keys and keys == sorted(p.relative_to(new) for p in (new / "keys").rglob("*") if p.is_file())
    for key in keys:
        assert (new / key).read_bytes() == (old / key).read_bytes()
        assert (new / key).stat().st_mode & 0o777 == 0o600, key
    assert (new / "tenants.yaml").read_bytes() == (old / "tenants.yaml").read_bytes()
    # The stores of the gateways too: the web chat's conversations, the pinned MCP definitions.
    assert {"gateway.db", "mcp-pins.db"} <= set(summary["stores"]), summary
    for store in ("gateway.db", "mcp-pins.db"):
        assert (new / store).is_file(), store

    # The restored stream is the old one: a stack started on it serves the checkpoints to verify --bus, and its
    # audit consumer carries on from where it was: the chains go on after the restored records.
    with EmbeddedStack(new, StackPorts.free()) as restarted:
        assert asyncio.run(stream_messages(restarted)) >= records, "the event stream was not restored"
        on_bus = caduceus("audit", "verify", "--state-dir", new, "--bus", "--json")
        assert on_bus.exit_code == 0, on_bus.output
        assert "the bus" in json.loads(on_bus.stdout)["checkpoint_sources"]
    assert chain(new)[:records] == chain(old)
    assert not [kind for kind, _hash in chain(new)[records:] if kind not in FROM_A_START], chain(new)[records:]


def test_restore_refuses_a_used_state_dir_and_a_damaged_backup(tmp_path: Path) -> None:
    old = tmp_path / "old"
    (old / "keys").mkdir(parents=True)
    (old / "keys" / "audit.key").write_bytes(b"secret")
    (old / "tenants.yaml").write_text("tenants: {}\n")
    backup = tmp_path / "b.tar.gz"
    assert caduceus("backup", "--state-dir", old, "--out", backup).exit_code == 0
    assert caduceus("backup", "--state-dir", old, "--out", backup).exit_code == 2  # never overwrites

    used = tmp_path / "used"
    used.mkdir()
    (used / "something").write_text("x")
    refused = caduceus("restore", "--state-dir", used, backup)
    assert refused.exit_code == 2 and "--force" in refused.output
    assert caduceus("restore", "--state-dir", used, backup, "--force").exit_code == 0
    assert (used / "keys" / "audit.key").read_bytes() == b"secret" and (used / "something").exists()

    damaged = tmp_path / "damaged.tar.gz"
    data = bytearray(backup.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    broken = caduceus("restore", "--state-dir", tmp_path / "fresh", damaged)
    assert broken.exit_code == 1 and "Nothing was restored" in broken.output
    assert not (tmp_path / "fresh" / "keys").exists()
    assert caduceus("restore", "--state-dir", tmp_path / "none", tmp_path / "missing.tar.gz").exit_code == 2


def test_a_postgresql_audit_store_is_left_to_pg_dump_and_the_backup_says_so(tmp_path: Path) -> None:
    (tmp_path / "state" / "keys").mkdir(parents=True)
    made = caduceus("backup", "--state-dir", tmp_path / "state", "--out", tmp_path / "b.tar.gz", "--json",
                    "--audit-db", "postgresql+psycopg2://audit:secret@db/audit")
    assert made.exit_code == 0, made.output
    notes = json.loads(made.stdout)["manifest"]["notes"]
    assert len(notes) == 1 and "pg_dump" in notes[0] and "pg_restore" in notes[0] and "secret" not in notes[0]


def test_a_state_dir_on_postgresql_leaves_every_store_there_to_pg_dump(tmp_path: Path) -> None:
    """A stack started with --database-url keeps audit, identity, the web chat and MCP pins in PostgreSQL: the backup
    copies none of them (nor an old SQLite file beside), says so once without the password, and keeps database.url."""
    state = tmp_path / "state"
    (state / "keys").mkdir(parents=True)
    StateLayout(state).keep_database_url("postgresql+psycopg2://caduceus:hunter2@db/caduceus")
    (state / "identity.db").write_bytes(b"")  # left from before the move to PostgreSQL: not the store any more
    made = caduceus("backup", "--state-dir", state, "--out", tmp_path / "b.tar.gz", "--json")
    assert made.exit_code == 0, made.output
    manifest = json.loads(made.stdout)["manifest"]
    assert not set(manifest["sqlite_rows"]) & {"audit.db", "identity.db", "gateway.db", "mcp-pins.db"}
    (note,) = manifest["notes"]
    assert "pg_dump" in note and "db/caduceus" in note and "hunter2" not in note
    restored = caduceus("restore", "--state-dir", tmp_path / "new", tmp_path / "b.tar.gz", "--json")
    assert restored.exit_code == 0, restored.output
    assert StateLayout(tmp_path / "new").database_url == "postgresql+psycopg2://caduceus:hunter2@db/caduceus"
    assert (tmp_path / "new" / "database.url").stat().st_mode & 0o777 == 0o600
