"""The namespaces bubblewrap is asked for, checked by running it: as root (how the tests and the embedded stack
run here) and as an unprivileged user (how the compose services run, as uid 10001).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

import caduceus_sandbox
from caduceus_sandbox import SandboxPolicy
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


# Run by the unprivileged user: a whole sandbox as the broker builds it (launcher, limits, mounts), around a probe.
WORKER = """
import json, os, subprocess, sys
from pathlib import Path
from caduceus_sandbox import BwrapBackend, SandboxPlan, SandboxPolicy, python_runtime

base = Path(sys.argv[1])
home, workspace, run = base / "home", base / "workspace", base / "run"
for directory in (home, workspace, run, run / "channels"):
    directory.mkdir()
probe = '''
import json, os, resource
seen = {"uid": os.getuid(), "pid": os.getpid(), "nproc": resource.getrlimit(resource.RLIMIT_NPROC)[0]}
open(os.path.join(os.getcwd(), "note.txt"), "w").write("inside")
for path in ("/usr/evil", "/tmp/../etc/evil", "/evil"):
    try:
        open(path, "w")
        seen[path] = "written"
    except OSError as error:
        seen[path] = error.strerror
print(json.dumps(seen))
'''
backend = BwrapBackend()
# Packages found through PYTHONPATH (see _interpreter_for) are mounted and found the same way inside.
extra = [Path(entry) for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
plan = SandboxPlan(role="executor", policy=SandboxPolicy(), command=(sys.executable, "-c", probe),
                   env={"PYTHONPATH": os.pathsep.join(map(str, extra))} if extra else {}, home=home, run_dir=run,
                   workspace=workspace, runtime=python_runtime(("caduceus_sandbox",)) + tuple(extra))
ran = subprocess.run(backend.command(plan), capture_output=True, text=True, timeout=60)
print(json.dumps({"privileged": backend.privileged, "returncode": ran.returncode, "stdout": ran.stdout,
                  "stderr": ran.stderr[-2000:]}))
"""


def _interpreter_for(user: int) -> tuple[str, str] | None:
    """(interpreter, PYTHONPATH) that `user` can run with this environment's packages, or None.

    This interpreter when the user can reach it; else (pyenv's lives under /root, closed to other users) the
    system's python3 of the same version, with this environment's packages on PYTHONPATH.
    """
    as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
    packages = os.pathsep.join([sysconfig.get_paths()["purelib"], str(Path(caduceus_sandbox.__file__).parents[1])])
    same_version = f"import sys, caduceus_sandbox; assert sys.version_info[:2] == {tuple(sys.version_info[:2])}"
    for python, path in ((sys.executable, ""), ("/usr/bin/python3", packages)):
        reachable = subprocess.run([*as_user, "test", "-x", os.path.realpath(python)], cwd="/", timeout=30)
        runs = subprocess.run([*as_user, python, "-c", same_version], capture_output=True, cwd="/", timeout=30,
                              env={"PYTHONPATH": path} if path else {})
        if reachable.returncode == 0 and runs.returncode == 0:
            return python, path
    return None


def test_an_unprivileged_broker_runs_a_worker_in_a_whole_sandbox() -> None:
    user = 65534
    if os.geteuid() != 0:
        pytest.skip("needs root to become the unprivileged user")
    interpreter = _interpreter_for(user)
    if interpreter is None:
        pytest.skip(f"no Python {sys.version_info[0]}.{sys.version_info[1]} that uid {user} can run here")
    python, path = interpreter
    base = Path(tempfile.mkdtemp(prefix="caduceus-unprivileged-"))
    try:
        os.chown(base, user, user)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base), **({"PYTHONPATH": path} if path
                                                                                     else {})}
        ran = subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", python, "-c", WORKER,
                              str(base)], capture_output=True, text=True, cwd="/", timeout=120, env=env)
        assert ran.returncode == 0, ran.stderr
        outcome = json.loads(ran.stdout.strip().splitlines()[-1])
        assert outcome["privileged"] is False
        assert outcome["returncode"] == 0, outcome["stderr"]
        seen = json.loads(outcome["stdout"].strip().splitlines()[-1])
        assert seen["uid"] == user and seen["pid"] < 10
        assert seen["nproc"] == SandboxPolicy().process.max_processes
        assert seen["/usr/evil"] == seen["/tmp/../etc/evil"] == seen["/evil"] == "Read-only file system"
        assert (base / "workspace" / "note.txt").read_text() == "inside"
    finally:
        shutil.rmtree(base, ignore_errors=True)
