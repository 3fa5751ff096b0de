"""The launcher: the first process inside a sandbox (PID 1 of its PID namespace).

`python -m caduceus_sandbox.inside SPEC -- COMMAND...`, started by bubblewrap. It finishes
what bubblewrap cannot do: when bubblewrap ran as root it becomes the sandbox's unprivileged
user and enters a fresh user namespace of its own (so the process limit counts this sandbox
alone and the sandbox cannot create further user namespaces), sets no-new-privileges and the
resource limits, listens on the loopback addresses of the sandbox's channels and relays
each to its unix socket, then runs COMMAND and exits with its exit code. As PID 1 it reaps
orphans and cannot be killed from inside the sandbox; SIGTERM and SIGINT go to COMMAND.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

from caduceus_sandbox.splice import splice

CLONE_NEWUSER = 0x10000000
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
LIMITS = {"max_processes": resource.RLIMIT_NPROC, "max_memory_bytes": resource.RLIMIT_AS,
          "max_cpu_seconds": resource.RLIMIT_CPU, "max_open_files": resource.RLIMIT_NOFILE}
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def become_sandbox_user(uid: int, gid: int) -> None:
    """Drop from root to uid/gid, then enter a new user namespace mapping only that user."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _check(_libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")  # to write our own id maps
    _check(_libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    # Nothing in the sandbox needs a user namespace; one would let it rearrange its own mounts.
    Path("/proc/sys/user/max_user_namespaces").write_text("0")
    # Our capabilities in the new namespace must not be borrowable by a same-user process (ptrace).
    _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    # Changing credentials cleared bubblewrap's --die-with-parent (and bubblewrap, without capabilities,
    # could no longer signal this user anyway): the launcher watches bubblewrap's life pipe instead.


def restrict(limits: dict[str, int]) -> None:
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    for name, value in limits.items():
        resource.setrlimit(LIMITS[name], (value, value))


class Launcher:
    def __init__(self, spec: dict, command: list[str]) -> None:
        self.spec = spec
        self.command = command
        self.child: subprocess.Popen | None = None
        self.exit_code: asyncio.Future[int] | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.exit_code = loop.create_future()
        servers = [await asyncio.start_server(self._relay_to(c["socket"]), c["inside_host"], c["inside_port"])
                   for c in self.spec.get("channels", [])]
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        life = self.spec.get("life_fd")
        if life is not None:
            loop.add_reader(life, self._bubblewrap_gone)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._forward, sig)
        self.child = subprocess.Popen(self.command, pass_fds=tuple(self.spec.get("pass_fds", ())))
        self._reap()  # it may already have exited
        code = await self.exit_code
        for server in servers:
            server.close()
        return code

    def _relay_to(self, socket_path: str):
        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                upstream = await asyncio.open_unix_connection(socket_path)
            except OSError:
                writer.close()
                return
            await splice((reader, writer), upstream)

        return relay

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.child is not None and pid == self.child.pid and not self.exit_code.done():
                code = os.waitstatus_to_exitcode(status)
                self.exit_code.set_result(code if code >= 0 else 128 - code)

    def _bubblewrap_gone(self) -> None:
        """bubblewrap (our parent outside) died: its end of the life pipe closed. Take the sandbox down."""
        if self.child is not None and not self.exit_code.done():
            os.kill(self.child.pid, signal.SIGKILL)
        os._exit(137)  # PID 1 exits: the kernel kills whatever else is left in the namespace

    def _forward(self, sig: int) -> None:
        # Not Popen.poll(): that would reap the child behind _reap's back and lose its exit status.
        if self.child is not None and not self.exit_code.done():
            os.kill(self.child.pid, sig)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m caduceus_sandbox.inside SPEC -- COMMAND...", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    if spec.get("life_fd") is not None:
        # Our stdin is the life pipe's write end, which only bubblewrap may hold (see SandboxPlan.life_pipe).
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
    try:
        if spec.get("user") is not None:
            become_sandbox_user(*spec["user"])
        restrict(spec.get("limits", {}))
        if spec.get("cwd"):
            os.chdir(spec["cwd"])
    except OSError as exc:
        print(f"caduceus sandbox: cannot set up the sandbox: {exc}", file=sys.stderr)
        return 125
    # Not asyncio.run: the caller exits at once, without cancelling relays the worker left open.
    return asyncio.new_event_loop().run_until_complete(Launcher(spec, argv[2:]).run())


if __name__ == "__main__":
    sys.stdout.flush()
    os._exit(main(sys.argv[1:]))
