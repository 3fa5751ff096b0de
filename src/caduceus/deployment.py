"""What each service's Secret holds in a deployment (Kubernetes, Compose): its own keys and nothing else.

A service signs with its own private key and verifies with the public keys of the services it trusts
(`load_keyring` trusts every `<issuer>.pub` in its keys directory); it talks to the bus with its own
credential. `write_service_secrets` makes the keys once (existing ones are kept) and lays out one directory
per service holding exactly what `SERVICE_FILES` names, so no service can read another's private key.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from caduceus_approval import DESK_ISSUER, load_or_create_secret
from caduceus_bus import SERVER_CONFIG_FILE, WORKER_SIGNING_FILE, BusAuthority, PermissionFile
from caduceus_contracts import ensure_signer

# The bus credential inside each service's directory (CADUCEUS_NATS_CREDENTIALS points at it).
BUS_CREDENTIALS = "bus.creds"
APPROVAL_UI_SECRET = "approval-ui.secret"
GATEWAY_WEB_SECRET = "gateway-web.secret"
# Who signs what: grants (identity), decisions (policy, approval), approvers' actions (the approval desk),
# audit checkpoints (audit).
ISSUERS = ("identity", "policy", "approval", DESK_ISSUER, "audit")

SERVICE_FILES: dict[str, tuple[str, ...]] = {
    # Signs session grants.
    "identity": ("identity.key", "identity.pub", BUS_CREDENTIALS),
    # Signs decisions; verifies identity's grants.
    "policy": ("policy.key", "policy.pub", "identity.pub", BUS_CREDENTIALS),
    # Signs approval decisions and approvers' actions, and the UI's cookies; verifies grants and policy's decisions.
    "approval": ("approval.key", "approval.pub", f"{DESK_ISSUER}.key", f"{DESK_ISSUER}.pub", APPROVAL_UI_SECRET,
                 "identity.pub", "policy.pub", BUS_CREDENTIALS),
    # Verifies decisions (and hands the public keys to its workers); mints worker credentials. No private key.
    "broker": ("identity.pub", "policy.pub", "approval.pub", BUS_CREDENTIALS, WORKER_SIGNING_FILE),
    # Signs checkpoints and verifies its own chain.
    "audit": ("audit.key", "audit.pub", BUS_CREDENTIALS),
    # Signs the web chat's cookies. No signing key: it decides nothing.
    "gateway": (GATEWAY_WEB_SECRET, BUS_CREDENTIALS),
    # Verifies grants (tool lists) and decisions (calls) before it calls an upstream. No private key.
    "mcp": ("identity.pub", "policy.pub", "approval.pub", BUS_CREDENTIALS),
    # Verifies the planners' grants (their API keys) and policy's model decisions. No private key.
    "inference": ("identity.pub", "policy.pub", BUS_CREDENTIALS),
}
# nats-server's authorization (public JWTs only), for the NATS deployment's Secret.
NATS_FILES = (SERVER_CONFIG_FILE,)


def write_service_secrets(out_dir: Path, permissions: PermissionFile) -> dict[str, Path]:
    """Make (or keep) every key and credential under out_dir/authority, and copy each service's into out_dir/<service>.

    Returns the directory of each service and of `nats`. Files are mode 0600, directories 0700.
    """
    authority = out_dir / "authority"
    bus = BusAuthority(authority / "bus", permissions)
    bus.write_all()
    signing = authority / "signing"
    signing.mkdir(mode=0o700, parents=True, exist_ok=True)
    for issuer in ISSUERS:
        ensure_signer(signing, issuer)
    load_or_create_secret(signing / APPROVAL_UI_SECRET)
    load_or_create_secret(signing / GATEWAY_WEB_SECRET)
    sources = {name: signing / name for name in (*(f"{i}.key" for i in ISSUERS), *(f"{i}.pub" for i in ISSUERS),
                                                 APPROVAL_UI_SECRET)}
    sources[WORKER_SIGNING_FILE] = authority / "bus" / WORKER_SIGNING_FILE
    sources[GATEWAY_WEB_SECRET] = signing / GATEWAY_WEB_SECRET
    sources[SERVER_CONFIG_FILE] = authority / "bus" / SERVER_CONFIG_FILE
    written = {}
    for service, files in {**SERVICE_FILES, "nats": NATS_FILES}.items():
        target = out_dir / service
        if target.exists():
            shutil.rmtree(target)  # a file dropped from SERVICE_FILES must not linger in the Secret
        target.mkdir(mode=0o700, parents=True)
        for name in files:
            source = authority / "bus" / f"{service}.creds" if name == BUS_CREDENTIALS else sources[name]
            (target / name).touch(mode=0o600)
            (target / name).write_bytes(source.read_bytes())
        written[service] = target
    return written
