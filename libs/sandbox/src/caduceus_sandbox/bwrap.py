"""The bubblewrap backend: runs a worker with exactly its policy's view of the machine.

Every namespace is new (mount, PID, network, IPC, UTS, cgroup, user). The filesystem is a
fresh tmpfs root holding the policy's read-only paths, the Python runtime, the worker's
home, the workspace (executors only), a private /tmp, generated /etc files and the channel
sockets. The network namespace has only loopback, where the launcher relays the channels.

When the broker runs as root, bubblewrap sets up the mounts as root and the launcher drops
to an unprivileged user in a user namespace of its own: root is exempt from the process
limit, so a sandbox never runs as root.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from caduceus_sandbox.channels import INSIDE_SOCKETS
from caduceus_sandbox.plan import SandboxPlan
from caduceus_sandbox.policy import PolicyError, SandboxPolicy

LAUNCH_SPEC = "/run/caduceus/launch.json"
INSTALL_HINT = ("bubblewrap (bwrap) is not installed, and Caduceus never runs a worker unsandboxed; "
                "install it (Debian/Ubuntu: apt-get install bubblewrap) and start again")


class SandboxUnavailable(RuntimeError):
    """This machine cannot run sandboxes (no bubblewrap, no user namespaces); the message says what to do."""


@dataclass(frozen=True)
class Findings:
    """What `check` found: warnings about paths that grant nothing here."""

    warnings: tuple[str, ...] = ()


def namespace_args(privileged: bool) -> list[str]:
    """The namespaces every sandbox gets, and what may happen inside them.

    Started by root, bubblewrap keeps the host's user namespace (the launcher inside switches to the sandbox
    user, then drops the two capabilities it kept for that). Started by anyone else, it needs a user
    namespace of its own, and the sandbox may not make another (`--disable-userns` wants `--unshare-user`
    spelled out: `--unshare-all` only tries it).
    """
    if privileged:
        return ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
                "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    return ["--unshare-all", "--unshare-user", "--disable-userns"]


class BwrapBackend:
    """Checks policies against what bubblewrap can enforce here, and builds the command for a plan."""

    name = "bwrap"

    def __init__(self, sandbox_user: tuple[int, int] = (65534, 65534), bwrap: str | None = None, *,
                 privileged: bool | None = None) -> None:
        self.privileged = os.geteuid() == 0 if privileged is None else privileged
        self.sandbox_user = sandbox_user if self.privileged else (os.getuid(), os.getgid())
        self.bwrap = bwrap or shutil.which("bwrap")

    def available(self) -> None:
        """Raise SandboxUnavailable when sandboxes cannot start on this machine."""
        if not self.bwrap:
            raise SandboxUnavailable(INSTALL_HINT)
        limit = Path("/proc/sys/user/max_user_namespaces")
        if limit.exists() and limit.read_text().strip() == "0":
            raise SandboxUnavailable("user namespaces are disabled (user.max_user_namespaces = 0); "
                                     "the sandbox needs them: set it to a positive number")

    def check(self, policy: SandboxPolicy) -> Findings:
        """Refuse (PolicyError) what bubblewrap cannot enforce; return warnings about the rest."""
        if self.sandbox_user[0] == 0:
            raise PolicyError("the sandbox would run as root, which the kernel exempts from the process limit; "
                              "set CADUCEUS_SANDBOX_UID to an unprivileged user")
        store = policy.secrets.store
        if policy.secrets.inject and store is not None and not store.is_dir():
            raise PolicyError(f"the secret store {store} is not a directory")
        for secret in policy.secrets.inject:
            if store is not None and not (store / secret.name).is_file():
                raise PolicyError(f"secret {secret.name!r} is not in the store {store} (one file per secret)")
        warnings = tuple(f"read-only path {p} does not exist here; it grants nothing"
                         for p in policy.filesystem.read_only if not os.path.lexists(p))
        return Findings(warnings)

    def command(self, plan: SandboxPlan, info_fd: int | None = None) -> list[str]:
        """The bwrap argv for `plan`; writes the generated files it mounts into plan.run_dir."""
        self.available()
        self.check(plan.policy)
        generated = self._generate(plan)
        mounts = _Mounts()
        args = [self.bwrap, "--die-with-parent", "--new-session", "--as-pid-1", "--hostname", plan.hostname]
        args += namespace_args(self.privileged)
        if info_fd is not None:
            args += ["--info-fd", str(info_fd)]
        tmp_bytes = plan.policy.filesystem.tmp_size_mb * 1024 * 1024
        args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/tmp"]
        for path in plan.policy.filesystem.read_only:
            mounts.read_only(Path(path))
        for path in plan.runtime:
            mounts.read_only(path)
        mounts.directory(Path(INSIDE_SOCKETS).parent)
        mounts.bind(plan.run_dir / "channels", Path(INSIDE_SOCKETS), writable=False)
        for inside, host in generated.items():
            mounts.bind(host, Path(inside), writable=False)
        mounts.bind(plan.home, plan.home, writable=True)
        for name in plan.home_read_only:
            if (plan.home / name).exists():
                mounts.bind(plan.home / name, plan.home / name, writable=False)
        if plan.workspace is not None:
            mounts.bind(plan.workspace, plan.workspace, writable=True)
        if plan.secret_files:
            mounts.directory(Path("/run/secrets").parent)
            mounts.args += ["--perms", "1777", "--tmpfs", "/run/secrets"]
        args += mounts.args
        # The root bubblewrap builds is a tmpfs, owned by the sandbox's user when the broker is not root: once
        # everything is mounted, only the writable mounts above (workspace, home, /tmp) stay writable.
        args += ["--remount-ro", "/"]
        args += ["--", *_python(plan), "-m", "caduceus_sandbox.inside", LAUNCH_SPEC, "--",
                 *plan.command]
        return args

    def _generate(self, plan: SandboxPlan) -> dict[str, Path]:
        """Write /etc files and the launch spec into the run dir; map of sandbox path -> host file."""
        etc = plan.run_dir / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        uid, gid = self.sandbox_user
        aliases = "".join(f"{c.inside_host} {c.alias}\n" for c in plan.channels if c.alias)
        files = {
            "/etc/passwd": f"root:x:0:0::/:/usr/sbin/nologin\nsandbox:x:{uid}:{gid}::{plan.home}:/bin/sh\n",
            "/etc/group": f"root:x:0:\nsandbox:x:{gid}:\n",
            "/etc/hosts": f"127.0.0.1 localhost {plan.hostname}\n::1 localhost\n{aliases}",
            "/etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
            "/etc/resolv.conf": "",
        }
        generated = {}
        for inside, text in files.items():
            host = etc / Path(inside).name
            host.write_text(text)
            generated[inside] = host
        spec = {
            "user": list(self.sandbox_user) if self.privileged else None,
            "limits": _limits(plan.policy),
            "channels": [c.to_json() for c in plan.channels],
            "pass_fds": list(plan.pass_fds),
            "life_fd": plan.life_fd,
            # The launcher changes directory once it is the sandbox's user: root without
            # capabilities may not enter a directory private to that user.
            "cwd": str(plan.cwd),
        }
        launch = plan.run_dir / "launch.json"
        launch.write_text(json.dumps(spec))
        generated[LAUNCH_SPEC] = launch
        return generated


def _python(plan: SandboxPlan) -> list[str]:
    return [plan.command[0]] if plan.command and "python" in Path(plan.command[0]).name else ["python3"]


def _limits(policy: SandboxPolicy) -> dict[str, int]:
    process = policy.process
    limits = {"max_processes": process.max_processes, "max_memory_bytes": process.max_memory_mb * 1024 * 1024,
              "max_open_files": process.max_open_files}
    if process.max_cpu_seconds is not None:
        limits["max_cpu_seconds"] = process.max_cpu_seconds
    return limits


class _Mounts:
    """bwrap mount arguments in order, creating each destination's parents with mode 0755 first
    (bubblewrap running as root would create them 0700, closed to the sandbox's user).
    """

    def __init__(self) -> None:
        self.args: list[str] = []
        self._made: set[Path] = {Path("/"), Path("/tmp"), Path("/proc"), Path("/dev")}
        self._read_only: list[Path] = []

    def directory(self, path: Path) -> None:
        for parent in reversed((path, *path.parents)):
            if parent not in self._made:
                self.args += ["--perms", "0755", "--dir", str(parent)]
                self._made.add(parent)

    def read_only(self, path: Path) -> None:
        if not os.path.lexists(path) or any(path.is_relative_to(p) for p in self._read_only):
            return
        if path.is_symlink():
            self.directory(path.parent)
            self.args += ["--symlink", os.readlink(path), str(path)]
        else:
            self.bind(path, path, writable=False)
            self._read_only.append(path)
        self._made.add(path)

    def bind(self, source: Path, dest: Path, *, writable: bool) -> None:
        self.directory(dest.parent)
        self.args += ["--bind" if writable else "--ro-bind", str(source), str(dest)]
        self._made.add(dest)
