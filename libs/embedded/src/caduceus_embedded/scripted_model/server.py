"""The scripted model's HTTP surface: an OpenAI-compatible `/v1/models` and `/v1/chat/completions`.

Replies come from `scenarios.choose_reply`; this module only speaks the wire format, streaming
(`stream: true`, server-sent `chat.completion.chunk` events ending in `data: [DONE]`) or not.
Unknown request fields (tools, temperature, ...) are accepted and ignored; any API key is accepted.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from caduceus_embedded.scripted_model.scenarios import (
    Reply,
    Scenario,
    choose_reply,
    message_text,
)

MODEL_ID = "scripted"
# Advertised so agents that size their context from /v1/models accept the model.
CONTEXT_LENGTH = 131_072

log = logging.getLogger("caduceus.scripted_model")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: Any = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage]
    model: str = MODEL_ID
    stream: bool = False
    stream_options: dict[str, Any] | None = None


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status_code=status)


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _usage(request: ChatRequest, reply: Reply) -> dict[str, int]:
    prompt = sum(_estimate_tokens(message_text(m.model_dump())) for m in request.messages)
    completion = _estimate_tokens((reply.content or "") + "".join(c.name + c.arguments for c in reply.tool_calls))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion(request: ChatRequest, reply: Reply, completion_id: str, created: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in reply.tool_calls
        ]
    return {
        "id": completion_id, "object": "chat.completion", "created": created, "model": request.model,
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason, "logprobs": None}],
        "usage": _usage(request, reply),
    }


def _chunks(request: ChatRequest, reply: Reply, completion_id: str, created: int) -> list[dict[str, Any]]:
    """The chunk sequence OpenAI streams: role, content, each tool call (head then arguments), finish, usage."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": request.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    if reply.content:
        chunks.append(chunk({"content": reply.content}))
    for index, call in enumerate(reply.tool_calls):
        chunks.append(chunk({"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                             "function": {"name": call.name, "arguments": ""}}]}))
        chunks.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]}))
    chunks.append(chunk({}, reply.finish_reason))
    if (request.stream_options or {}).get("include_usage"):
        chunks.append({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                       "model": request.model, "choices": [], "usage": _usage(request, reply)})
    return chunks


async def _sse(chunks: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def create_app(scenarios: tuple[Scenario, ...]) -> Starlette:
    """The ASGI app serving these scenarios (run it with uvicorn, or in-process in tests)."""

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "caduceus",
             "context_length": CONTEXT_LENGTH},
        ]})

    async def chat_completions(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not valid JSON: send a chat.completions request object")
        try:
            chat = ChatRequest.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "body"
            return _error(400, f"invalid chat.completions request at {where}: {first.get('msg')}")
        reply = choose_reply(scenarios, [m.model_dump() for m in chat.messages])
        log.info("scenario=%s step=%s tool_calls=%s stream=%s", reply.scenario, reply.step,
                 [c.name for c in reply.tool_calls], chat.stream)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if chat.stream:
            return StreamingResponse(_sse(_chunks(chat, reply, completion_id, created)),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return JSONResponse(_completion(chat, reply, completion_id, created))

    async def not_found(request: Request) -> Response:
        return _error(404, f"no route {request.method} {request.url.path}: the scripted model serves "
                           "GET /v1/models and POST /v1/chat/completions", "not_found_error")

    return Starlette(routes=[
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
    ])
