"""The executor's side of secrets: workspace ones for its whole life, call ones around each matching call.

Values arrive once on an inherited pipe (see caduceus_sandbox.secrets). Workspace secrets become
environment variables (which every tool inherits) or files under /run/secrets; call secrets are
files that exist only while a call of one of their tools runs. Every value is scrubbed from
results before they leave the executor, so a tool that prints a secret does not put it on the bus.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from caduceus_sandbox.secrets import receive_secrets

SECRETS_DIR = Path("/run/secrets")


class ExecutorSecrets:
    def __init__(self, bundle: list[dict]) -> None:
        self.bundle = bundle

    @classmethod
    def receive(cls, fd: int | None) -> "ExecutorSecrets":
        return cls(receive_secrets(fd) if fd is not None else [])

    @property
    def has_call_secrets(self) -> bool:
        return any(s["scope"] == "call" for s in self.bundle)

    def apply_workspace(self) -> None:
        """Put workspace secrets in place: call before Hermes is imported, so its tools see them."""
        for secret in self.bundle:
            if secret["scope"] != "workspace":
                continue
            if secret["env"]:
                os.environ[secret["env"]] = secret["value"]
            else:
                _write(secret)

    @contextlib.contextmanager
    def for_call(self, tool: str) -> Iterator[None]:
        """The call-scoped secrets of `tool` exist while the block runs, and are removed after."""
        placed = [s for s in self.bundle if s["scope"] == "call" and tool in s["tools"]]
        try:
            for secret in placed:
                _write(secret)
            yield
        finally:
            for secret in placed:
                (SECRETS_DIR / secret["name"]).unlink(missing_ok=True)

    def scrub(self, text: str) -> str:
        for secret in self.bundle:
            if secret["value"]:
                text = text.replace(secret["value"], f"[secret {secret['name']}]")
        return text


def _write(secret: dict) -> None:
    path = SECRETS_DIR / secret["name"]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret["value"])
