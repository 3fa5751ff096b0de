"""The sandbox policy: what one tenant/workspace's workers may read, write, reach and run.

One YAML file per tenant/workspace (see `PolicyFiles`). The same policy runs here
under bubblewrap and renders for Docker, Kubernetes and OpenShell. Anything not
granted is denied: the filesystem is the listed read-only paths, the workspace
(executor only) and a private /tmp; the network is nothing, or an allowlist
reached through the egress proxy; the planner reaches only its model endpoint.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Enough of a Debian/Ubuntu system for Python, bash and coreutils; paths missing on a host grant nothing.
DEFAULT_READ_ONLY = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc/ssl/certs", "/etc/ca-certificates")
HOST_RE = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class PolicyError(ValueError):
    """A sandbox policy is malformed, or asks for something the backend cannot enforce; the message says which."""


def _absolute(value: str) -> str:
    path = PurePosixPath(value)
    if not path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{value!r} must be an absolute path without '..'")
    if str(path) == "/":
        raise ValueError("'/' would expose the whole host; list the directories the worker needs")
    return str(path)


AbsolutePath = Annotated[str, AfterValidator(_absolute)]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Filesystem(Model):
    """Read-only host paths, a private /tmp, and (executor only) the workspace read-write; nothing else."""

    read_only: tuple[AbsolutePath, ...] = DEFAULT_READ_ONLY
    tmp_size_mb: int = Field(default=256, ge=1, le=65536)


class EgressRule(Model):
    """A host (exact name, `*.suffix`, or IP literal) and the ports the executor may reach on it."""

    host: str
    ports: tuple[int, ...] = (443,)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        value = value.strip().lower().rstrip(".")
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            pass
        if not HOST_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a host name, '*.domain' pattern or IP address")
        return value

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(not 1 <= port <= 65535 for port in value):
            raise ValueError("ports must be a non-empty list of numbers from 1 to 65535")
        return value

    def matches(self, host: str, port: int) -> bool:
        host = host.lower().rstrip(".")
        if port not in self.ports:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host


class Network(Model):
    """Executor egress: `none`, or `allowlist` through the egress proxy (HTTP CONNECT and plain HTTP).

    The proxy resolves every name itself and refuses loopback, private, link-local, metadata and other
    non-public addresses unless they fall in `allow_addresses`.
    """

    egress: Literal["none", "allowlist"] = "none"
    allow: tuple[EgressRule, ...] = ()
    allow_addresses: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> "Network":
        if self.egress == "none" and (self.allow or self.allow_addresses):
            raise ValueError("egress is 'none' but hosts or addresses are allowed; set egress: allowlist")
        if self.egress == "allowlist" and not self.allow:
            raise ValueError("egress is 'allowlist' but no host is allowed; list hosts under allow, or use none")
        return self


class Process(Model):
    """Limits for every process in the sandbox, the worker included (each is a per-process rlimit,
    except max_processes, which counts the sandbox's processes and threads together).
    """

    max_processes: int = Field(default=512, ge=16, le=65536)
    max_memory_mb: int = Field(default=4096, ge=256)
    max_cpu_seconds: int | None = Field(default=None, ge=1)
    max_open_files: int = Field(default=1024, ge=64, le=1_048_576)


class SecretInjection(Model):
    """One named secret, as an environment variable or a file under /run/secrets, for the executor only.

    scope `workspace`: present for the executor's whole life (every tool sees it).
    scope `call`: a file present only while a call of one of `tools` runs.
    """

    name: str = Field(pattern=SECRET_NAME_RE.pattern)
    env: str | None = Field(default=None, pattern=ENV_NAME_RE.pattern)
    file: bool = False
    scope: Literal["workspace", "call"] = "workspace"
    tools: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_form(self) -> "SecretInjection":
        if bool(self.env) == self.file:
            raise ValueError(f"secret {self.name!r}: give exactly one of env: NAME or file: true")
        if self.scope == "call" and not self.tools:
            raise ValueError(f"secret {self.name!r} has scope call: list the tools whose calls receive it")
        if self.scope == "workspace" and self.tools:
            raise ValueError(f"secret {self.name!r}: tools only apply to scope call")
        if self.scope == "call" and self.env:
            # Hermes's terminal re-exports each command's environment into the next command,
            # so a variable set for one call would outlive it: only a file can be taken away again.
            raise ValueError(f"secret {self.name!r}: a call-scoped secret must be a file (file: true); an "
                             "environment variable would persist into later terminal commands")
        return self

    @property
    def path(self) -> str:
        return f"/run/secrets/{self.name}"


class Secrets(Model):
    """Where named secrets come from (a directory, one file per secret) and how each is injected."""

    store: Path | None = None
    inject: tuple[SecretInjection, ...] = ()

    @model_validator(mode="after")
    def _store_given(self) -> "Secrets":
        if self.inject and self.store is None:
            raise ValueError("secrets are injected but no store is given: set secrets.store to a directory")
        names = [s.name for s in self.inject]
        if len(names) != len(set(names)):
            raise ValueError("a secret is injected twice; list each name once")
        return self


class Planner(Model):
    """Model routing: the endpoint this tenant's planner uses, and the only place it may reach.

    Unset, the broker's CADUCEUS_MODEL_BASE_URL.
    """

    model_base_url: str | None = Field(default=None, pattern=r"^https?://[^/\s]+(/\S*)?$")


class SandboxPolicy(Model):
    version: Literal[1] = 1
    name: str = "default"
    filesystem: Filesystem = Filesystem()
    network: Network = Network()
    process: Process = Process()
    secrets: Secrets = Secrets()
    planner: Planner = Planner()


def load_policy(path: Path) -> SandboxPolicy:
    """Read one policy file; raises PolicyError naming the file and every problem in it."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise PolicyError(f"cannot read sandbox policy {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"sandbox policy {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"sandbox policy {path} must be a mapping (version, filesystem, network, process, secrets)")
    try:
        policy = SandboxPolicy.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in error.get('loc', ())) or 'policy'}: {error.get('msg')}"
                    for error in exc.errors()]
        if len(problems) == 1:
            raise PolicyError(f"sandbox policy {path}: {problems[0]}") from None
        raise PolicyError(f"sandbox policy {path} has {len(problems)} problems:\n" +
                          "\n".join(f"  {problem}" for problem in problems)) from None
    store = policy.secrets.store
    if store is not None and not store.is_absolute():
        # A relative store is relative to the policy file, so a policy directory can be moved whole.
        policy = policy.model_copy(update={"secrets": policy.secrets.model_copy(
            update={"store": (path.parent / store).resolve()})})
    return policy


class PolicyFiles:
    """Which policy applies to a tenant/workspace: the most specific file that exists.

    `<dir>/<tenant>/<workspace>.yaml`, then `<dir>/<tenant>.yaml`, then the default file; with
    none of them, the built-in defaults (no network, no secrets, the default limits).
    """

    def __init__(self, default: Path | None, per_tenant_dir: Path | None) -> None:
        self.default = default
        self.per_tenant_dir = per_tenant_dir

    def path_for(self, tenant: str, workspace: str) -> Path | None:
        candidates = []
        if self.per_tenant_dir is not None:
            candidates += [self.per_tenant_dir / tenant / f"{workspace}.yaml", self.per_tenant_dir / f"{tenant}.yaml"]
        if self.default is not None:
            candidates.append(self.default)
        return next((p for p in candidates if p.is_file()), None)

    def policy_for(self, tenant: str, workspace: str) -> tuple[SandboxPolicy, Path | None]:
        path = self.path_for(tenant, workspace)
        return (load_policy(path) if path is not None else SandboxPolicy()), path
