"""Measurement: policy's own bash reader beside tree-sitter-bash and bashlex, on every corpus command line.

Issue 19 asked whether a real bash grammar would make the command reader smaller and stronger.
This counts, per grammar, the lines it cannot parse and the lines where the number of simple
commands it finds differs from policy's reader, and prints those lines, so each difference can be
judged by hand. The grammars are not dependencies of Caduceus; install them beside it to run this:

    .venv/bin/pip install --target /tmp/grammars tree-sitter tree-sitter-bash bashlex
    PYTHONPATH=/tmp/grammars .venv/bin/python bench/shell_grammars.py

Writes bench/results/shell-grammars-<date>.md.
"""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime
from pathlib import Path

from caduceus_policy.facts.shell_syntax import Script, parse_script

HERE = Path(__file__).parent


def _corpus_lines() -> list[str]:
    spec = importlib.util.spec_from_file_location("policy_corpus", HERE / "policy_corpus.py")
    assert spec is not None and spec.loader is not None
    corpus = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = corpus
    spec.loader.exec_module(corpus)
    calls = [*corpus.benign_calls(), *corpus.benign_calls(True), *corpus.hostile_calls(), *corpus.hostile_calls(True)]
    return [call.args["command"] for call in calls if call.tool == "terminal"]


def ours(line: str) -> tuple[int, bool]:
    script = parse_script(line)
    found = 0

    def walk(inner: Script) -> None:
        nonlocal found
        for command in inner.commands():
            found += bool(command.words)
            for group in command.groups:
                walk(group)
            for word in [*command.words, *(r.target for r in command.redirects)]:
                for sub in word.subs:
                    walk(sub)

    walk(script)
    return found, bool(script.problems)


def main() -> None:
    try:
        import bashlex
        import tree_sitter
        import tree_sitter_bash
    except ImportError:
        print("tree-sitter, tree-sitter-bash and bashlex are not installed: see this script's docstring")
        return
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_bash.language()))

    def tree_sitter_count(line: str) -> tuple[int, bool]:
        found, broken, stack = 0, False, [parser.parse(line.encode()).root_node]
        while stack:
            node = stack.pop()
            found += node.type == "command"
            broken |= node.type == "ERROR" or node.is_missing
            stack.extend(node.children)
        return found, broken

    def bashlex_count(line: str) -> tuple[int, bool]:
        found = 0

        class Commands(bashlex.ast.nodevisitor):  # type: ignore[misc]
            def visitcommand(self, node, parts):  # type: ignore[no-untyped-def]
                nonlocal found
                found += 1

        try:
            for part in bashlex.parse(line):
                Commands().visit(part)
        except Exception:  # bashlex raises its own errors and plain ones on what it cannot parse
            return 0, True
        return found, False

    lines = _corpus_lines()
    rows, differences = [], []
    own = {line: ours(line) for line in lines}
    for name, count in (("tree-sitter-bash", tree_sitter_count), ("bashlex", bashlex_count)):
        broken = differ = 0
        for line in lines:
            found, failed = count(line)
            broken += failed
            if not failed and found != own[line][0]:
                differ += 1
                differences.append(f"- {name} {found}, policy {own[line][0]}: `{line}`")
        rows.append(f"| {name} | {broken} | {differ} |")
    lines_out = [
        "# Shell grammars beside policy's reader (every corpus command line)",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "- command: `PYTHONPATH=/tmp/grammars .venv/bin/python bench/shell_grammars.py`",
        f"- lines: {len(lines)}; policy's reader cannot read {sum(failed for _, failed in own.values())}",
        "",
        "| grammar | lines it cannot parse | lines where it finds another number of simple commands |",
        "|---|---|---|",
        *rows,
        "",
        "Differences (policy counts standalone assignments and `for`/`select` headers as commands and finds no",
        "command in what it cannot read):",
        "",
        *differences,
        "",
    ]
    out = HERE / "results" / f"shell-grammars-{datetime.now(UTC):%Y-%m-%d}.md"
    out.write_text("\n".join(lines_out), encoding="utf-8")
    print("\n".join(lines_out[:10]))


if __name__ == "__main__":
    main()
