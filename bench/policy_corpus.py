"""Benchmark: the default pack against two corpora, the false-positive cost and the hostile catch rate.

bench/corpus/benign_commands.txt holds ordinary developer commands (build, test, git, package
managers, file inspection): each should be allowed without asking. bench/corpus/hostile_commands.txt
and hostile_calls.jsonl hold hostile calls by class (destruction and its spellings, constructs the
reader cannot follow, programs with exec-like options, inline code, files written then run, secret
files through spellings, data sent out, private network in every spelling): each should be denied
or held for approval. Every call is decided by the shipped pack through `request_facts` and the
Cedar engine, as `caduceus policy eval` decides it (paths read lexically, names not resolved, so
the figures do not depend on this machine). services/policy/tests/test_corpus.py pins thresholds.

    .venv/bin/python bench/policy_corpus.py      (also run by `python3 dev.py bench`)

Writes bench/results/policy-corpus-<date>.md and prints the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path, PurePosixPath

from caduceus_policy import request_facts
from caduceus_policy.engine import CedarEngine, load_engine

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"
RESULTS = HERE / "results"
ROOT = PurePosixPath("/srv/caduceus/workspaces/acme/default")
DEFAULT_PACK = Path(str(resources.files("caduceus_embedded") / "defaults" / "policy.yaml"))


@dataclass(frozen=True)
class Call:
    tool: str
    args: dict
    roles: tuple[str, ...] = ("member",)

    @property
    def shown(self) -> str:
        return self.args["command"] if self.tool == "terminal" and len(self.args) == 1 else \
            f"{self.tool} {json.dumps(self.args, ensure_ascii=False)}"


@dataclass
class Outcome:
    calls: int = 0
    as_expected: int = 0
    misses: list[tuple[str, str, str]] = field(default_factory=list)  # (call, verdict, reason)
    extraction_s: list[float] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.as_expected / self.calls if self.calls else 0.0


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and
            not line.lstrip().startswith("#")]


def benign_calls(held_out: bool = False) -> list[Call]:
    """Ordinary commands: the ones the reader was tuned on, or (held_out) those written after and never tuned on."""
    name = "benign_holdout.txt" if held_out else "benign_commands.txt"
    return [Call("terminal", {"command": line}) for line in _lines(CORPUS / name)]


def hostile_calls(held_out: bool = False) -> list[Call]:
    """Hostile calls: terminal commands and other tools' calls (tuned on), or (held_out) commands never tuned on."""
    if held_out:
        return [Call("terminal", {"command": line}) for line in _lines(CORPUS / "hostile_holdout.txt")]
    calls = [Call("terminal", {"command": line}) for line in _lines(CORPUS / "hostile_commands.txt")]
    for line in _lines(CORPUS / "hostile_calls.jsonl"):
        item = json.loads(line)
        calls.append(Call(item["tool"], item["args"], tuple(item.get("roles", ("member",)))))
    return calls


def evaluate(calls: list[Call], allowed_is_expected: bool, engine: CedarEngine | None = None) -> Outcome:
    """Decide every call with the default pack; count those decided as expected and keep the misses."""
    engine = engine or load_engine(DEFAULT_PACK)
    outcome = Outcome()
    for call in calls:
        start = time.perf_counter()
        request = request_facts("acme", call.roles, call.tool, call.args, ROOT, user="alice")
        outcome.extraction_s.append(time.perf_counter() - start)
        verdict = engine.decide(request)
        outcome.calls += 1
        if (verdict.verdict == "allow") == allowed_is_expected:
            outcome.as_expected += 1
        else:
            outcome.misses.append((call.shown, verdict.verdict, verdict.reason))
    return outcome


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return f"{os.cpu_count()} cores ({cpu}), {platform.platform()}, Python {platform.python_version()}; " \
           f"load average {load} when the run ended"


def _micros(samples: list[float]) -> str:
    ordered = sorted(samples)
    return f"p50 {statistics.median(ordered) * 1e6:.0f} µs, p99 {ordered[int(0.99 * (len(ordered) - 1))] * 1e6:.0f} µs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_known_args()  # `dev.py bench` passes the same arguments to every benchmark
    engine = load_engine(DEFAULT_PACK)
    benign = evaluate(benign_calls(), True, engine)
    hostile = evaluate(hostile_calls(), False, engine)
    benign_new = evaluate(benign_calls(held_out=True), True, engine)
    hostile_new = evaluate(hostile_calls(held_out=True), False, engine)
    lines = [
        "# Policy corpora: ordinary commands allowed, hostile calls blocked (default pack)",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        "- command: `.venv/bin/python bench/policy_corpus.py` (also in `python3 dev.py bench`)",
        f"- pack: the shipped default pack, version {engine.version}; tenant acme, user alice (member; admin for "
        "MCP calls), workspace /srv/caduceus/workspaces/acme/default, paths read lexically, names not resolved",
        "",
        "| corpus | calls | as expected | share | fact extraction per call |",
        "|---|---|---|---|---|",
        f"| benign (bench/corpus/benign_commands.txt): allowed without asking | {benign.calls} | "
        f"{benign.as_expected} | {benign.share:.1%} | {_micros(benign.extraction_s)} |",
        f"| hostile (bench/corpus/hostile_commands.txt, hostile_calls.jsonl): denied or held | {hostile.calls} | "
        f"{hostile.as_expected} | {hostile.share:.1%} | {_micros(hostile.extraction_s)} |",
        f"| benign, held out (benign_holdout.txt): allowed without asking | {benign_new.calls} | "
        f"{benign_new.as_expected} | {benign_new.share:.1%} | {_micros(benign_new.extraction_s)} |",
        f"| hostile, held out (hostile_holdout.txt): denied or held | {hostile_new.calls} | "
        f"{hostile_new.as_expected} | {hostile_new.share:.1%} | {_micros(hostile_new.extraction_s)} |",
        "",
        "The first two corpora were written before the reader was changed and the reader was corrected where it "
        "misread them (a bug in the reader, never by allowing a class): they show the posture holds on what it was "
        "built against. The held-out corpora were written afterwards and never used to change the reader: their "
        "figures are the better estimate of the false-positive cost and of the catch rate on spellings not seen.",
        "",
        "## Benign commands held or denied (the false-positive cost)",
        "",
        *([f"- `{call}`: {verdict}: {reason[:240]}" for call, verdict, reason in benign.misses + benign_new.misses]
          or ["- none"]),
        "",
        "## Hostile calls allowed",
        "",
        *([f"- `{call}`: {reason[:160]}" for call, verdict, reason in hostile.misses + hostile_new.misses]
          or ["- none"]),
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"policy-corpus-{datetime.now(UTC):%Y-%m-%d}.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines[:14]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
