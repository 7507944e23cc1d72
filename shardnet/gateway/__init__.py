"""An OpenAI-compatible HTTP gateway: apps written against the OpenAI API use the network unchanged.

`/v1/models`, `/v1/completions`, `/v1/chat/completions` (with `stream: true` as server-sent
events) and `/v1/embeddings`. Each request becomes an on-chain job paid from the gateway's
wallet, escrowing exactly what the model's route costs today (what is not spent comes back to
the wallet). Callers authenticate with an API key (`Authorization: Bearer KEY`); each key has a
budget in wei, and what each key spent is kept in a file beside the key file, so budgets hold
across restarts. Models are named by their on-chain name or id. Chat prompts go through the
model tokenizer's chat template. Errors use OpenAI's error object.

Streaming: the job's last stage streams tokens to the gateway (the client that posted the job)
while it runs; when the job completes, the gateway checks the streamed tokens equal the
on-chain output and, if they do not, ends the stream with an error event.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from shardnet.client import Client, JobResult
from shardnet.direct import check_stream
from shardnet.errors import JobTimeout, ShardnetError, StreamMismatch
from shardnet.gateway.accounts import ApiError, KeyBook
from shardnet.gateway.models import Models, ServedModel
from shardnet.jobs import JobParams
from shardnet.protocol import JobStatus

__all__ = ["ApiError", "Gateway", "KeyBook", "Models", "ServedModel", "create_app"]
log = logging.getLogger("shardnet.gateway")
DEFAULT_MAX_TOKENS = 16
JOB_TIMEOUT_S = 300


# ---------------------------------------------------------------------- the app
class Gateway:
    def __init__(self, client: Client, keys: KeyBook, job_timeout_s: float = JOB_TIMEOUT_S):
        self.client = client
        self.keys = keys
        self.models = Models(client)
        self.job_timeout_s = job_timeout_s
        self._charging: set[asyncio.Task[None]] = set()

    async def run_job(self, key: str, model: ServedModel, job_input: dict[str, Any], params: JobParams) -> int:
        """Post the job (escrow from the gateway's wallet, reserved against the key's budget)."""
        try:
            params.validate()
        except ShardnetError as exc:
            raise ApiError(400, str(exc)) from None
        cost = await asyncio.to_thread(self.client.cost, model.model_id)
        self.keys.reserve(key, cost)
        try:
            job_id = await asyncio.to_thread(
                self.client.submit, model.model_id, job_input, params, cost, int(self.job_timeout_s)
            )
        except Exception:
            self.keys.settle(key, cost, 0)
            raise
        task = asyncio.get_running_loop().create_task(self._charge(key, cost, job_id))
        self._charging.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self._charging.discard)
        return job_id

    async def _charge(self, key: str, reserved: int, job_id: int) -> None:
        """Charge the key what the job paid out (escrow less refunds) once it ends."""
        charged = reserved
        try:
            result = await asyncio.to_thread(self.client.wait, job_id, self.job_timeout_s + 60)
            charged = reserved - result.record.refunded
        except ShardnetError as exc:
            log.warning("job %d: charging the whole escrow (%s)", job_id, exc)
        self.keys.settle(key, reserved, max(0, charged))

    async def result(self, job_id: int) -> JobResult:
        try:
            result = await asyncio.to_thread(self.client.wait, job_id, self.job_timeout_s)
        except JobTimeout as exc:
            raise ApiError(504, str(exc), "timeout", code="job_timeout") from None
        if result.status != JobStatus.COMPLETED or result.output is None:
            raise ApiError(
                502,
                f"job {job_id} ended {result.status.name.lower()}: {result.record.abort_reason or ''}",
                "server_error",
                code="job_failed",
            )
        return result


def _params(body: dict[str, Any]) -> JobParams:
    """Job params from an OpenAI request; a field of the wrong type is refused naming it (ranges
    are checked by `JobParams.validate`)."""

    def number(field: str, default: float, integral: bool = False) -> Any:
        value = body.get(field)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or integral and not isinstance(value, int):
            kind = "an integer" if integral else "a number"
            raise ApiError(400, f"'{field}' must be {kind}, not {value!r}", param=field)
        return value

    tokens_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return JobParams(
        kind="generate",
        max_new_tokens=number(tokens_field, DEFAULT_MAX_TOKENS, integral=True),
        temperature=float(number("temperature", 1.0)),
        top_p=float(number("top_p", 1.0)),
        seed=number("seed", 0, integral=True),
    )


def _chat_prompt(model: ServedModel, messages: object) -> str:
    if not (
        isinstance(messages, list)
        and messages
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    ):
        raise ApiError(
            400, "'messages' must be a non-empty list of {role, content} objects with string content", param="messages"
        )
    tok = model.tokenizer
    if tok is not None and getattr(tok, "chat_template", None):
        return str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    # a model without a chat template: a plain transcript, ending where the assistant speaks
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def _finish_reason(model: ServedModel, tokens: list[int], max_tokens: int) -> str:
    eos = getattr(model.tokenizer, "eos_token_id", None)
    return "stop" if tokens and (tokens[-1] == eos or len(tokens) < max_tokens) else "length"


def _decode(model: ServedModel, tokens: list[int]) -> str:
    if model.tokenizer is None:
        return " ".join(map(str, tokens))
    return str(model.tokenizer.decode(tokens, skip_special_tokens=True))


def _prompt_tokens(model: ServedModel, prompt: str) -> int:
    return len(model.tokenizer(prompt)["input_ids"]) if model.tokenizer is not None else 0


def create_app(gateway: Gateway) -> FastAPI:
    app = FastAPI(title="shardnet gateway (OpenAI-compatible)", docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(ShardnetError)
    async def shardnet_error(_: Request, exc: ShardnetError) -> JSONResponse:
        return ApiError(502, str(exc), "server_error").response()

    async def _body(request: Request) -> tuple[str, dict[str, Any]]:
        key = gateway.keys.check(request.headers.get("authorization"))
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "the request body must be a JSON object") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return key, body

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        gateway.keys.check(request.headers.get("authorization"))
        return {"object": "list", "data": await asyncio.to_thread(gateway.models.listing)}

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Response | dict[str, Any]:
        key, body = await _body(request)
        model = await asyncio.to_thread(gateway.models.resolve, body.get("model"))
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str) and prompt:
            job_input: dict[str, Any] = {"prompt": prompt}
            prompt_tokens = _prompt_tokens(model, prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            job_input, prompt_tokens = {"input_ids": prompt}, len(prompt)
        else:
            raise ApiError(400, "'prompt' must be a non-empty string or a list of token ids", param="prompt")
        params = _params(body)
        job_id = await gateway.run_job(key, model, job_input, params)
        ident, created = f"cmpl-{job_id}", int(time.time())
        if body.get("stream"):

            def chunk(text: str, finish: str | None) -> dict[str, Any]:
                return {
                    "id": ident,
                    "object": "text_completion",
                    "created": created,
                    "model": model.name,
                    "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
                }

            return _sse(gateway, model, job_id, params.max_new_tokens, chunk, first=None)
        result = await gateway.result(job_id)
        tokens = list(result.output["tokens"]) if result.output else []
        return {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "model": model.name,
            "choices": [
                {
                    "index": 0,
                    "text": _decode(model, tokens),
                    "logprobs": None,
                    "finish_reason": _finish_reason(model, tokens, params.max_new_tokens),
                }
            ],
            "usage": _usage(prompt_tokens, len(tokens)),
            "shardnet": {"job_id": job_id, "output_cid": result.record.output_cid},
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> Response | dict[str, Any]:
        key, body = await _body(request)
        model = await asyncio.to_thread(gateway.models.resolve, body.get("model"))
        prompt = _chat_prompt(model, body.get("messages"))
        params = _params(body)
        job_id = await gateway.run_job(key, model, {"prompt": prompt}, params)
        ident, created = f"chatcmpl-{job_id}", int(time.time())
        if body.get("stream"):

            def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
                delta = {"role": "assistant", "content": ""} if text is None else {"content": text} if text else {}
                return {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model.name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                }

            return _sse(gateway, model, job_id, params.max_new_tokens, chunk, first=chunk(None, None))
        result = await gateway.result(job_id)
        tokens = list(result.output["tokens"]) if result.output else []
        return {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": model.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _decode(model, tokens)},
                    "logprobs": None,
                    "finish_reason": _finish_reason(model, tokens, params.max_new_tokens),
                }
            ],
            "usage": _usage(_prompt_tokens(model, prompt), len(tokens)),
            "shardnet": {"job_id": job_id, "output_cid": result.record.output_cid},
        }

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict[str, Any]:
        key, body = await _body(request)
        model = await asyncio.to_thread(gateway.models.resolve, body.get("model"))
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not (isinstance(texts, list) and texts and all(isinstance(t, str) and t for t in texts)):
            raise ApiError(400, "'input' must be a non-empty string or a list of non-empty strings", param="input")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise ApiError(400, "encoding_format must be 'float' or 'base64'", param="encoding_format")
        job_id = await gateway.run_job(key, model, {"texts": texts}, JobParams(kind="embed"))
        result = await gateway.result(job_id)
        vectors = result.output["embeddings"] if result.output else []
        used = sum(_prompt_tokens(model, t) for t in texts)
        return {
            "object": "list",
            "model": model.name,
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode(v, encoding)} for i, v in enumerate(vectors)
            ],
            "usage": {"prompt_tokens": used, "total_tokens": used},
            "shardnet": {"job_id": job_id, "output_cid": result.record.output_cid},
        }

    return app


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    """A vector as floats, or as base64 of little-endian float32 (what the openai client asks for)."""
    if encoding == "float":
        return vector
    import numpy as np

    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _sse(gateway: Gateway, model: ServedModel, job_id: int, max_tokens: int, chunk: Any, first: Any) -> Response:
    """Server-sent events: the text of each streamed token batch, then the finish reason, then
    `[DONE]`. The streamed tokens are checked against the on-chain result before the end."""

    async def events() -> AsyncIterator[bytes]:
        if first is not None:
            yield _event(first)
        streamed: list[int] = []
        shown = ""
        try:
            async for tokens in gateway.client.token_stream(job_id, gateway.job_timeout_s):
                streamed += tokens
                text = _decode(model, streamed)
                if text[len(shown) :]:
                    yield _event(chunk(text[len(shown) :], None))
                shown = text
            result = await gateway.result(job_id)
            check_stream(result, streamed)
        except (ApiError, StreamMismatch, ShardnetError) as exc:
            error = exc if isinstance(exc, ApiError) else ApiError(502, str(exc), "server_error")
            yield _event({"error": {"message": error.message, "type": error.kind, "code": error.code}})
            return
        yield _event(chunk("", _finish_reason(model, streamed, max_tokens)))
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"
