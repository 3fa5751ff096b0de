#!/usr/bin/env python3
"""Caduceus developer commands, for a machine with nothing but Python 3.11+ and pip.

    python3 dev.py demo     the embedded stack and one governed chat turn (`caduceus demo`)
    python3 dev.py up       keep the embedded stack running (`caduceus up`)
    python3 dev.py test     the whole test suite; extra args go to pytest (`test -k digest`)
    python3 dev.py bench    every bench/*.py
    python3 dev.py lint     ruff over the repository
    python3 dev.py shell    how to use the virtualenv directly

Each command first makes sure `.venv` exists and holds every workspace package
(editable), reinstalling only when a pyproject.toml changed. pip runs with the
machine's own configuration (pip.conf, PIP_* variables).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

SUPPORTED = ((3, 11), (3, 14))  # inclusive lower bound, exclusive upper bound, as in pyproject.toml
ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".caduceus-install-stamp"
PIP_LOG = VENV / "pip-install.log"
PYTEST_NO_TESTS = 5
# pytest options whose next argument is a value, not a path.
PYTEST_VALUE_OPTIONS = {"-k", "-m", "-p", "-o", "-W", "--timeout", "--maxfail", "--durations", "--tb"}


def say(message: str) -> None:
    print(f"dev: {message}", file=sys.stderr, flush=True)


def fail(message: str, code: int = 1) -> None:
    say(message)
    raise SystemExit(code)


def version_supported(version: tuple[int, int]) -> bool:
    low, high = SUPPORTED
    return low <= version < high


def check_own_python() -> None:
    """Refuse to build the venv with an interpreter Caduceus does not support, naming one that would do."""
    current = sys.version_info[:2]
    if version_supported(current):
        return
    candidates = [f"python3.{minor}" for minor in range(SUPPORTED[1][1] - 1, SUPPORTED[0][1] - 1, -1)]
    found = next((name for name in candidates if shutil.which(name)), None)
    hint = f"try: {found} dev.py {' '.join(sys.argv[1:])}" if found else "install Python 3.11, 3.12 or 3.13"
    (low_major, low_minor), (high_major, high_minor) = SUPPORTED
    fail(f"Caduceus needs Python >= {low_major}.{low_minor} and < {high_major}.{high_minor}; "
         f"this is {sys.version.split()[0]} ({sys.executable}). {hint}")


def member_pyprojects() -> list[Path]:
    """The pyproject.toml of every workspace member: libs/* and services/*."""
    return sorted(ROOT.glob("libs/*/pyproject.toml")) + sorted(ROOT.glob("services/*/pyproject.toml"))


def workspace_packages() -> list[str]:
    """Every workspace member plus the root project with its test extras, as pip install targets."""
    return [str(p.parent.relative_to(ROOT)) for p in member_pyprojects()] + [".[test]"]


def requirements_hash() -> str:
    """Changes whenever any pyproject.toml (root or member) changes, or the set of members does."""
    digest = hashlib.sha256()
    for path in [ROOT / "pyproject.toml", *member_pyprojects()]:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def venv_runs() -> bool:
    if not PYTHON.exists():
        return False
    probe = subprocess.run([str(PYTHON), "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return False
    major, minor = (int(part) for part in probe.stdout.split())
    return version_supported((major, minor))


def create_venv() -> None:
    check_own_python()
    if VENV.exists():
        say(f"recreating .venv (its interpreter is missing, broken or unsupported): {VENV}")
        shutil.rmtree(VENV)
    say(f"creating .venv with Python {sys.version.split()[0]}")
    result = subprocess.run([sys.executable, "-m", "venv", str(VENV)])
    if result.returncode != 0 or not PYTHON.exists():
        shutil.rmtree(VENV, ignore_errors=True)
        fail("`python3 -m venv` failed. On Debian/Ubuntu install the venv module "
             f"(apt install python3.{sys.version_info[1]}-venv) and run this again.")


def install_workspace() -> None:
    """One pip command for every package, so pip resolves the workspace's own names locally."""
    wanted = requirements_hash()
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    packages = workspace_packages()
    say(f"installing {len(packages)} packages (first run takes a few minutes)")
    argv = [str(PYTHON), "-m", "pip", "install", "--quiet", "--progress-bar", "off", "--log", str(PIP_LOG)]
    for package in packages:
        argv += ["-e", package]
    result = subprocess.run(argv, cwd=ROOT)
    if result.returncode != 0:
        fail(f"pip install failed (exit {result.returncode}); the full log is {PIP_LOG}. "
             "Fix the error above and run the same command again.", result.returncode)
    PIP_LOG.unlink(missing_ok=True)  # verbose and large; kept only when pip fails
    STAMP.write_text(wanted + "\n")
    say("workspace installed")


def ensure_venv() -> None:
    if not venv_runs():
        create_venv()
    install_workspace()


# Programs from the system's packages that commands need: (program, Debian package, why).
SYSTEM_TOOLS = {
    "demo": [("bwrap", "bubblewrap", "every agent worker runs in a bubblewrap sandbox")],
    "up": [("bwrap", "bubblewrap", "every agent worker runs in a bubblewrap sandbox")],
    "test": [("bwrap", "bubblewrap", "every agent worker runs in a bubblewrap sandbox"),
             ("chromium", "chromium", "the approvals UI is tested in Debian's headless chromium")],
}


def ensure_system_tools(command: str) -> None:
    """Install what `command` needs from the system's packages (as root with apt-get), or say how to."""
    missing = [(program, package, why) for program, package, why in SYSTEM_TOOLS.get(command, [])
               if not shutil.which(program)]
    if not missing:
        return
    packages = sorted({package for _, package, _ in missing})
    reasons = "; ".join(f"{program}: {why}" for program, _, why in missing)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        fail(f"missing {', '.join(packages)} ({reasons}); install it (Debian/Ubuntu: "
             f"sudo apt-get install {' '.join(packages)}) and run this again")
    say(f"installing {', '.join(packages)} with apt-get ({reasons})")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    quiet = {"stdout": subprocess.DEVNULL, "env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}}
    if subprocess.run(install, **quiet).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], **quiet)
        if subprocess.run(install, **quiet).returncode != 0:
            fail(f"apt-get could not install {', '.join(packages)}; install it yourself and run this again")


def run(argv: list[str], cwd: Path | None = None) -> int:
    """Run a child in the foreground; Ctrl-C reaches it directly and its exit code is ours."""
    child = subprocess.Popen(argv, cwd=cwd)
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal sends it to the child too
    previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def absolute_paths(args: list[str]) -> list[str]:
    """pytest runs from the repository root; paths the user typed are relative to where they are."""
    here = Path.cwd()
    out: list[str] = []
    value_next = False
    for arg in args:
        if not value_next and not arg.startswith("-") and (here / arg.split("::")[0]).exists():
            arg = str(here / arg)
        value_next = arg in PYTEST_VALUE_OPTIONS
        out.append(arg)
    return out


def cmd_test(args: list[str]) -> int:
    code = run([str(PYTHON), "-m", "pytest", "-q", *absolute_paths(args)], cwd=ROOT)
    if code == PYTEST_NO_TESTS:
        say("no tests were collected: check the paths and the -k/-m expression")
    return code


def cmd_caduceus(command: str, args: list[str]) -> int:
    return run([str(PYTHON), "-m", "caduceus.cli", command, *args])


def cmd_bench(args: list[str]) -> int:
    scripts = sorted((ROOT / "bench").glob("*.py"))
    if not scripts:
        say("no benchmarks: bench/ has no *.py files")
        return 0
    failed = []
    for script in scripts:
        say(f"bench {script.name}")
        if run([str(PYTHON), str(script), *args], cwd=ROOT) != 0:
            failed.append(script.name)
    if failed:
        say(f"failed: {', '.join(failed)}")
        return 1
    return 0


def cmd_lint(args: list[str]) -> int:
    if subprocess.run([str(PYTHON), "-m", "ruff", "--version"], capture_output=True).returncode != 0:
        say("installing ruff into .venv")
        if subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "ruff"]).returncode != 0:
            fail("could not install ruff with pip")
    return run([str(PYTHON), "-m", "ruff", "check", *(args or ["."])], cwd=ROOT)


def cmd_shell(args: list[str]) -> int:
    activate = BIN / ("activate.bat" if os.name == "nt" else "activate")
    print(f"The virtualenv is ready. Activate it with:\n\n    source {activate}\n\n"
          f"then use `caduceus --help`, `pytest`, `python` directly (or run {PYTHON} without activating).")
    return 0


COMMANDS = {
    "demo": lambda args: cmd_caduceus("demo", args),
    "up": lambda args: cmd_caduceus("up", args),
    "test": cmd_test,
    "bench": cmd_bench,
    "lint": cmd_lint,
    "shell": cmd_shell,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(__doc__)
        return 0 if argv else 2
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        fail(f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)}", 2)
    ensure_venv()
    ensure_system_tools(command)
    return COMMANDS[command](args)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        say("interrupted")
        sys.exit(130)
