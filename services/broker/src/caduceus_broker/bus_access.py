"""Each worker's own bus credential: minted per process, confined to its tenant and workspace.

The broker holds the account's scoped signing keys (never the account key): whatever it mints,
nats-server applies the worker role's template from infra/nats/permissions.yaml. Without signing
keys (a bus without authorization, as in service tests) workers connect like the broker, unauthenticated.
"""

from __future__ import annotations

import os
from pathlib import Path

from caduceus_bus import BusSettings, CredentialError, WorkerCredentialIssuer


class WorkerBusAccess:
    """The bus part of a worker's environment."""

    def __init__(self, bus: BusSettings, signing_file: Path | None) -> None:
        self.bus = bus
        self.issuer = WorkerCredentialIssuer.load(signing_file) if signing_file is not None else None

    def environment(self, role: str, tenant: str, workspace: str, worker_id: str, directory: Path) -> dict[str, str]:
        """CADUCEUS_NATS_* for one worker process; its credential is written (mode 0600) into `directory`."""
        env = {"CADUCEUS_NATS_URL": self.bus.nats_url}
        if self.bus.publish_retry_s:  # on a cluster its publishes wait out an election, as the broker's do
            env["CADUCEUS_PUBLISH_RETRY_S"] = f"{self.bus.publish_retry_s:g}"
        if self.issuer is None:
            if self.bus.nats_credentials is not None:
                # Handing a worker the broker's own credential would give it the broker's powers.
                raise CredentialError("the broker has a bus credential but no worker signing keys: set "
                                      "CADUCEUS_NATS_WORKER_SIGNING so each worker gets its own")
            if self.bus.nats_user:
                env.update(CADUCEUS_NATS_USER=self.bus.nats_user, CADUCEUS_NATS_PASSWORD=self.bus.nats_password or "")
            return env
        credential = self.issuer.issue(role, tenant, workspace, worker_id)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / f"{role}.creds"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(credential.text)
        env.update(CADUCEUS_NATS_CREDENTIALS=str(path), CADUCEUS_NATS_INBOX_PREFIX=credential.inbox_prefix)
        return env
