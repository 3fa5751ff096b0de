"""Where a running embedded stack advertises itself: `<state_dir>/stack.json`.

`caduceus up` writes it once every service is ready and removes it on a clean stop;
`caduceus chat`, `caduceus demo` and the client library read it to find the stack.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import platformdirs
from pydantic import BaseModel

from caduceus_bus import BusSettings

STACK_FILE = "stack.json"


class StackInfo(BaseModel):
    state_dir: str
    pid: int
    nats_url: str
    dev_issuer_url: str
    temporal_address: str
    temporal_ui_url: str
    model_base_url: str
    audit_db_url: str
    database: str = ""  # the PostgreSQL database of every store, without its password (empty: SQLite files)
    services: dict[str, int] = {}  # service name -> pid
    down: dict[str, str] = {}  # service name -> why the stack left it down (a crash loop)
    approval_ui_url: str = ""
    webchat_url: str = ""  # the gateway's web chat (empty: no gateway)
    # service name -> where it serves /healthz, /readyz and /metrics
    metrics_urls: dict[str, str] = {}
    # The bus credentials a chat client and the operator connect with (empty: the bus needs none).
    client_credentials: str = ""
    operator_credentials: str = ""
    # How long a publish waits out a stream leader's election (on a cluster) before it fails.
    publish_retry_s: float = 0.0

    def bus_settings(self, role: str = "client") -> BusSettings:
        """How a process on this machine connects to the stack's bus as `client` or `operator`."""
        credentials = {"client": self.client_credentials, "operator": self.operator_credentials}[role]
        return BusSettings(nats_url=self.nats_url, nats_credentials=Path(credentials) if credentials else None,
                           publish_retry_s=self.publish_retry_s)


def default_state_dir() -> Path:
    """CADUCEUS_STATE_DIR, else the user's data dir (e.g. ~/.local/share/caduceus)."""
    override = os.environ.get("CADUCEUS_STATE_DIR")  # read here only: the CLI's --state-dir default
    return Path(override) if override else Path(platformdirs.user_data_dir("caduceus"))


def write_stack_info(info: StackInfo) -> Path:
    path = Path(info.state_dir) / STACK_FILE
    tmp = path.with_suffix(".tmp")
    # 0600: audit_db_url may hold the database's password.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(info.model_dump_json(indent=2))
    tmp.replace(path)
    return path


def read_stack_info(state_dir: Path) -> StackInfo | None:
    """The advertised stack, or None when none was started here or its process is gone."""
    path = Path(state_dir) / STACK_FILE
    try:
        info = StackInfo.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return info


def clear_stack_info(state_dir: Path) -> None:
    (Path(state_dir) / STACK_FILE).unlink(missing_ok=True)
