"""The egress proxy, driven in-process through its unix socket like a sandboxed tool would drive it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from caduceus_sandbox import ChannelServers, SandboxPolicy
from caduceus_sandbox.channels import Channel
from caduceus_sandbox.egress import EgressProxy


@pytest.fixture()
async def origin():
    """An HTTP origin on loopback that answers every request with its path."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ")[1]
        body = b"origin saw " + path
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def proxy_socket(tmp_path: Path, network: dict) -> tuple[ChannelServers, str]:
    policy = SandboxPolicy.model_validate({"network": network})
    servers = ChannelServers(tmp_path, [Channel("egress", "127.0.0.10", 3128)], EgressProxy(policy.network))
    await servers.start()
    return servers, str(tmp_path / "egress.sock")


async def ask(socket_path: str, request: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(socket_path)
    writer.write(request)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return response


async def test_allowlisted_host_is_reached_by_plain_http_and_connect(tmp_path: Path, origin: int) -> None:
    servers, sock = await proxy_socket(tmp_path, {"egress": "allowlist", "allow": [{"host": "127.0.0.1",
                                                  "ports": [origin]}], "allow_addresses": ["127.0.0.0/8"]})
    plain = await ask(sock, f"GET http://127.0.0.1:{origin}/plain HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert plain.startswith(b"HTTP/1.1 200") and plain.endswith(b"origin saw /plain")
    tunnel = await ask(sock, f"CONNECT 127.0.0.1:{origin} HTTP/1.1\r\n\r\nGET /tunnel HTTP/1.1\r\n\r\n".encode())
    assert tunnel.startswith(b"HTTP/1.1 200 Connection established") and tunnel.endswith(b"origin saw /tunnel")
    await servers.close()


async def test_host_off_the_allowlist_is_refused(tmp_path: Path, origin: int) -> None:
    servers, sock = await proxy_socket(tmp_path, {"egress": "allowlist", "allow": [{"host": "pypi.org"}]})
    response = await ask(sock, f"CONNECT 127.0.0.1:{origin} HTTP/1.1\r\n\r\n".encode())
    assert response.startswith(b"HTTP/1.1 403") and b"not on this workspace's egress allowlist" in response
    await servers.close()


async def test_allowlisted_name_that_resolves_to_loopback_is_refused(tmp_path: Path, origin: int) -> None:
    # localhost is on the allowlist, but the proxy resolves it itself and sees a loopback address.
    servers, sock = await proxy_socket(tmp_path, {"egress": "allowlist", "allow": [{"host": "localhost",
                                                                                    "ports": [origin]}]})
    response = await ask(sock, f"GET http://localhost:{origin}/x HTTP/1.1\r\n\r\n".encode())
    assert response.startswith(b"HTTP/1.1 403") and b"localhost resolves to" in response and b"loopback" in response
    await servers.close()


async def test_allowlisted_private_address_needs_allow_addresses(tmp_path: Path, origin: int) -> None:
    servers, sock = await proxy_socket(tmp_path, {"egress": "allowlist", "allow": [{"host": "127.0.0.1",
                                                                                    "ports": [origin]}]})
    response = await ask(sock, f"CONNECT 127.0.0.1:{origin} HTTP/1.1\r\n\r\n".encode())
    assert response.startswith(b"HTTP/1.1 403") and b"loopback" in response
    await servers.close()


async def test_malformed_requests_are_answered_400(tmp_path: Path) -> None:
    servers, sock = await proxy_socket(tmp_path, {"egress": "allowlist", "allow": [{"host": "pypi.org"}]})
    assert (await ask(sock, b"HELLO\r\n\r\n")).startswith(b"HTTP/1.1 400")
    assert (await ask(sock, b"GET /relative HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 400")
    await servers.close()
