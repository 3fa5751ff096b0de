"""The OpenAI-compatible endpoint planners call: `POST /v1/chat/completions` (streaming or not), `GET /v1/models`.

For every call: the API key must be a session grant identity signed; policy decides (budgets before the
call, data rules, the upstream) and signs; the prompt is redacted as decided; the upstream answers
through us (chunk by chunk when streaming) with the response rules applied; its real token counts are
published as `model.usage`. A refusal is an assistant message saying why, so the person reads it as
the turn's reply; policy or the upstream unreachable is a refusal too (fail closed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import Counter, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from caduceus_contracts import (
    ContractError,
    Event,
    GrantExpired,
    Keyring,
    ModelCallCompleted,
    ModelCallDecided,
    ModelCallRequested,
    ModelDecision,
    ModelUsage,
    SessionGrant,
    SignatureError,
    SignedGrant,
    subjects,
    utcnow,
)
from caduceus_inference.domain import (
    HeldInResponse,
    ResponseStream,
    estimate_tokens,
    found_class,
    prompt_digest,
    prompt_text,
    redact_all,
    redact_messages,
    refusal_chunks,
    refusal_completion,
    usage_of,
)
from caduceus_inference.handlers import PendingDecisions
from caduceus_inference.settings import InferenceSettings, Upstream

log = logging.getLogger("caduceus.inference")
REFUSED_HEADER = "x-caduceus-refused"
# Policy ids of a turn stopped by a guardrail of the pack (policy's caduceus_policy.turns).
GUARDRAIL_PREFIX = "guardrail:"
TURN_RAN_OUT = "the turn's wall time (a guardrail of the pack) ran out while the model was answering"

CALLS = Counter("caduceus_inference_calls_total", "Model calls through the gateway, by outcome",
                ["outcome"])
FIRST_BYTE = Histogram("caduceus_inference_upstream_seconds", "Time from the call to the upstream's first byte",
                       buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))

Publish = Callable[[str, Event], Awaitable[None]]


class Refused(Exception):
    """The call does not go to any model; the message is what the person reads."""


@dataclass
class Gateway:
    """What the endpoint needs: keys to verify grants and decisions, the bus, the upstreams, an HTTP client."""

    settings: InferenceSettings
    keyring: Keyring
    publish: Publish
    pending: PendingDecisions
    client: httpx.AsyncClient

    # --- the steps of one call -----------------------------------------------------------------

    def caller(self, request: Request) -> tuple[SignedGrant, SessionGrant]:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise PermissionError("send the planner's session grant as the API key (Authorization: Bearer ...)")
        try:
            signed = SignedGrant.from_api_key(key.strip())
            return signed, signed.verify(self.keyring)
        except (ContractError, SignatureError, GrantExpired) as exc:
            raise PermissionError(f"the API key is not a valid session grant: {exc}") from None

    async def decide(self, signed: SignedGrant, grant: SessionGrant, model: str, text: str,
                     stream: bool) -> ModelDecision:
        request = ModelCallRequested(tenant=grant.tenant, grant=signed, workspace=grant.workspace,
                                     session_id=grant.session_id, model=model[:256], prompt=text,
                                     prompt_digest=prompt_digest(text), estimated_tokens=estimate_tokens(text),
                                     stream=stream)
        future = self.pending.expect(request.call_id)
        try:
            await self.publish(subjects.model_requested(grant.tenant), request)
            decided: ModelCallDecided = await asyncio.wait_for(future, self.settings.inference_decision_timeout_s)
        except TimeoutError:
            raise Refused(f"policy did not decide this model call within "
                          f"{self.settings.inference_decision_timeout_s:g} s; refused (fail closed)") from None
        except Exception as exc:
            raise Refused(f"policy could not be asked ({type(exc).__name__}); refused (fail closed)") from None
        finally:
            self.pending.forget(request.call_id)
        try:
            decision = decided.decision.verify(self.keyring)
        except SignatureError as exc:
            raise Refused(f"the model decision's signature does not verify: {exc}; refused") from None
        if (decision.call_id, decision.prompt_digest, decision.tenant) != (request.call_id, request.prompt_digest,
                                                                           grant.tenant):
            raise Refused("the model decision is for another call; refused")
        if decision.expires_at <= decision.issued_at or decision.expires_at < utcnow():
            raise Refused("the model decision has expired; refused")
        return decision

    def upstream_of(self, decision: ModelDecision) -> Upstream:
        upstream = self.settings.inference_upstreams.get(decision.upstream)
        if upstream is None:
            raise Refused(f"policy routed this call to upstream {decision.upstream!r}, which this gateway does not "
                          f"have (it has: {', '.join(sorted(self.settings.inference_upstreams)) or 'none'}); "
                          "refused")
        return upstream

    async def finished(self, grant: SessionGrant, decision: ModelDecision, model: str,
                       usage: tuple[int, int] | None, status: str, detail: str = "") -> None:
        """Usage (the upstream's real counts) and the outcome, on the bus; a lost report never fails a call."""
        events: list[tuple[str, Event]] = [(subjects.model_completed(grant.tenant), ModelCallCompleted(
            tenant=grant.tenant, call_id=decision.call_id, workspace=grant.workspace, session_id=grant.session_id,
            user=grant.user, upstream=decision.upstream, status=status, detail=detail[:2000]))]
        if usage is not None:
            upstream = self.settings.inference_upstreams.get(decision.upstream)
            cost = _cost(upstream, *usage)
            events.insert(0, (subjects.model_usage(grant.tenant), ModelUsage(
                tenant=grant.tenant, workspace=grant.workspace, session_id=grant.session_id, user=grant.user,
                model=model[:256], prompt_tokens=usage[0], completion_tokens=usage[1], cost_usd=cost,
                call_id=decision.call_id, upstream=decision.upstream, turn_id=grant.grant_id)))
        for subject, event in events:
            try:
                await self.publish(subject, event)
            except Exception:
                log.exception("could not publish %s for model call %s", event.kind, decision.call_id)

    # --- HTTP --------------------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            signed, grant = self.caller(request)
        except PermissionError as exc:
            CALLS.labels("unauthenticated").inc()
            return _error(401, str(exc), "authentication_error")
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not valid JSON: send a chat.completions request object")
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            return _error(400, "a chat.completions request needs a non-empty `messages` list")
        model, stream = str(body.get("model") or ""), bool(body.get("stream"))
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        try:
            decision = await self.decide(signed, grant, model, prompt_text(messages), stream)
            if decision.verdict != "allow" and any(p.startswith(GUARDRAIL_PREFIX) for p in decision.policy_ids):
                raise Refused(decision.reason)  # "this turn was stopped: ...": the turn's reply, as policy put it
            if decision.verdict != "allow":
                raise Refused(f"Caduceus refused this model call: {decision.reason}")
            upstream = self.upstream_of(decision)
        except Refused as exc:
            CALLS.labels("refused").inc()
            log.info("model call for %s/%s refused: %s", grant.tenant, grant.user, exc)
            return _refusal(model, str(exc), completion_id, created, stream)
        sent_model = upstream.model or model
        forwarded = {**body, "model": sent_model, "messages": redact_messages(messages, decision.redact_prompt)}
        if stream:
            forwarded["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
            return await self._stream(grant, decision, upstream, forwarded, completion_id, created, started)
        return await self._complete(grant, decision, upstream, forwarded, completion_id, created, started)

    def _upstream_request(self, upstream: Upstream, body: dict[str, Any]) -> httpx.Request:
        headers = {"content-type": "application/json"}
        if upstream.api_key:
            headers["authorization"] = f"Bearer {upstream.api_key}"
        return self.client.build_request("POST", upstream.base_url.rstrip("/") + "/chat/completions",
                                         headers=headers, content=json.dumps(body).encode())

    async def _complete(self, grant: SessionGrant, decision: ModelDecision, upstream: Upstream,
                        body: dict[str, Any], completion_id: str, created: int, started: float) -> Response:
        model = body["model"]
        try:
            reply = await asyncio.wait_for(self.client.send(self._upstream_request(upstream, body)),
                                           _time_left(decision))
            FIRST_BYTE.observe(time.perf_counter() - started)
            answer = reply.json()
            if reply.status_code >= 400 or not isinstance(answer, dict):
                raise ValueError(f"HTTP {reply.status_code}")
        except TimeoutError:
            return await self._turn_ran_out(grant, decision, model, completion_id, created, False)
        except (httpx.HTTPError, ValueError) as exc:
            return await self._upstream_failed(grant, decision, model, exc, completion_id, created, False)
        usage = usage_of(answer)
        for choice in answer.get("choices") or ():
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                denied = found_class(message["content"], decision.deny_response)
                if denied:
                    await self.finished(grant, decision, model, usage, "refused", f"response held {denied}")
                    CALLS.labels("refused").inc()
                    return _refusal(model, f"Caduceus withheld the model's answer: it held {denied} data, which "
                                           "the pack does not let through", completion_id, created, False)
                message["content"] = redact_all(message["content"], decision.redact_response)
        await self.finished(grant, decision, model, usage, "ok")
        CALLS.labels("ok").inc()
        return JSONResponse(answer)

    async def _stream(self, grant: SessionGrant, decision: ModelDecision, upstream: Upstream,
                      body: dict[str, Any], completion_id: str, created: int, started: float) -> Response:
        model = body["model"]
        try:
            reply = await asyncio.wait_for(self.client.send(self._upstream_request(upstream, body), stream=True),
                                           _time_left(decision))
        except TimeoutError:
            return await self._turn_ran_out(grant, decision, model, completion_id, created, True)
        except httpx.HTTPError as exc:
            return await self._upstream_failed(grant, decision, model, exc, completion_id, created, True)
        if reply.status_code >= 400:
            await reply.aclose()
            return await self._upstream_failed(grant, decision, model, ValueError(f"HTTP {reply.status_code}"),
                                               completion_id, created, True)
        FIRST_BYTE.observe(time.perf_counter() - started)
        return StreamingResponse(self._relay(grant, decision, model, reply, completion_id, created),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def _relay(self, grant: SessionGrant, decision: ModelDecision, model: str, reply: httpx.Response,
                     completion_id: str, created: int) -> AsyncIterator[bytes]:
        """The upstream's events as they come, their content through the response rules (one filter per choice)."""
        usage: tuple[int, int] | None = None
        status, detail = "ok", ""
        filters: dict[int, ResponseStream] = {}

        def filter_of(index: int) -> ResponseStream:
            if index not in filters:
                filters[index] = ResponseStream(decision.deny_response, decision.redact_response,
                                                self.settings.inference_stream_holdback_chars)
            return filters[index]

        lines = reply.aiter_lines()
        try:
            while True:
                try:
                    line = await asyncio.wait_for(anext(lines), _time_left(decision))
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    status, detail = "refused", TURN_RAN_OUT
                    for piece in refusal_chunks(model, f"\n[{decision.turn_stop}]", completion_id, created):
                        yield piece
                    return
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    continue
                usage = usage_of(chunk) or usage
                try:
                    _apply_response_rules(chunk, filter_of)
                except HeldInResponse as held:
                    status, detail = "refused", f"response held {held.data_class}"
                    for piece in refusal_chunks(model, f"\n[Caduceus withheld the rest of the answer: it held "
                                                       f"{held.data_class} data]", completion_id, created):
                        yield piece
                    return
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            # What is still held (an upstream that never said finish_reason) ends the answer.
            for index, rest in ((i, f.flush()) for i, f in filters.items()):
                if rest:
                    yield _content_chunk(completion_id, created, model, index, rest)
            yield b"data: [DONE]\n\n"
        except httpx.HTTPError as exc:
            status, detail = "upstream-failed", f"the upstream stream broke: {type(exc).__name__}"
            for piece in refusal_chunks(model, f"\n[Caduceus: {detail}]", completion_id, created):
                yield piece
        finally:
            await reply.aclose()
            CALLS.labels(status).inc()
            await self.finished(grant, decision, model, usage, status, detail)

    async def _turn_ran_out(self, grant: SessionGrant, decision: ModelDecision, model: str, completion_id: str,
                            created: int, stream: bool) -> Response:
        """The turn's wall time (a guardrail of the pack) ended while the upstream was still answering."""
        log.info("model call %s cut: %s", decision.call_id, TURN_RAN_OUT)
        CALLS.labels("refused").inc()
        await self.finished(grant, decision, model, None, "refused", TURN_RAN_OUT)
        return _refusal(model, decision.turn_stop, completion_id, created, stream)

    async def _upstream_failed(self, grant: SessionGrant, decision: ModelDecision, model: str, exc: Exception,
                               completion_id: str, created: int, stream: bool) -> Response:
        detail = f"the model upstream {decision.upstream!r} failed ({type(exc).__name__}: {exc})"
        log.warning("model call %s: %s", decision.call_id, detail)
        CALLS.labels("upstream-failed").inc()
        await self.finished(grant, decision, model, None, "upstream-failed", detail)
        return _refusal(model, f"Caduceus could not complete this model call: {detail}", completion_id, created,
                        stream)

    async def models(self, request: Request) -> Response:
        try:
            self.caller(request)
        except PermissionError as exc:
            return _error(401, str(exc), "authentication_error")
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "caduceus", "context_length": 131_072}
            for name in sorted(self.settings.inference_upstreams)]})

    def app(self) -> Starlette:
        async def not_found(request: Request) -> Response:
            return _error(404, f"no route {request.method} {request.url.path}: the inference gateway serves "
                               "GET /v1/models and POST /v1/chat/completions", "not_found_error")

        return Starlette(routes=[
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        ])


def _apply_response_rules(chunk: Any, filter_of: Callable[[int], ResponseStream]) -> None:
    """Pass a chunk's content deltas through their choice's filter, in place (held text comes out later; a
    choice that finishes gets the rest of its text). Raises HeldInResponse for a denied class."""
    for choice in chunk.get("choices") or () if isinstance(chunk, dict) else ():
        if not isinstance(choice, dict):
            continue
        index = choice.get("index") if isinstance(choice.get("index"), int) else 0
        response = filter_of(index)
        if not response.active:
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            delta["content"] = response.feed(delta["content"])
        if choice.get("finish_reason"):
            rest = response.flush()
            if rest:
                if not isinstance(delta, dict):
                    delta = choice["delta"] = {}
                delta["content"] = (delta.get("content") or "") + rest


def _content_chunk(completion_id: str, created: int, model: str, index: int, text: str) -> bytes:
    body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": {"content": text}, "finish_reason": None}]}
    return f"data: {json.dumps(body)}\n\n".encode()


def _time_left(decision: ModelDecision) -> float | None:
    """Seconds until the turn's wall time ends (None: the pack sets none)."""
    if decision.turn_deadline is None:
        return None
    return max(0.0, (decision.turn_deadline - utcnow()).total_seconds())


def _cost(upstream: Upstream | None, prompt_tokens: int, completion_tokens: int) -> float:
    if upstream is None:
        return 0.0
    return (prompt_tokens * upstream.usd_per_1k_prompt + completion_tokens * upstream.usd_per_1k_completion) / 1000


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status_code=status)


def _refusal(model: str, text: str, completion_id: str, created: int, stream: bool) -> Response:
    headers = {REFUSED_HEADER: "1"}
    if stream:
        async def chunks() -> AsyncIterator[bytes]:
            for piece in refusal_chunks(model, text, completion_id, created):
                yield piece
        return StreamingResponse(chunks(), media_type="text/event-stream", headers=headers)
    return JSONResponse(refusal_completion(model, text, completion_id, created), headers=headers)
