"""Sandbox policies: what is refused at load and why, which file applies, which addresses the proxy refuses."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from caduceus_sandbox import BwrapBackend, PolicyError, PolicyFiles, SandboxPolicy, load_policy
from caduceus_sandbox.addresses import refusal


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "reason"), [
    ("version: 2\n", "version"),
    ("filesystem: {read_only: [etc]}\n", "absolute path"),
    ("filesystem: {read_only: [/]}\n", "whole host"),
    ("filesystem: {read_write: [/srv]}\n", "read_write"),
    ("network: {egress: anywhere}\n", "egress"),
    ("network: {egress: none, allow: [{host: pypi.org}]}\n", "set egress: allowlist"),
    ("network: {egress: allowlist}\n", "no host is allowed"),
    ("network: {egress: allowlist, allow: [{host: 'bad host'}]}\n", "not a host name"),
    ("network: {egress: allowlist, allow: [{host: pypi.org, ports: [0]}]}\n", "1 to 65535"),
    ("process: {max_processes: 2}\n", "max_processes"),
    ("secrets: {inject: [{name: tok, env: TOK}]}\n", "no store"),
    ("secrets: {store: s, inject: [{name: tok, env: TOK, scope: call, tools: [terminal]}]}\n", "must be a file"),
    ("secrets: {store: s, inject: [{name: tok, env: TOK, file: true}]}\n", "exactly one"),
    ("planner: {model_base_url: 'ftp://x'}\n", "model_base_url"),
])
def test_malformed_policy_is_refused_with_the_reason(tmp_path: Path, text: str, reason: str) -> None:
    with pytest.raises(PolicyError) as refused:
        load_policy(write(tmp_path / "sandbox.yaml", text))
    assert reason in str(refused.value) and "sandbox.yaml" in str(refused.value)


def test_policy_the_backend_cannot_enforce_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "secrets"
    store.mkdir()
    policy = load_policy(write(tmp_path / "p.yaml", "secrets: {store: secrets, inject: [{name: missing, file: true}]}\n"))
    with pytest.raises(PolicyError, match="'missing' is not in the store"):
        BwrapBackend().check(policy)
    with pytest.raises(PolicyError, match="exempts from the process limit"):
        BwrapBackend(sandbox_user=(0, 0), privileged=True).check(SandboxPolicy())


def test_secret_store_is_relative_to_the_policy_file(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path / "pol" / "p.yaml", "secrets: {store: ../vault, inject: [{name: t, file: true}]}\n"))
    assert policy.secrets.store == (tmp_path / "vault").resolve()


def test_the_most_specific_policy_file_applies(tmp_path: Path) -> None:
    default = write(tmp_path / "sandbox.yaml", "name: default\n")
    per = tmp_path / "sandboxes"
    write(per / "acme.yaml", "name: acme\n")
    write(per / "acme" / "build.yaml", "name: acme-build\n")
    files = PolicyFiles(default, per)
    assert files.policy_for("acme", "build")[0].name == "acme-build"
    assert files.policy_for("acme", "default")[0].name == "acme"
    assert files.policy_for("globex", "default")[0].name == "default"
    policy, path = PolicyFiles(tmp_path / "absent.yaml", per).policy_for("globex", "x")
    assert path is None and policy == SandboxPolicy() and policy.network.egress == "none"


@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.9", "private"), ("192.168.1.1", "private"), ("fd12::1", "private"),
    ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"), ("100.100.100.200", "metadata"),
    ("169.254.10.10", "link-local"), ("fe80::1", "link-local"), ("0.0.0.0", "not a unicast"),
    ("100.64.0.1", "not a public"), ("224.0.0.1", "not a unicast"),
])
def test_non_public_addresses_are_refused(address: str, why: str) -> None:
    reason = refusal(ipaddress.ip_address(address))
    assert reason is not None and why in reason


def test_public_addresses_and_allowed_ranges_pass() -> None:
    assert refusal(ipaddress.ip_address("151.101.0.223")) is None
    assert refusal(ipaddress.ip_address("2a04:4e42::223")) is None
    assert refusal(ipaddress.ip_address("10.1.2.3"), [ipaddress.ip_network("10.1.2.0/24")]) is None
    assert refusal(ipaddress.ip_address("10.1.3.3"), [ipaddress.ip_network("10.1.2.0/24")]) is not None
