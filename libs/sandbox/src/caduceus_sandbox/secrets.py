"""Named secrets: read from the policy's store by the broker, handed to the executor over a pipe.

A secret's value never travels on the bus, never enters the planner, and never is written
anywhere but the executor's sandbox. The broker writes the bundle (each injection with its
value) into a pipe whose read end only the executor inherits; the executor reads it once.
"""

from __future__ import annotations

import json
import os

from caduceus_sandbox.policy import PolicyError, SandboxPolicy


def read_secrets(policy: SandboxPolicy) -> list[dict]:
    """Each injection of the policy with its value from the store; PolicyError naming a missing one."""
    bundle = []
    store = policy.secrets.store
    for injection in policy.secrets.inject:
        assert store is not None  # the policy model requires a store when secrets are injected
        try:
            value = (store / injection.name).read_text().rstrip("\n")
        except OSError as exc:
            raise PolicyError(f"secret {injection.name!r} cannot be read from {store}: {exc.strerror}") from None
        bundle.append({**injection.model_dump(mode="json"), "value": value})
    return bundle


def secrets_pipe(bundle: list[dict]) -> int:
    """A pipe holding the bundle; returns the read end (the caller passes it to the executor and closes it)."""
    data = json.dumps(bundle).encode()
    read_end, write_end = os.pipe()
    try:
        if len(data) > 60_000:
            raise PolicyError("the secrets bundle is larger than 60 kB; keep secrets small (tokens, keys)")
        os.write(write_end, data)  # fits in the pipe buffer: no reader needed yet
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return read_end


def receive_secrets(fd: int) -> list[dict]:
    """Read the bundle from the inherited pipe and close it (the executor's side)."""
    with os.fdopen(fd, "rb") as pipe:
        return json.loads(pipe.read() or b"[]")
