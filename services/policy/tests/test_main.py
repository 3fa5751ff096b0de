"""`python -m caduceus_policy` as the embedded stack runs it."""

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

DEFAULT_POLICY = Path(__file__).resolve().parents[3] / "libs/embedded/src/caduceus_embedded/defaults/policy.yaml"


def env_for(tmp_path: Path, nats_url: str, policy_file: Path) -> dict[str, str]:
    return {**os.environ, "CADUCEUS_STATE_DIR": str(tmp_path), "CADUCEUS_NATS_URL": nats_url,
            "CADUCEUS_POLICY_FILE": str(policy_file)}


def test_a_bad_pack_stops_the_service_with_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text('version: "v1"\ntenants:\n  acme:\n    rules:\n      - {id: ok, effect: alow, tools: [x]}\n')
    result = subprocess.run([sys.executable, "-m", "caduceus_policy"], env=env_for(tmp_path, "nats://127.0.0.1:1", bad),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"{bad}:5: " in lines[0] and "rule 'ok'" in lines[0] and "use `allow`, `deny` or `approve`" in lines[0]


async def test_the_service_answers_health_and_stops_cleanly_on_sigterm(tmp_path: Path, fresh_nats: Any) -> None:
    policy_file = tmp_path / "policy.yaml"
    shutil.copy(DEFAULT_POLICY, policy_file)
    process = subprocess.Popen([sys.executable, "-m", "caduceus_policy"],
                               env=env_for(tmp_path, fresh_nats.url, policy_file),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    nc = await nats.connect(fresh_nats.url)
    try:
        reply = None
        for _ in range(100):
            try:
                reply = await nc.request("caduceus.health.policy", b"", timeout=0.2)
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                await asyncio.sleep(0.1)
        assert reply is not None and reply.data == b"ok"
        assert (tmp_path / "keys" / "policy.pub").exists()
    finally:
        await nc.close()
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=15)[0].decode()
    assert process.returncode == 0, output
