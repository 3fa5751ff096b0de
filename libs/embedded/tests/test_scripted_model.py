"""The scripted model over real HTTP: the server runs as `python -m caduceus_embedded.scripted_model`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from caduceus_embedded.ports import free_port
from caduceus_embedded.servers import start_scripted_model

SCENARIOS = """\
scenarios:
  - name: inspect
    match: "(?i)inspect the repo"
    steps:
      - tool_calls:
          - {name: terminal, arguments: {command: "ls"}}
          - {name: read_file, arguments: {path: README.md}}
      - content: "first: {tool_results[0]} | last: {last_tool_result} | missing: {tool_results[5]}"
  - name: greet
    match: "^hi"
    steps:
      - content: "hello there"
"""

DEMO_MESSAGE = "Please check the workspace and leave a note in /etc/caduceus-demo.txt"


@pytest.fixture(scope="module")
def model_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("scripted")
    (base / "scenarios.yaml").write_text(SCENARIOS)
    server = start_scripted_model(free_port(), base / "scenarios.yaml", base / "model.log")
    yield server.urls["model"]
    server.stop()
    assert server.process.returncode == 0, "the scripted model should exit cleanly on SIGINT"


def chat(url: str, messages: list[dict], **extra) -> dict:
    response = httpx.post(f"{url}/chat/completions", json={"model": "scripted", "messages": messages, **extra},
                          headers={"Authorization": "Bearer anything"})
    assert response.status_code == 200, response.text
    return response.json()


def stream(url: str, messages: list[dict], **extra) -> list[dict | str]:
    events: list[dict | str] = []
    with httpx.stream("POST", f"{url}/chat/completions",
                      json={"model": "scripted", "messages": messages, "stream": True, **extra}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def tool_turn(calls: list[dict], results: list[str]) -> list[dict]:
    """The assistant message with these calls followed by their tool results, as Hermes sends them."""
    assistant = {"role": "assistant", "content": "", "tool_calls": [
        {"id": f"call_{i}", "type": "function", "function": {"name": c["name"], "arguments": "{}"}}
        for i, c in enumerate(calls)]}
    return [assistant, *({"role": "tool", "tool_call_id": f"call_{i}", "content": r} for i, r in enumerate(results))]


def test_models_lists_scripted(model_url: str) -> None:
    listed = httpx.get(f"{model_url}/models").json()
    assert [m["id"] for m in listed["data"]] == ["scripted"]


def test_first_request_of_a_turn_plays_the_first_step(model_url: str) -> None:
    body = chat(model_url, [{"role": "system", "content": "be helpful"},
                            {"role": "user", "content": "Please inspect the repo"}],
                tools=[{"type": "function", "function": {"name": "terminal"}}], temperature=0.2, max_tokens=64)
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    calls = choice["message"]["tool_calls"]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("terminal", {"command": "ls"}), ("read_file", {"path": "README.md"})]
    assert len({c["id"] for c in calls}) == 2
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] > 0


def test_tool_results_select_the_next_step_and_fill_the_content(model_url: str) -> None:
    messages = [{"role": "user", "content": "inspect the repo"},
                *tool_turn([{"name": "terminal"}, {"name": "read_file"}], ["a.txt b.txt", "# Readme"])]
    choice = chat(model_url, messages)["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == "first: a.txt b.txt | last: # Readme | missing: (no tool result #5)"


def test_streamed_tool_calls_arrive_as_openai_deltas(model_url: str) -> None:
    events = stream(model_url, [{"role": "user", "content": "inspect the repo"}],
                    stream_options={"include_usage": True})
    assert events[-1] == "[DONE]"
    chunks = [e for e in events if isinstance(e, dict)]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assembled: dict[int, dict] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for delta in choice["delta"].get("tool_calls", []):
                slot = assembled.setdefault(delta["index"], {"id": None, "name": "", "arguments": ""})
                slot["id"] = delta.get("id") or slot["id"]
                slot["name"] += delta.get("function", {}).get("name", "")
                slot["arguments"] += delta.get("function", {}).get("arguments", "")
    assert [(s["name"], json.loads(s["arguments"])) for s in assembled.values()] == [
        ("terminal", {"command": "ls"}), ("read_file", {"path": "README.md"})]
    assert all(s["id"] for s in assembled.values())
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls" and set(finishes[:-1]) == {None}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


def test_openai_client_reads_a_streamed_reply(model_url: str) -> None:
    client = openai.OpenAI(base_url=model_url, api_key="any-key-works")
    parts = client.chat.completions.create(model="scripted", stream=True,
                                           messages=[{"role": "user", "content": "hi"}])
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == "hello there"


def test_each_user_message_starts_its_own_scenario(model_url: str) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"},
                {"role": "user", "content": "now inspect the repo"}]
    calls = chat(model_url, messages)["choices"][0]["message"]["tool_calls"]
    assert calls[0]["function"]["name"] == "terminal"


def test_unmatched_message_is_answered_not_crashed(model_url: str) -> None:
    text = "what is the weather like on the far side of the moon this afternoon, roughly speaking?"
    message = chat(model_url, [{"role": "user", "content": [{"type": "text", "text": text}]}])["choices"][0]["message"]
    assert message["content"] == f"scripted model: no scenario matches '{text[:60]}'"


def test_exhausted_scenario_ends_the_turn_with_content(model_url: str) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"},
                *tool_turn([{"name": "todo"}], ["{}"])]
    choice = chat(model_url, messages)["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert "no more steps" in choice["message"]["content"]


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"messages": "hello"}', b'{"model": "scripted"}',
                                  b'{"messages": [{"content": "no role"}]}'])
def test_malformed_request_gets_a_400_json_error(model_url: str, body: bytes) -> None:
    response = httpx.post(f"{model_url}/chat/completions", content=body,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


def test_unknown_route_is_a_json_404(model_url: str) -> None:
    response = httpx.get(f"{model_url.removesuffix('/v1')}/api/tags")
    assert response.status_code == 404 and "scripted model" in response.json()["error"]["message"]


def test_default_scenarios_play_the_demo(scripted_model) -> None:
    first = chat(scripted_model.base_url, [{"role": "user", "content": DEMO_MESSAGE}])["choices"][0]["message"]
    assert first["tool_calls"][0]["function"]["name"] == "terminal"
    messages = [{"role": "user", "content": DEMO_MESSAGE},
                *tool_turn([{"name": "terminal"}], ["hello from the executor\n/work"]),
                *tool_turn([{"name": "write_file"}], ["denied by policy"])]
    final = chat(scripted_model.base_url, messages)["choices"][0]["message"]["content"]
    assert "hello from the executor" in final and "denied by policy" in final


def test_invalid_scenario_file_is_refused_with_a_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenarios:\n  - name: x\n    match: '('\n    steps: [{content: hi}]\n")
    result = subprocess.run([sys.executable, "-m", "caduceus_embedded.scripted_model", "--port", str(free_port()),
                             "--scenarios", str(bad)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "bad.yaml" in result.stderr and "scenarios.0.match" in result.stderr


def test_remember_quotes_the_users_words_into_the_memory_call_and_recall_reads_the_system_prompt() -> None:
    from caduceus_embedded.scripted_model.scenarios import choose_reply, default_scenarios_path, load_scenarios

    scenarios = load_scenarios(default_scenarios_path())
    save = choose_reply(scenarios, [{"role": "user", "content": "Remember that the vault code is 4417"}])
    assert save.scenario == "remember"
    assert json.loads(save.tool_calls[0].arguments) == {"action": "add", "target": "memory",
                                                        "content": "the vault code is 4417"}
    block = "═" * 46
    system = (f"You are Hermes.\n\n{block}\nMEMORY (your personal notes) [3% — 40/2,200 chars]\n{block}\n"
              f"the vault code is 4417\n§\nprefers tea\n\n{block}\nUSER PROFILE (who the user is)\n{block}\nbob")
    recall = [{"role": "system", "content": system}, {"role": "user", "content": "What do you remember?"}]
    assert choose_reply(scenarios, recall).content == "I remember: the vault code is 4417; prefers tea"
    last = [{"role": "system", "content": f"{block}\nMEMORY (your personal notes) [1%]\n{block}\nprefers tea\n\n"
                                          "Conversation started: Thursday"}, recall[1]]
    assert choose_reply(scenarios, last).content == "I remember: prefers tea"
    empty = [{"role": "system", "content": "You are Hermes."}, {"role": "user", "content": "what do you remember"}]
    assert choose_reply(scenarios, empty).content == "I remember: nothing"
