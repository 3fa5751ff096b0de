"""The namespaces bubblewrap is asked for, checked by running it: as root (how the tests and the embedded stack
run here) and as an unprivileged user (how the compose services run, as uid 10001).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from caduceus_sandbox.bwrap import namespace_args

BWRAP = shutil.which("bwrap")
# What the sandbox sees: its network devices, its PID, its user, and whether it may make a user namespace.
PROBE = """
echo "uid=$(id -u)"
echo "netdevs=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ,)"
echo "pid=$$"
if unshare --user true 2>/dev/null; then echo "userns=allowed"; else echo "userns=refused"; fi
"""

pytestmark = pytest.mark.skipif(BWRAP is None, reason="bubblewrap is not installed (python3 dev.py test installs it)")


def sandboxed(privileged: bool, *, as_user: int | None = None) -> dict[str, str]:
    argv = [BWRAP, "--die-with-parent", *namespace_args(privileged), "--ro-bind", "/", "/", "--proc", "/proc",
            "--dev", "/dev", "--", "/bin/sh", "-c", PROBE]
    if as_user is not None:
        argv = ["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups", *argv]
    ran = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/")
    assert ran.returncode == 0, f"bubblewrap refused the sandbox: {ran.stderr.strip()}"
    return dict(line.split("=", 1) for line in ran.stdout.splitlines() if "=" in line)


def test_an_unprivileged_broker_gets_its_own_user_network_and_pid_namespaces() -> None:
    seen = sandboxed(False, as_user=65534 if os.geteuid() == 0 else None)
    assert seen["netdevs"] == "lo,"  # a network namespace of its own: nothing of the host's
    assert seen["pid"] != str(os.getpid()) and int(seen["pid"]) < 10  # a PID namespace of its own
    assert seen["userns"] == "refused"  # and no way to make a user namespace in which it would be root


@pytest.mark.skipif(os.geteuid() != 0, reason="the privileged flags are for a broker running as root")
def test_a_root_broker_gets_network_and_pid_namespaces() -> None:
    seen = sandboxed(True)
    assert seen["netdevs"] == "lo,"
    assert int(seen["pid"]) < 10
    # Still root here: the launcher inside switches to the sandbox user and closes user namespaces behind it
    # (inside.become_sandbox_user; the executor attack tests run through it).
    assert seen["uid"] == "0"
