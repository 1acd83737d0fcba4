"""The HTTP side of ``litgpt-clone serve``: OpenAI's ``/v1/chat/completions``, ``/v1/completions`` and
``/v1/models`` as a LitServe spec.

Each request is checked here (JSON, fields, ranges, model name, prompt length against the context), turned into
token ids (chat messages through the checkpoint's chat template) and put on LitServe's queue as one job per
prompt; the worker (``litgpt_clone.serve.api``) streams text events back, which become one JSON response or
server-sent events (``data: {...}`` chunks, then ``data: [DONE]``). Every error is OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, with a 4xx status for a bad request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections import deque
from functools import cached_property
from typing import AsyncIterator, Optional

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem


class RequestError(Exception):
    """A request the server refuses, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None, type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def number(body: dict, name: str, default, low: float, high: float, integer: bool = False, low_open: bool = False):
    """``body[name]`` checked to be a number in [low, high] ((low, high] with ``low_open``), else ``default``."""
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < low or value > high or (low_open and value == low):
        bounds = f"{'(' if low_open else '['}{low}, {high}]"
        raise RequestError(400, f"{name} is {value!r}: use {'an integer' if integer else 'a number'} in {bounds}", param=name, code="invalid_value")
    return value


def stop_strings(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise RequestError(400, "stop must be a string or a list of at most 4 strings", param="stop", code="invalid_value")
    return stop


def message_text(content) -> str:
    """A message's content: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise RequestError(400, "a message's content must be a string or a list of text parts", param="messages", code="invalid_value")


class OpenAIServeSpec(LitSpec):
    """OpenAI-compatible endpoints for one model, answered by ``GenerationAPI`` workers."""

    def __init__(self, checkpoint_dir: str, model_name: str, max_new_tokens: int, api_key: Optional[str] = None) -> None:
        super().__init__()
        self.api_path = "/v1/completions"  # LitServe's queue for this API; the routes are the endpoints below
        self.checkpoint_dir, self.model_name, self.max_new_tokens, self.api_key = checkpoint_dir, model_name, max_new_tokens, api_key
        self.created = int(time.time())
        self.add_endpoint("/v1/chat/completions", self.chat_completions, ["POST"])
        self.add_endpoint("/v1/completions", self.completions, ["POST"])
        self.add_endpoint("/v1/models", self.models, ["GET"])

    @property
    def stream(self) -> bool:
        return True

    def __getstate__(self) -> dict:  # the tokenizer is loaded again in each process that needs it
        state = super().__getstate__()
        state.pop("tokenizer", None)
        return state

    @cached_property
    def tokenizer(self):
        from litgpt_clone.tokenizer import Tokenizer

        return Tokenizer(self.checkpoint_dir)

    @cached_property
    def context(self) -> int:
        from litgpt_clone.config import Config

        return Config.from_checkpoint(self.checkpoint_dir).block_size

    def decode_request(self, request, context_kwargs=None):
        return request

    def encode_response(self, output, context_kwargs=None):
        yield from output

    # ------------------------------------------------------------------ checks
    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise RequestError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'", code="invalid_api_key", type="authentication_error")

    async def read_body(self, request: Request) -> dict:
        self.authorize(request)
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(400, f"the request body is not valid JSON ({err})", code="invalid_json") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object", code="invalid_json")
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise RequestError(404, f"the model {model!r} does not exist: this server serves {self.model_name!r}", param="model", code="model_not_found")
        number(body, "n", 1, 1, 1, integer=True)  # one choice per prompt
        if not isinstance(body.get("stream", False), bool):
            raise RequestError(400, "stream must be true or false", param="stream", code="invalid_value")
        return body

    def job(self, body: dict, ids: list[int]) -> dict:
        """A worker job for prompt ``ids``, the prompt and token budget checked against the context."""
        n = len(ids)
        if n == 0:
            raise RequestError(400, "the prompt is empty: give some text", param="prompt", code="invalid_value")
        if n >= self.context:
            raise RequestError(
                400, f"the prompt has {n} tokens but the model's context is {self.context} tokens: shorten the prompt",
                param="messages" if "messages" in body else "prompt", code="context_length_exceeded",
            )
        name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        asked = number(body, name, None, 1, 10**9, integer=True)
        if asked is not None and n + asked > self.context:
            raise RequestError(
                400, f"the prompt has {n} tokens and {name} is {asked}: together more than the model's context of {self.context}"
                f" tokens; use {name} <= {self.context - n}", param=name, code="context_length_exceeded",
            )
        budget = min(asked or self.max_new_tokens, self.max_new_tokens, self.context - n)
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise RequestError(400, f"seed is {seed!r}: use an integer", param="seed", code="invalid_value")
        return dict(
            ids=ids, max_new_tokens=budget, temperature=float(number(body, "temperature", 1.0, 0, 2)),
            top_p=float(number(body, "top_p", 1.0, 0, 1, low_open=True)), stop=stop_strings(body), seed=seed,
        )

    # ------------------------------------------------------------------ the worker
    async def events(self, job: dict) -> AsyncIterator[dict]:
        """Put ``job`` on LitServe's queue and yield the worker's events for it."""
        uid = uuid.uuid4()
        queue, ready = deque(), asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(response_queue=queue, event=ready)
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), job))
        async for data, status in self.data_streamer(queue, ready, send_status=True):
            if status == LitAPIStatus.ERROR:
                raise RequestError(500, f"generation failed: {getattr(data, 'detail', None) or data}", type="server_error", code="internal_error")
            if status == LitAPIStatus.OK and data:
                event = json.loads(data)
                if event:
                    yield event

    async def collect(self, job: dict) -> tuple[str, str, int]:
        text, finish, count = "", "length", 0
        async for event in self.events(job):
            text += event.get("text", "")
            if "finish_reason" in event:
                finish, count = event["finish_reason"], event["completion_tokens"]
        return text, finish, count

    def envelope(self, kind: str) -> dict:
        return {"id": f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex[:24]}", "object": kind, "created": int(time.time()), "model": self.model_name}

    def sse(self, chunks: AsyncIterator[dict]) -> StreamingResponse:
        async def lines():
            try:
                async for chunk in chunks:
                    yield f"data: {json.dumps(chunk)}\n\n"
            except RequestError as err:
                yield f"data: {json.dumps(err.body())}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(lines(), media_type="text/event-stream")

    @staticmethod
    def usage(prompt_tokens: int, completion_tokens: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}

    # ------------------------------------------------------------------ endpoints
    async def chat_completions(self, request: Request):
        try:
            body = await self.read_body(request)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise RequestError(400, "messages is required: a non-empty list of {role, content}", param="messages", code="missing_required_parameter")
            if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in messages):
                raise RequestError(400, "every message needs a role and a content", param="messages", code="invalid_value")
            from litgpt_clone.chat_template import ChatTemplateError, render_for_tokenizer

            plain = [{"role": m["role"], "content": message_text(m["content"])} for m in messages]
            try:
                prompt = render_for_tokenizer(self.tokenizer, plain)
            except ChatTemplateError as err:
                raise RequestError(400, f"the chat template refused the messages: {err}", param="messages", code="invalid_value") from None
            ids = self.tokenizer.encode(prompt, bos=False).tolist()
            job = self.job(body, ids)
        except RequestError as err:
            return err.response()
        head = self.envelope("chat.completion.chunk" if body.get("stream") else "chat.completion")
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

            async def chunks():
                yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
                count = 0
                async for event in self.events(job):
                    finish = event.get("finish_reason")
                    count = event.get("completion_tokens", count)
                    if event.get("text") or finish:
                        delta = {"content": event["text"]} if event.get("text") else {}
                        yield {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                if include_usage:
                    yield {**head, "choices": [], "usage": self.usage(len(ids), count)}

            return self.sse(chunks())
        try:
            text, finish, count = await self.collect(job)
        except RequestError as err:
            return err.response()
        return {
            **head, "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None}],
            "usage": self.usage(len(ids), count),
        }

    async def completions(self, request: Request):
        try:
            body = await self.read_body(request)
            prompt = body.get("prompt")
            prompts = [prompt] if isinstance(prompt, str) else prompt
            if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
                raise RequestError(400, "prompt is required: a string or a non-empty list of strings", param="prompt", code="missing_required_parameter")
            if body.get("logprobs") is not None or body.get("echo"):
                raise RequestError(400, "logprobs and echo are not supported by this server yet", param="logprobs", code="unsupported_parameter")
            ids = [self.tokenizer.encode(p).tolist() if p else [] for p in prompts]
            jobs = [self.job(body, i) for i in ids]
        except RequestError as err:
            return err.response()
        prompt_tokens = sum(len(i) for i in ids)
        head = self.envelope("text_completion")
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

            async def chunks():
                total = 0
                for index, job in enumerate(jobs):
                    async for event in self.events(job):
                        total += event.get("completion_tokens", 0)
                        if event.get("text") or event.get("finish_reason"):
                            yield {**head, "choices": [{"index": index, "text": event.get("text", ""), "finish_reason": event.get("finish_reason"), "logprobs": None}]}
                if include_usage:
                    yield {**head, "choices": [], "usage": self.usage(prompt_tokens, total)}

            return self.sse(chunks())
        try:
            results = await asyncio.gather(*(self.collect(job) for job in jobs))
        except RequestError as err:
            return err.response()
        choices = [{"index": i, "text": text, "finish_reason": finish, "logprobs": None} for i, (text, finish, _) in enumerate(results)]
        return {**head, "choices": choices, "usage": self.usage(prompt_tokens, sum(r[2] for r in results))}

    async def models(self, request: Request):
        try:
            self.authorize(request)
        except RequestError as err:
            return err.response()
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": self.created, "owned_by": "litgpt-clone"}]}
