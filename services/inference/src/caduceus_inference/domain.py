"""The gateway's pure logic: what a prompt says, data rules applied to text, usage read from a completion.

No I/O here: the HTTP side (gateway.py) and the bus side (handlers.py) call these.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

from caduceus_contracts import DataClassSpec
from caduceus_redaction import placeholder, redact_text, secret_spans

SECRET_CLASS = "secret"
# Prompt text sent to policy for classification (the same cap as the contract's field).
MAX_PROMPT_CHARS = 512 * 1024


def prompt_text(messages: Iterable[Any]) -> str:
    """Every piece of text a prompt carries to a model: message contents, text parts, tool-call arguments."""
    pieces: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            pieces.append(content)
        elif isinstance(content, list):
            pieces += [part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)]
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                pieces.append(function["arguments"])
    return "\n".join(pieces)[:MAX_PROMPT_CHARS]


def prompt_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def estimate_tokens(text: str) -> int:
    """A rough count (four characters a token) for the budget check before the call; usage uses the real one."""
    return max(1, len(text) // 4)


def _word_pattern(word: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)


def redact_class(text: str, spec: DataClassSpec) -> str:
    """`text` with every match of one data class replaced by `[REDACTED:<class>]`."""
    if spec.name == SECRET_CLASS and not spec.patterns and not spec.words:
        return redact_text(text)
    for pattern in spec.patterns:
        text = re.sub(pattern, placeholder(spec.name), text)
    for word in spec.words:
        text = _word_pattern(word).sub(placeholder(spec.name), text)
    return text


def found_class(text: str, specs: Iterable[DataClassSpec]) -> str | None:
    """The first data class of `specs` present in `text`, or None."""
    for spec in specs:
        if redact_class(text, spec) != text:
            return spec.name
    return None


def redact_all(text: str, specs: Iterable[DataClassSpec]) -> str:
    for spec in specs:
        text = redact_class(text, spec)
    return text


class HeldInResponse(Exception):
    """A streamed answer reached a data class the pack denies in responses: the rest is withheld."""

    def __init__(self, data_class: str) -> None:
        super().__init__(data_class)
        self.data_class = data_class


class ResponseStream:
    """The response rules over one streamed answer, whatever its chunking.

    An upstream streams a few characters at a time, so a secret or a denied word is nearly always split
    across chunks: rules applied chunk by chunk would see none of it. The text is checked as a whole
    instead, and the last `holdback` characters are held back until more text shows whether they start a
    match; a match in progress is held until it ends. So the client gets the same text as if the answer
    had been checked whole, `holdback` characters later (nothing is held when the pack sets no rule). A
    match that only becomes recognisable after more than `holdback` characters is the bound of this
    guarantee (the built-in secret patterns are recognisable within 70).
    """

    def __init__(self, deny: tuple[DataClassSpec, ...], redact: tuple[DataClassSpec, ...], holdback: int) -> None:
        self.deny, self.redact, self.holdback = deny, redact, holdback
        self.held = ""   # received, not sent yet
        self.sent = ""   # the last `holdback` characters sent, as received: a denied class may span sent and held

    @property
    def active(self) -> bool:
        return bool(self.deny or self.redact)

    def feed(self, text: str) -> str:
        """What may be sent now of the answer so far; raises HeldInResponse for a denied class."""
        if not self.active:
            return text
        self.held += text
        denied = found_class(self.sent + self.held, self.deny)
        if denied:
            raise HeldInResponse(denied)
        cut = self._cut()
        out, self.held = self.held[:cut], self.held[cut:]
        self.sent = (self.sent + out)[-self.holdback:]
        return redact_all(out, self.redact)

    def _cut(self) -> int:
        """How much of the held text can go: all but the last `holdback` characters, and nothing from the start
        of a match that crosses that point or may still grow (it reaches the end of what came so far)."""
        held = self.held
        cut = max(0, len(held) - self.holdback)
        if cut == 0:
            return 0
        for start, end in sorted(_spans(held, self.redact), reverse=True):
            if start < cut and (end > cut or end == len(held)):
                cut = start
        whole = redact_all(held, self.redact)
        if redact_all(held[:cut], self.redact) + redact_all(held[cut:], self.redact) == whole:
            return cut
        # The spans and the redaction disagree (overlapping rules): back off one character at a time until the
        # text before the cut redacts the same alone.
        while cut > 0 and redact_all(held[:cut], self.redact) + redact_all(held[cut:], self.redact) != whole:
            cut -= 1
        return cut

    def flush(self) -> str:
        """The rest, at the end of the answer."""
        out, self.held = redact_all(self.held, self.redact), ""
        return out


def _spans(text: str, specs: Iterable[DataClassSpec]) -> list[tuple[int, int]]:
    """Where the data classes' matches are in `text`."""
    spans: list[tuple[int, int]] = []
    for spec in specs:
        if spec.name == SECRET_CLASS and not spec.patterns and not spec.words:
            spans += secret_spans(text)
        spans += [m.span() for pattern in spec.patterns for m in re.finditer(pattern, text)]
        spans += [m.span() for word in spec.words for m in _word_pattern(word).finditer(text)]
    return spans


def redact_messages(messages: list[Any], specs: tuple[DataClassSpec, ...]) -> list[Any]:
    """The messages with the data classes' matches replaced in every text the model would read."""
    if not specs:
        return messages
    out = []
    for message in messages:
        if not isinstance(message, dict):
            out.append(message)
            continue
        message = dict(message)
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = redact_all(content, specs)
        elif isinstance(content, list):
            message["content"] = [{**part, "text": redact_all(part["text"], specs)}
                                  if isinstance(part, dict) and isinstance(part.get("text"), str) else part
                                  for part in content]
        if message.get("tool_calls"):
            message["tool_calls"] = [_redact_call(call, specs) for call in message["tool_calls"]]
        out.append(message)
    return out


def _redact_call(call: Any, specs: tuple[DataClassSpec, ...]) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    return {**call, "function": {**function, "arguments": redact_all(function["arguments"], specs)}}


def usage_of(body: Any) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) from a completion or a stream's usage chunk, when it carries them."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return max(0, prompt), max(0, completion)


def refusal_completion(model: str, text: str, completion_id: str, created: int) -> dict[str, Any]:
    """An assistant message saying why the call was refused: the planner ends its turn with it as the reply."""
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


def refusal_chunks(model: str, text: str, completion_id: str, created: int) -> list[bytes]:
    """The same refusal as a stream of `chat.completion.chunk` events ending in `[DONE]`."""
    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        return f"data: {json.dumps(body)}\n\n".encode()
    return [chunk({"role": "assistant", "content": text}, None), chunk({}, "stop"), b"data: [DONE]\n\n"]
