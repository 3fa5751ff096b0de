"""Streamable HTTP upstreams are reached through the tenant's egress rules, the same ones executors live by.

The rules are the `network` section of the tenant's sandbox policy (libs/sandbox: `sandbox.yaml`, then
`sandboxes/<tenant>.yaml`, then `sandboxes/<tenant>/<workspace>.yaml`). Every HTTP upstream connection goes
through the sandbox library's egress proxy, which the gateway runs on loopback, one per policy: it checks the host
and port against the allowlist, resolves the name itself, refuses loopback, private and metadata addresses unless
the policy allows them, and connects to the address it checked (no second resolution to rebind). Before
connecting, the gateway asks the same proxy whether it would admit the URL, so a refused upstream is an error
that names the rule, and nothing is sent to it. With no policy, or `egress: none`, no HTTP upstream is reached.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from caduceus_mcp.registry import Server
from caduceus_sandbox import EgressProxy, EgressRefused, PolicyError, PolicyFiles
from caduceus_sandbox.policy import Network

log = logging.getLogger(__name__)


class EgressDenied(Exception):
    """The tenant's egress rules do not let the gateway reach this URL; the message says which rule and how to
    allow it."""


def scope(tenant: str, workspace: str) -> str:
    """Whose rules: a workspace's (`acme/research`) or, for "", the tenant's own (`acme`)."""
    return f"{tenant}/{workspace}" if workspace else tenant


def url_target(url: str) -> tuple[str, int]:
    """The host and port a URL connects to."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EgressDenied(f"{url!r} is not an http(s) URL")
    return parts.hostname.lower(), parts.port or (443 if parts.scheme == "https" else 80)


def allowlist_refusal(network: Network, url: str) -> str | None:
    """Why the allowlist alone refuses `url` (without resolving it), or None: for warnings at registration."""
    try:
        host, port = url_target(url)
    except EgressDenied as exc:
        return str(exc)
    if network.egress != "allowlist":
        return "its egress is `none`"
    if not any(rule.matches(host, port) for rule in network.allow):
        return f"{host}:{port} is not on its egress allowlist"
    return None


@dataclass
class UpstreamEgress:
    """The tenants' egress rules for HTTP upstreams, and a loopback egress proxy per rule set in use."""

    policies: PolicyFiles = field(default_factory=lambda: PolicyFiles(None, None))
    _proxies: dict[Network, tuple[EgressProxy, asyncio.AbstractServer, str]] = field(default_factory=dict)
    _lock: asyncio.Lock | None = None

    def network(self, tenant: str, workspace: str) -> tuple[Network, Path | None]:
        """The egress rules for the tenant's workspace ("": the tenant's own) and the file they come from (None:
        the built-in default)."""
        try:
            policy, path = self.policies.policy_for(tenant, workspace)
        except (PolicyError, OSError) as exc:
            raise EgressDenied(f"the sandbox policy of {scope(tenant, workspace)} cannot be read ({exc}); no HTTP MCP "
                               "server is reached until it is fixed") from None
        return policy.network, path

    async def proxy_for(self, tenant: str, workspace: str, url: str) -> str:
        """The egress proxy URL to reach `url` through, once the proxy has admitted it; EgressDenied otherwise."""
        network, path = self.network(tenant, workspace)
        where = str(path) if path is not None else "the built-in sandbox policy"
        refusal = allowlist_refusal(network, url)
        if refusal is not None:
            raise EgressDenied(f"{url} is refused by the egress rules of {scope(tenant, workspace)} ({where}): {refusal}; "
                               "allow its host and port under network.allow to reach it")
        proxy, _, proxy_url = await self._proxy(network)
        host, port = url_target(url)
        try:
            await proxy.admit(host, port)
        except EgressRefused as exc:
            raise EgressDenied(f"{url} is refused by the egress rules of {scope(tenant, workspace)} ({where}): {exc}") \
                from None
        return proxy_url

    async def _proxy(self, network: Network) -> tuple[EgressProxy, asyncio.AbstractServer, str]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            running = self._proxies.get(network)
            if running is None:
                proxy = EgressProxy(network)
                server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
                port = server.sockets[0].getsockname()[1]
                running = (proxy, server, f"http://127.0.0.1:{port}")
                self._proxies[network] = running
                log.info("egress proxy for MCP upstreams on 127.0.0.1:%d", port)
            return running

    async def close(self) -> None:
        for _, server, _ in self._proxies.values():
            server.close()
        self._proxies.clear()


def registration_warnings(policies: PolicyFiles, server: Server) -> list[str]:
    """What a person registering an HTTP server should know: each workspace it serves whose egress rules would
    refuse it (the allowlist only; the egress proxy also refuses private addresses when the call is made)."""
    if server.transport != "http":
        return []
    warnings = []
    for workspace in server.workspaces or ("",):
        where = scope(server.tenant, workspace)
        try:
            policy, path = policies.policy_for(server.tenant, workspace)
        except (PolicyError, OSError) as exc:
            warnings.append(f"the sandbox policy of {where} cannot be read ({exc}): the server will not be reached")
            continue
        refusal = allowlist_refusal(policy.network, server.url)
        if refusal is not None:
            source = str(path) if path is not None else "the built-in sandbox policy"
            warnings.append(f"the egress rules of {where} ({source}) refuse {server.url}: {refusal}. Its tools are "
                            "not listed and its calls fail until network.allow lists its host and port")
    return warnings
