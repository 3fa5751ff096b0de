"""What lives where in a state dir, and preparing it before anything starts.

```
<state_dir>/
  stack.json            the running stack advertises itself here (stackinfo)
  tenants.yaml, policy.yaml, scenarios.yaml, sandbox.yaml   copied from defaults/ once; the operator's to edit
  sandboxes/            per-tenant/workspace sandbox policies (optional; see sandbox.yaml)
  nats/                 JetStream file store
  temporal/temporal.db  Temporal dev server (SQLite)
  keys/                 Ed25519 keys of identity, policy and approval
  keys/nats/            the bus authority: nats-server's authorization and every process's credential
  logs/<name>.log       one log per process
  workspaces/, workers/ the broker's tenant workspaces and Hermes worker homes
  audit.db              the audit chains (SQLite)
  database.url          the PostgreSQL database of every store instead (`caduceus up --database-url`)
```
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from caduceus_contracts import ensure_signer

DEFAULT_FILES = ("tenants.yaml", "policy.yaml", "scenarios.yaml", "sandbox.yaml")
SIGNING_ISSUERS = ("identity", "policy", "approval")


@dataclass(frozen=True)
class StateLayout:
    root: Path

    @property
    def nats_store(self) -> Path:
        return self.root / "nats"

    @property
    def temporal_db(self) -> Path:
        return self.root / "temporal" / "temporal.db"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def bus_keys(self) -> Path:
        return self.keys / "nats"

    def bus_credentials(self, role: str) -> Path:
        """The `.creds` file of a service role (`client` for chat clients, `operator` for the stack itself)."""
        return self.bus_keys / f"{role}.creds"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def workspaces(self) -> Path:
        return self.root / "workspaces"

    @property
    def workers(self) -> Path:
        return self.root / "workers"

    @property
    def audit_db(self) -> Path:
        return self.root / "audit.db"

    @property
    def audit_db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.audit_db}"

    @property
    def database_file(self) -> Path:
        return self.root / "database.url"

    @property
    def database_url(self) -> str | None:
        """The PostgreSQL database every store of this state dir lives in (audit, identity, the web chat's
        conversations, MCP pins), as `caduceus up --database-url` kept it; None: SQLite files here."""
        try:
            return self.database_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def keep_database_url(self, url: str) -> None:
        """Remember the database for every later command on this state dir (0600: the URL may hold a password)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.database_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(url + "\n")

    @property
    def tenants_file(self) -> Path:
        return self.root / "tenants.yaml"

    @property
    def policy_file(self) -> Path:
        return self.root / "policy.yaml"

    @property
    def sandbox_file(self) -> Path:
        return self.root / "sandbox.yaml"

    @property
    def scenarios_file(self) -> Path:
        return self.root / "scenarios.yaml"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def prepare(self) -> None:
        """Create the directories, copy missing default files, and make sure the signing keys exist.

        Keys are made here, before any service starts, so every service finds every
        public key in keys/ at startup. Existing files are never overwritten.
        """
        for directory in (self.nats_store, self.temporal_db.parent, self.logs, self.workspaces, self.workers):
            directory.mkdir(parents=True, exist_ok=True)
        self.keys.mkdir(mode=0o700, exist_ok=True)  # private signing keys
        copy_default_files(self.root)
        for issuer in SIGNING_ISSUERS:
            ensure_signer(self.keys, issuer)


def copy_default_files(state_dir: Path) -> list[Path]:
    """Copy each shipped default file that the state dir does not have yet; return those copied."""
    defaults = resources.files("caduceus_embedded") / "defaults"
    copied = []
    for name in DEFAULT_FILES:
        source = defaults / name
        target = state_dir / name
        if source.is_file() and not target.exists():
            with resources.as_file(source) as path:
                shutil.copyfile(path, target)
            copied.append(target)
    return copied
