"""Run a benchmark on this tree and on an earlier commit, alternately, in the same run: no regression hides in
the noise of another day or machine.

    .venv/bin/python bench/tools/against_commit.py --rounds 3 REV bench/policy_decisions.py -- --decisions 300 --calls 300

REV is checked out into a temporary git worktree; its benchmark script runs with REV's packages first on the
import path (PYTHONPATH: every libs/*/src, services/*/src and src of REV), using this .venv for everything else,
so REV must not need packages this tree dropped beyond what the venv still holds. Each round runs REV, then
this tree. The markdown tables each run prints are collected into bench/results/against-<script>-<date>.md,
one section per run, with the machine, the commands and the load.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def source_path(tree: Path) -> str:
    return os.pathsep.join(str(p) for p in [*sorted(tree.glob("libs/*/src")), *sorted(tree.glob("services/*/src")),
                                            tree / "src"])


def tables(output: str) -> str:
    """The markdown tables and the sentences right after them, as the benchmark printed them."""
    keep = [line for line in output.splitlines() if line.startswith(("|", "#", "Policy over", "Overhead", "- "))]
    return "\n".join(keep)


def run(tree: Path, script: str, args: list[str], with_path: bool) -> str:
    env = dict(os.environ)
    if with_path:
        env["PYTHONPATH"] = source_path(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    result = subprocess.run([sys.executable, str(tree / script), *args], cwd=tree, env=env, capture_output=True,
                            text=True, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"{script} failed in {tree} (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the earlier commit (e.g. HEAD~1)")
    parser.add_argument("script", help="the benchmark, relative to the repository root")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (REV, this tree); default 2")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="after --: arguments for the benchmark")
    options = parser.parse_args()
    args = options.args[1:] if options.args[:1] == ["--"] else options.args
    commit = subprocess.run(["git", "rev-parse", "--short", options.rev], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    here = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old), commit], cwd=ROOT, check=True)
        try:
            for round_ in range(1, options.rounds + 1):
                for label, tree, with_path in ((f"{commit} (before)", old, True), (f"{here}+ (this tree)", ROOT, False)):
                    print(f"round {round_}: {label}", file=sys.stderr, flush=True)
                    sections.append(f"## Round {round_}: {label}\n\n{tables(run(tree, options.script, args, with_path))}")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    machine = (f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), {platform.platform()}, "
               f"Python {platform.python_version()}; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
               "at the end")
    name = Path(options.script).stem.replace("_", "-")
    text = "\n".join([f"# {options.script}: {commit} against this tree, alternately in one run", "",
                      f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", f"- machine: {machine}",
                      f"- command: `bench/tools/against_commit.py --rounds {options.rounds} {options.rev} {options.script}"
                      f" -- {' '.join(args)}`", "", *sections, ""])
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"against-{name}-{datetime.now(UTC):%Y-%m-%d}.md"
    out.write_text(text)
    print(text)
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
