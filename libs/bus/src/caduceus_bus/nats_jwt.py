"""NATS decentralized authentication on the wire: nkeys, the JWTs nats-server trusts, and `.creds` files.

nats-server (operator mode) trusts an operator's public key; the operator signs account JWTs, an
account (or one of its scoped signing keys) signs user JWTs. A client proves it holds the user's
nkey by signing the server's nonce. Claims follow nats-io/jwt v2 (`"version": 2`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from typing import Any

import nkeys

ROLE_PREFIXES = {"operator": nkeys.PREFIX_BYTE_OPERATOR, "account": nkeys.PREFIX_BYTE_ACCOUNT,
                 "user": nkeys.PREFIX_BYTE_USER}
# No limit on subscriptions, data or payload (the server's max_payload still applies).
UNLIMITED = {"subs": -1, "data": -1, "payload": -1}
ACCOUNT_LIMITS = {**UNLIMITED, "imports": -1, "exports": -1, "wildcards": True, "conn": -1, "leaf": -1}
JETSTREAM_LIMITS = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
# Answering a request: one reply, within 30 s of receiving it (the MCP gateway's answer to a planner may wait
# for an MCP server to start and list its tools; the asker's own timeout is usually shorter).
RESPONSES = {"max": 1, "ttl": 30_000_000_000}


class NKey:
    """An nkey pair (operator, account or user), from its seed."""

    def __init__(self, seed: bytes) -> None:
        self._pair = nkeys.from_seed(bytearray(seed))
        self.seed = bytes(seed)

    @classmethod
    def generate(cls, role: str) -> "NKey":
        return cls(nkeys.encode_seed(os.urandom(32), ROLE_PREFIXES[role]))

    @property
    def public_key(self) -> str:
        return self._pair.public_key.decode()

    def sign(self, data: bytes) -> bytes:
        return self._pair.sign(data)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def encode_jwt(subject: str, name: str, nats: dict[str, Any], signer: NKey, *, expires_at: int | None = None) -> str:
    """A JWT for `subject` (a public key) signed by `signer`; `jti` is the hash of the claims, as nats-io/jwt does."""
    header = _b64(_compact({"typ": "JWT", "alg": "ed25519-nkey"}))
    claims: dict[str, Any] = {"jti": "", "iat": int(time.time()), "iss": signer.public_key, "name": name,
                              "sub": subject, "nats": {**nats, "version": 2}}
    if expires_at is not None:
        claims["exp"] = expires_at
    claims["jti"] = base64.b32encode(hashlib.new("sha512_256", _compact(claims)).digest()).rstrip(b"=").decode()
    payload = _b64(_compact(claims))
    return f"{header}.{payload}.{_b64(signer.sign(f'{header}.{payload}'.encode()))}"


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (for naming what a credential is; the server verifies it)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def permissions(publish: list[str], subscribe: list[str]) -> dict[str, Any]:
    """User permission claims: allow lists for publish and subscribe, and answering requests."""
    return {"pub": {"allow": publish}, "sub": {"allow": subscribe}, "resp": RESPONSES}


def operator_jwt(operator: NKey, system_account: NKey, name: str) -> str:
    return encode_jwt(operator.public_key, name, {"type": "operator", "system_account": system_account.public_key},
                      operator)


def account_jwt(account: NKey, operator: NKey, name: str, *, jetstream: bool = False,
                scoped_signers: dict[str, tuple[str, dict[str, Any]]] | None = None) -> str:
    """An account JWT; scoped_signers maps a role to (signing key public key, permission template)."""
    nats: dict[str, Any] = {"type": "account", "limits": {**ACCOUNT_LIMITS, **(JETSTREAM_LIMITS if jetstream else {})},
                            "default_permissions": {"pub": {}, "sub": {}}}
    if scoped_signers:
        nats["signing_keys"] = [{"kind": "user_scope", "key": key, "role": role, "template": {**template, **UNLIMITED}}
                                for role, (key, template) in sorted(scoped_signers.items())]
    return encode_jwt(account.public_key, name, nats, operator)


def user_jwt(user: NKey, name: str, signer: NKey, *, account: NKey | str,
             grants: dict[str, Any] | None = None, tags: list[str] | None = None) -> str:
    """A user JWT signed by the account itself (with `grants`) or by one of its scoped signing keys (with `tags`).

    A user signed by a scoped key carries no permissions of its own: the server applies the key's template.
    """
    account_key = account if isinstance(account, str) else account.public_key
    nats: dict[str, Any] = {"type": "user"}
    if grants is not None:
        nats.update(grants, **UNLIMITED)
    if tags:
        nats["tags"] = tags
    if signer.public_key != account_key:
        nats["issuer_account"] = account_key
    return encode_jwt(user.public_key, name, nats, signer)


INBOX_LINE = "# caduceus inbox prefix: "


def creds_text(jwt: str, user: NKey, inbox_prefix: str) -> str:
    """A `.creds` file (what nats clients read), with the inbox prefix the credential may subscribe to."""
    return (f"{INBOX_LINE}{inbox_prefix}\n"
            f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n\n"
            "*************************************************************\n")


def inbox_prefix_of(text: str) -> str | None:
    """The inbox prefix a Caduceus `.creds` file names, or None."""
    for line in text.splitlines():
        if line.startswith(INBOX_LINE):
            return line[len(INBOX_LINE):].strip() or None
    return None


def jwt_of(text: str) -> str:
    """The user JWT in a `.creds` file."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if "BEGIN NATS USER JWT" in line and index + 1 < len(lines):
            return lines[index + 1].strip()
    raise ValueError("not a NATS credentials file: no user JWT in it")
