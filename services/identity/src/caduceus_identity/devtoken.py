"""Getting a token from the dev OIDC issuer: for the CLI, the chat client and the demo."""

from __future__ import annotations

from collections.abc import Sequence

import httpx


class DevTokenError(RuntimeError):
    """The dev issuer could not be reached or refused the request; the message says what to do."""


def mint_dev_token(issuer_url: str, tenant: str, user: str, roles: Sequence[str] | None = None,
                   ttl_s: int | None = None, *, timeout_s: float = 5.0, audience: str | None = None) -> str:
    """A signed token for `user` of `tenant` from the dev issuer at `issuer_url` (roles default to tenants.yaml;
    `audience` asks for another resource's audience, e.g. the MCP endpoint's)."""
    body: dict = {"tenant": tenant, "user": user}
    if roles is not None:
        body["roles"] = list(roles)
    if ttl_s is not None:
        body["ttl_s"] = ttl_s
    if audience is not None:
        body["audience"] = audience
    url = f"{issuer_url.rstrip('/')}/dev/token"
    try:
        response = httpx.post(url, json=body, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise DevTokenError(
            f"no dev issuer answers at {issuer_url} ({type(exc).__name__}): start the stack with `caduceus up`, "
            "or pass the right issuer URL"
        ) from None
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    if response.status_code != 200:
        detail = payload.get("error") if isinstance(payload, dict) else None
        raise DevTokenError(f"the dev issuer at {issuer_url} refused: {detail or f'HTTP {response.status_code}'}")
    token = payload.get("token") if isinstance(payload, dict) else None
    if not isinstance(token, str) or not token:
        raise DevTokenError(f"the dev issuer at {issuer_url} answered without a token: is it a Caduceus dev issuer?")
    return token
