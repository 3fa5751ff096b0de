"""Stdio MCP servers run under bubblewrap, with a profile made from the tenant's sandbox policy (libs/sandbox):

- read-only: the policy's `filesystem.read_only` paths, this Python runtime (so an SDK server can run), and the
  directories of absolute paths in the server's command; nothing else of the host (no state dir, no secrets,
  no other tenant's workspace);
- a private /tmp (the policy's size) as its home; no network at all (`--unshare-all`): a stdio server talks to
  the gateway over its pipes only;
- the policy's process limits as rlimits; the sandbox dies with the gateway (`--die-with-parent`).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from caduceus_mcp.registry import Server
from caduceus_sandbox import PolicyFiles, SandboxPolicy, SandboxUnavailable


class StdioSandbox:
    """A launcher (see upstream.Launcher): a server's argv and environment, wrapped in bubblewrap."""

    def __init__(self, policies: PolicyFiles, bwrap: str | None = None) -> None:
        self.policies = policies
        self.bwrap = bwrap or shutil.which("bwrap")

    def __call__(self, server: Server, argv: tuple[str, ...], env: dict[str, str]) -> tuple[tuple[str, ...], dict[str, str]]:
        if not self.bwrap:
            raise SandboxUnavailable("bubblewrap (bwrap) is not installed: stdio MCP servers cannot run sandboxed "
                                     "(install the bubblewrap package)")
        workspace = server.workspaces[0] if server.workspaces else "default"
        policy, _ = self.policies.policy_for(server.tenant, workspace)
        return tuple(self.command(policy, argv)), {**env, "HOME": "/tmp"}

    def command(self, policy: SandboxPolicy, argv: tuple[str, ...]) -> list[str]:
        read_only = [*policy.filesystem.read_only, os.path.realpath(sys.base_prefix), sys.prefix]
        read_only += [str(Path(a).parent) for a in argv if a.startswith("/") and Path(a).exists()]
        # The environment (credentials included) reaches the server through bwrap's own, never its argv.
        args = [self.bwrap, "--die-with-parent", "--new-session", "--unshare-all", "--hostname", "caduceus-mcp"]
        tmp_bytes = policy.filesystem.tmp_size_mb * 1024 * 1024
        # /tmp first: a read-only path under /tmp is then mounted on top of it, not hidden by it.
        args += ["--proc", "/proc", "--dev", "/dev", "--size", str(tmp_bytes), "--tmpfs", "/tmp"]
        for path in dict.fromkeys(read_only):
            if os.path.lexists(path):
                args += ["--ro-bind", path, path]
        args += ["--chdir", "/tmp"]
        limits = policy.process
        # prlimit sets the policy's limits for the server and whatever it starts.
        prlimit = shutil.which("prlimit")
        wrapped = list(argv)
        if prlimit:
            wrapped = [prlimit, f"--nofile={limits.max_open_files}", f"--as={limits.max_memory_mb * 1024 * 1024}",
                       f"--nproc={limits.max_processes}", "--", *argv]
        return [*args, "--", *wrapped]
