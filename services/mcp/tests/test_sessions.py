"""Stdio servers stay up between calls (a sandboxed server takes seconds to start), one per tenant, workspace and
server, and are started afresh when that is the safe thing: after a failed or timed-out call, a changed
credential or registration, or when idle. A definition changed in the middle of a session is still caught."""

from __future__ import annotations

import pytest

from caduceus_mcp import McpGateway

from .conftest import Keys, dispatched, stdio_server, write_registry
from .test_governed_calls import approve_first_use

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]
PID = "mcp__files__pid"


async def served_by(gateway: McpGateway, keys: Keys, **kwargs) -> str:
    done = await gateway.call(dispatched(keys, PID, {}, **kwargs))
    assert done.status == "ok", done.reason
    return done.result


async def test_calls_share_one_live_server_and_a_rug_pull_in_it_is_still_withheld(gateway, keys, tmp_path) -> None:
    await approve_first_use(gateway, keys, PID, {})
    await approve_first_use(gateway, keys, "mcp__files__echo", {"text": "hi"})
    first = await served_by(gateway, keys)
    assert await served_by(gateway, keys) == first  # no new process per call
    (tmp_path / "rug").touch()  # the live server now describes echo otherwise
    done = await gateway.call(dispatched(keys, "mcp__files__echo", {"text": "hi"}))
    assert done.status == "denied" and "changed since it was approved" in done.reason


async def test_a_timed_out_call_ends_its_server_the_next_call_gets_a_fresh_one(gateway, keys) -> None:
    await approve_first_use(gateway, keys, PID, {})
    before = await served_by(gateway, keys)
    hung = await approve_first_use(gateway, keys, "mcp__files__hang", {})
    assert hung.status == "error"
    after = await served_by(gateway, keys)
    assert after != before  # the hung call is not left running in a session others use
    await gateway.sessions.close_idle()
    assert not _alive(int(before))


async def test_a_server_that_died_is_started_again_on_the_next_call(gateway, keys) -> None:
    await approve_first_use(gateway, keys, PID, {})
    before = await served_by(gateway, keys)
    died = await approve_first_use(gateway, keys, "mcp__files__die", {})
    assert died.status == "error"
    assert await served_by(gateway, keys) != before


async def test_a_rotated_credential_or_changed_registration_starts_a_new_server(gateway, keys, tmp_path) -> None:
    await approve_first_use(gateway, keys, PID, {})
    before = await served_by(gateway, keys)
    gateway.secrets.write("acme", "upstream-token", "a-rotated-token")
    rotated = await served_by(gateway, keys)
    assert rotated != before
    done = await approve_first_use(gateway, keys, "mcp__files__whoami", {})
    assert done.status == "ok" and "a-rotated-token" not in done.result  # the new value, redacted as the old one
    # The same server with another environment: what it runs with changed, so it runs anew.
    write_registry(tmp_path / "mcp.yaml", stdio_server("files", tmp_path / "other-rug", "        timeout_s: 3\n"))
    assert await served_by(gateway, keys) != rotated


async def test_an_idle_server_is_stopped_and_the_next_call_starts_it_again(gateway, keys) -> None:
    await approve_first_use(gateway, keys, PID, {})
    before = await served_by(gateway, keys)
    gateway.sessions.idle_s = 0
    assert await gateway.sessions.close_idle() >= 1
    assert not _alive(int(before)) and len(gateway.sessions) == 0
    assert await served_by(gateway, keys) != before


async def test_each_workspace_gets_its_own_server(gateway, keys) -> None:
    await approve_first_use(gateway, keys, PID, {})
    default = await served_by(gateway, keys)
    other = await served_by(gateway, keys, workspace="lab")
    assert other != default


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
