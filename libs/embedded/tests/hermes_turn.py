"""Run one real Hermes turn against an OpenAI-compatible endpoint, in a fresh interpreter, and print the outcome.

`python hermes_turn.py BASE_URL HERMES_HOME WORKDIR MESSAGE [TOOLSET ...]` prints one JSON line:
{"final_response": ..., "tool_calls": [{"name", "arguments"}], "tool_results": [...]}.
HERMES_HOME must be set before Hermes is imported (it keeps global state), hence its own process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERMES_CONFIG = """\
approvals:
  mode: manual
security:
  tirith_enabled: false
"""


def main() -> None:
    base_url, home, workdir, message, *toolsets = sys.argv[1:]
    Path(home).mkdir(parents=True, exist_ok=True)
    (Path(home) / "config.yaml").write_text(HERMES_CONFIG)
    os.environ["HERMES_HOME"] = home
    os.chdir(workdir)  # the local terminal backend runs commands in the process's cwd
    from run_agent import AIAgent

    agent = AIAgent(base_url=base_url, api_key="scripted", provider="custom", api_mode="chat_completions",
                    model="scripted", enabled_toolsets=toolsets or ["terminal", "file", "todo"],
                    session_id="scripted-model-test", quiet_mode=True, skip_context_files=True, skip_memory=True,
                    max_iterations=8)
    result = agent.run_conversation(message)
    calls, results = [], []
    for entry in result.get("messages", []):
        for call in entry.get("tool_calls") or []:
            calls.append({"name": call["function"]["name"], "arguments": json.loads(call["function"]["arguments"])})
        if entry.get("role") == "tool":
            results.append(entry.get("content"))
    print(json.dumps({"final_response": result.get("final_response"), "tool_calls": calls, "tool_results": results}))


if __name__ == "__main__":
    main()
