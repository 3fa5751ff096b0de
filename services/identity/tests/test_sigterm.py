"""SIGTERM while identity holds chat messages: every message that reached it before the signal is answered (here,
refused: its token is no token), and the process exits 0."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats
import pytest

from caduceus_bus import settle
from caduceus_contracts import ChatMessageIn, ChatReply, parse_event, subjects

pytestmark = pytest.mark.timeout(90)
DEFAULT_TENANTS = Path(__file__).resolve().parents[3] / "libs/embedded/src/caduceus_embedded/defaults/tenants.yaml"
MESSAGES = 300


async def test_chat_messages_in_hand_at_sigterm_are_all_answered(tmp_path: Path, fresh_nats: Any) -> None:
    shutil.copy(DEFAULT_TENANTS, tmp_path / "tenants.yaml")
    env = {**os.environ, "CADUCEUS_STATE_DIR": str(tmp_path), "CADUCEUS_NATS_URL": fresh_nats.url,
           "CADUCEUS_TENANTS_FILE": str(tmp_path / "tenants.yaml"), "CADUCEUS_DEV_ISSUER_PORT": "0",
           "CADUCEUS_OIDC_ISSUER_URL": "http://127.0.0.1:9"}  # trusted, never reached: no token here parses
    process = subprocess.Popen([sys.executable, "-m", "caduceus_identity"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    nc = await nats.connect(fresh_nats.url)
    answered: dict[str, str] = {}

    async def on_reply(msg: Any) -> None:
        reply = parse_event(msg.data, expect=ChatReply)
        assert isinstance(reply, ChatReply)
        answered[reply.message_id] = reply.status

    try:
        await nc.subscribe(subjects.CHAT_REPLY_ALL, cb=on_reply)
        for _ in range(150):
            try:
                if (await nc.request("caduceus.health.identity", b"", timeout=0.2)).data == b"ok":
                    break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                await asyncio.sleep(0.1)
        sent = [ChatMessageIn(tenant="acme", session_id=f"s-term-{i}", token="not-a-token", text=f"hello {i}")
                for i in range(MESSAGES)]
        for message in sent:  # a burst: identity holds many of them when the signal comes
            await nc.publish(subjects.chat_in("acme"), message.model_dump_json().encode())
        await settle(nc)  # every message reached the server (and so identity's subscription) before the signal
        process.send_signal(signal.SIGTERM)
        answered_before_stop = len(answered)
        try:
            output = (await asyncio.to_thread(process.communicate, timeout=30))[0].decode()
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError("identity did not stop within 30s of SIGTERM:\n"
                                 + process.communicate()[0].decode()[-4000:]) from None
        assert process.returncode == 0, output[-3000:]
        assert answered_before_stop < MESSAGES, "identity answered everything before the signal: nothing was in hand"
        for _ in range(100):  # the last replies on their way to this subscriber
            if len(answered) >= MESSAGES:
                break
            await asyncio.sleep(0.1)
        missing = {m.message_id for m in sent} - set(answered)
        assert not missing, f"{len(missing)} of {MESSAGES} messages never answered:\n{output[-2000:]}"
        assert set(answered.values()) == {"refused"}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        await nc.close()
