"""The HTTP side of ``litgpt-clone serve``: OpenAI's ``/v1/chat/completions``, ``/v1/completions`` and
``/v1/models`` as a LitServe spec, and LitGPT's ``/predict`` (what ``litgpt serve`` answers) for its clients.

Each request is checked here (size, JSON, fields, types, ranges, model name, prompt length against the context),
turned into token ids (chat messages through the checkpoint's chat template) and put on LitServe's queue as one job
per choice; the worker (serve/api.py) streams events back, which become one JSON response or server-sent events
(``data: {...}`` chunks, then ``data: [DONE]``). Every error is OpenAI's shape, ``{"error": {"message", "type",
"param", "code"}}``, with a 4xx status for a bad request. A client that goes away (closes its stream, or
disconnects while waiting for a whole reply) has its generations cancelled, which frees their rows.

``/v1/chat/completions`` also takes vLLM's ``add_generation_prompt`` and ``continue_final_message`` (continue the last,
assistant, message rather than start a new turn, as transformers' ``apply_chat_template`` renders it).
``/v1/completions`` also takes token-id prompts, ``logprobs`` (the log-probability of each token and of the top
alternatives) and ``echo`` (the prompt's tokens first, scored too; ``max_tokens: 0`` then only scores the prompt),
which is what lm-eval's ``local-completions`` model sends to compute log-likelihoods.

``/predict`` takes ``{"prompt": text}`` (and LitGPT's ``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``) and
answers ``{"output": text}``; with ``"stream": true``, one ``{"output": piece}`` JSON object per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from typing import AsyncIterator, Optional, Sequence

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from litserve.specs.base import LitSpec
from litserve.utils import ResponseBufferItem

from litgpt_clone.serve.api import EVENTS

MAX_BODY_BYTES = 8 * 2**20
MAX_CHOICES = 128  # prompts x n in one request
MAX_LOGPROBS = 20
MAX_SCORES = 2**20  # log-probabilities in one reply (~30 MB of JSON): lm-eval's requests score a few thousand
MAX_STOPS = 64  # OpenAI takes 4; lm-eval sends a task's `until` strings and the EOS text as `stop` (vLLM: no limit)
MAX_STOP_CHARS = 1000
DISCONNECT_POLL_S = 0.25
LITGPT_SAMPLING = {"temperature": 0.8, "top_k": 50, "top_p": 1.0}
"""``/predict``'s sampling defaults: ``litgpt serve``'s (LitGPT 0.5)."""
LITGPT_MAX_NEW_TOKENS = 50
"""``/predict``'s reply length when the request sets no ``max_new_tokens`` (``litgpt serve``'s default)."""


class RequestError(Exception):
    """A request the server refuses, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None, type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


# ---------------------------------------------------------------------------------------------- field checks
def invalid(name: str, message: str) -> RequestError:
    return RequestError(400, f"{name} {message}", param=name, code="invalid_value")


def number(body: dict, name: str, default, low: float, high: float, integer: bool = False, low_open: bool = False):
    """``body[name]`` checked to be a number in [low, high] ((low, high] with ``low_open``), else ``default``. The range
    check alone keeps out infinities and NaN, and compares an integer as it is (JSON's integers have no bound: one past
    float's range, such as 1e400 written out in digits, has no float, and ``math.isfinite`` raised on it)."""
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high or (low_open and value == low):
        bounds = f"{'(' if low_open else '['}{low}, {high}]"
        raise invalid(name, f"is {value!r:.40}: use {'an integer' if integer else 'a number'} in {bounds}")
    return value


def flag(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(name, f"is {value!r:.40}: use true or false")
    return value


def request_bos(tokenizer, body: dict, chat: bool) -> Optional[bool]:
    """The ``bos`` to encode a request's prompt text with, by vLLM's ``add_special_tokens``: on /v1/completions (default
    true) the tokenizer's own special tokens (its BOS, where it adds one), or none; on /v1/chat/completions (default
    false) what the chat template writes, or the tokenizer's special tokens on top of it."""
    from litgpt_clone.chat_template import chat_bos

    if flag(body, "add_special_tokens", default=not chat):
        return None
    return chat_bos(tokenizer) if chat else False


def stop_strings(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > MAX_STOPS or not all(isinstance(s, str) and len(s) <= MAX_STOP_CHARS for s in stop):
        raise invalid("stop", f"must be a string or a list of at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters")
    return stop


NEUTRAL = {  # fields of OpenAI's API and vLLM's extras this server does not implement, with the values that ask for nothing
    "suffix": ("", None), "presence_penalty": (0, None), "frequency_penalty": (0, None), "repetition_penalty": (1, None),
    "min_tokens": (0, None), "ignore_eos": (False, None), "stop_token_ids": ([], None), "bad_words": ([], None),
    "guided_json": (None,), "guided_regex": (None,), "guided_choice": (None,), "guided_grammar": (None,),
    "structured_outputs": (None,), "prompt_logprobs": (None, 0), "use_beam_search": (False, None),
    "chat_template": (None,), "include_stop_str_in_output": (False, None), "allowed_token_ids": (None,),
    "truncate_prompt_tokens": (None,), "skip_special_tokens": (True, None), "return_tokens_as_token_ids": (False, None),
}


def refuse_unsupported(body: dict) -> None:
    """400 for a request that asks for what this server does not do (tools, a JSON or schema response format, token
    biases, penalties, a suffix, guided decoding, a request's own chat template, ...), rather than a reply the client
    would take for what it asked; the values that ask for nothing (``tools: []``, ``tool_choice: "none"``,
    ``response_format: {"type": "text"}``, ``logit_bias: {}``, ``presence_penalty: 0``, ``best_of`` equal to ``n``)
    pass."""
    for name in ("tools", "functions"):
        if body.get(name):
            raise invalid(name, "are not supported by this server (no tool or function calling): leave them out")
    if body.get("tool_choice") not in (None, "none", "auto"):
        raise invalid("tool_choice", "is not supported by this server (no tool calling): leave it out")
    if body.get("response_format") not in (None, {"type": "text"}):
        raise invalid("response_format", "is not supported by this server (no JSON mode or schemas): leave it out, or use {\"type\": \"text\"}")
    if body.get("logit_bias"):
        raise invalid("logit_bias", "is not supported by this server: leave it out")
    for name, neutral in NEUTRAL.items():
        if name in body and body[name] not in neutral:
            raise invalid(name, f"is {body[name]!r:.40}: not supported by this server; leave it out")
    if body.get("best_of") not in (None, 1, body.get("n", 1)):
        raise invalid("best_of", "is not supported by this server (it returns every choice it generates): leave it out, or use n")


RESERVED_VARIABLES = (
    "messages", "add_generation_prompt", "bos_token", "eos_token", "style", "tokenizer", "template",
    "raise_exception", "strftime_now", "dict", "namespace",
)
"""Template variables the server sets itself (and the template's functions), which ``chat_template_kwargs`` cannot."""


def message_text(content) -> str:
    """A message's content: a string, or a list of ``{"type": "text", "text": ...}`` parts, joined with newlines
    (as vLLM joins them)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        return "\n".join(p["text"] for p in content)
    raise invalid("messages", "content must be a string or a list of text parts")


CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
"""Marks the end of the last message while its conversation is rendered for ``continue_final_message`` (transformers'
own marker)."""


def continue_final(render, messages: list[dict]) -> str:
    """``render(messages)`` cut right after the last message's content, as transformers'
    ``apply_chat_template(continue_final_message=True)`` cuts it: the end-of-turn marker after it is dropped, so the
    model continues that message. (Where the template trims the content's trailing space, the cut is trimmed too.)"""
    text = render([*messages[:-1], {**messages[-1], "content": messages[-1]["content"] + CONTINUE_TAG}])
    at = text.rfind(CONTINUE_TAG.strip())
    if at < 0:
        raise invalid("messages", "cannot be continued: the chat template leaves out part of the last message; set continue_final_message false")
    return text[:at] if text.startswith(CONTINUE_TAG, at) else text[:at].rstrip()


def reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def bytes_text(tokenizer, token_id: int) -> str:
    """OpenAI's ``bytes:\\xe2\\x80`` form of a token."""
    return "bytes:" + "".join(f"\\x{b:02x}" for b in tokenizer.token_bytes(token_id))


def token_text(tokenizer, token_id: int) -> str:
    """A token's own text; for the bytes of part of a character, OpenAI's ``bytes:\\xe2\\x80`` form."""
    try:
        tokenizer.token_bytes(token_id).decode()
    except UnicodeDecodeError:
        return bytes_text(tokenizer, token_id)
    return tokenizer.decode([token_id], skip_special_tokens=False)


class TokenTexts:
    """Each token's share of a growing decoded text, token by token (the ``tokens`` and ``text_offset`` of
    logprobs). The token that completes a multi-byte character adds the whole character; one before it adds no
    text and is shown in OpenAI's ``bytes:\\x..`` form (incremental detokenization over a short window, so the cost
    stays linear)."""

    def __init__(self, tokenizer, offset: int = 0) -> None:
        self.tokenizer, self.offset = tokenizer, offset
        self.ids: list[int] = []
        self.prefix = self.read = 0

    def add(self, ids: Sequence[int]) -> tuple[list[str], list[int]]:
        """The text of each token (its own decoding where it adds none) and where each starts in the text."""
        tokens, offsets = [], []
        for token in ids:
            self.ids.append(token)
            before = self.tokenizer.decode(self.ids[self.prefix : self.read])
            after = self.tokenizer.decode(self.ids[self.prefix :])
            piece = ""
            if len(after) > len(before) and not after.endswith("\ufffd"):
                piece = after[len(before) :]
                self.prefix, self.read = self.read, len(self.ids)
            tokens.append(piece or token_text(self.tokenizer, token))
            offsets.append(self.offset)
            self.offset += len(piece)
        return tokens, offsets


@dataclass
class Choice:
    """What the events of one generation add up to."""

    text: str = ""
    finish: Optional[str] = None
    count: int = 0
    tokens: list = field(default_factory=list)  # logprobs: token strings, their log-probabilities, top alternatives, offsets
    logprobs: list = field(default_factory=list)
    top: list = field(default_factory=list)
    offsets: list = field(default_factory=list)


class RequireKey:
    """ASGI middleware: with an API key set, every request but ``/health`` must carry ``Authorization: Bearer <key>``
    (the /v1 routes, /predict, and LitServe's /info, /docs and /openapi.json, which tell the device and settings)."""

    def __init__(self, app, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            given = next((value for key, value in scope["headers"] if key == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected):
                error = RequestError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'", code="invalid_api_key", type="authentication_error")
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


class OpenAIServeSpec(LitSpec):
    """OpenAI-compatible endpoints for one model (and its LoRA adapters), answered by ``GenerationAPI`` workers.

    ``context``: the longest prompt + reply accepted (the workers' ``max_seq_length``). ``cancelled``: a dict shared with the workers (a ``multiprocessing`` manager's) where the uids of abandoned
    generations are written.
    """

    def __init__(
        self, checkpoint_dir: str, model_name: str, context: int, max_new_tokens: int, adapter_names: Sequence[str] = (),
        cancelled=None,
    ) -> None:
        super().__init__()
        self.api_path = "/v1/completions"  # LitServe's queue for this API; the routes are the endpoints below
        self.checkpoint_dir, self.model_name, self.context = checkpoint_dir, model_name, context
        self.max_new_tokens = max_new_tokens
        self.model_ids = {model_name: 0, **{name: i for i, name in enumerate(adapter_names, start=1)}}
        self.cancelled = cancelled if cancelled is not None else {}
        self.created = int(time.time())
        self.add_endpoint("/v1/chat/completions", self.chat_completions, ["POST"])
        self.add_endpoint("/v1/completions", self.completions, ["POST"])
        self.add_endpoint("/v1/models", self.models, ["GET"])
        self.add_endpoint("/predict", self.predict, ["POST"])

    @property
    def stream(self) -> bool:
        return True

    def __getstate__(self) -> dict:  # per-process state is made again where it is needed
        state = super().__getstate__()
        for name in ("tokenizer", "streams", "demux"):
            state.pop(name, None)
        return state

    @cached_property
    def tokenizer(self):
        from litgpt_clone.tokenizer import Tokenizer

        return Tokenizer(self.checkpoint_dir)

    @cached_property
    def config(self):
        from litgpt_clone.config import Config

        return Config.from_checkpoint(self.checkpoint_dir)

    def decode_request(self, request, context_kwargs=None):
        return request

    def encode_response(self, output, context_kwargs=None):
        yield from output

    # ------------------------------------------------------------------ requests in
    async def read_body(self, request: Request) -> dict:
        declared = request.headers.get("content-length", "")
        too_big = RequestError(413, f"the request body is larger than {MAX_BODY_BYTES // 2**20} MB", code="request_too_large")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise too_big
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                raise too_big
        try:
            body = json.loads(bytes(raw), parse_constant=reject_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as err:
            raise RequestError(400, f"the request body is not valid JSON ({str(err)[:200]})", code="invalid_json") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object", code="invalid_json")
        try:  # JSON's "\ud800" escapes parse into lone surrogates, which no tokenizer takes
            json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise RequestError(400, "the request body holds a lone UTF-16 surrogate (an escape such as \\ud800 without its pair): send valid Unicode text", code="invalid_json") from None
        flag(body, "stream")
        if body.get("stream_options") is not None and not isinstance(body["stream_options"], dict):
            raise invalid("stream_options", "must be an object such as {\"include_usage\": true}")
        return body

    def adapter(self, body: dict) -> int:
        """The adapter the request's ``model`` names (0: the base model)."""
        model = body.get("model")
        if model is None:
            return 0
        if not isinstance(model, str) or model not in self.model_ids:
            names = ", ".join(repr(m) for m in self.model_ids)
            raise RequestError(404, f"the model {model!r:.100} does not exist: this server serves {names}", param="model", code="model_not_found")
        return self.model_ids[model]

    @cached_property
    def long_texts(self) -> asyncio.Lock:
        return asyncio.Lock()

    async def encode(self, text: str, bos: Optional[bool] = None) -> list[int]:
        if len(text) <= 20_000:
            return self.tokenizer.encode(text, bos).tolist()
        # A long text is tokenized on a thread by encode_batch, which (unlike encode) lets go of the interpreter lock,
        # so the other streams keep flowing; one at a time, since a text of a few MB takes ~1 GB while it is encoded.
        async with self.long_texts:
            return (await asyncio.to_thread(self.tokenizer.encode_batch, [text], bos))[0]

    @cached_property
    def limit(self) -> str:
        """What ``context`` is, for errors: the model's context, or this server's --max_seq_length below it."""
        model = self.config.block_size
        if self.context < model:
            return f"this server's limit of {self.context} tokens (--max_seq_length; the model's context is {model})"
        return f"the model's context of {self.context} tokens"

    def budget(self, body: dict, n: int, echo: Optional[bool] = None, name: Optional[str] = None, default: Optional[int] = None) -> int:
        """New tokens for a prompt of ``n`` tokens: the request's ``name`` field (default: max_tokens, or
        max_completion_tokens), else ``default`` (default: the server's --max_new_tokens), capped by the server's
        --max_new_tokens and the context. ``echo``: None on the routes without echo."""
        param = "messages" if "messages" in body else "prompt"
        if n == 0:
            raise RequestError(400, "the prompt is empty: give some text", param=param, code="invalid_value")
        name = name or ("max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens")
        asked = number(body, name, None, 0 if echo else 1, 10**9, integer=True)
        if n > self.context or (n == self.context and asked != 0):  # (a prompt the size of the context can be scored)
            fits = f"at most {self.context - 1} tokens" + (f", or {self.context} with max_tokens 0 and echo to score it" if echo is not None else "")
            why = f"more than {self.limit}: shorten it" if n > self.context else f"all of {self.limit}: leave room for a new token"
            raise RequestError(400, f"the prompt has {n} tokens, {why} ({fits})", param=param, code="context_length_exceeded")
        if asked is not None and n + asked > self.context:
            raise RequestError(
                400, f"the prompt has {n} tokens and {name} is {asked}: together more than {self.limit}; use {name} <= {self.context - n}",
                param=name, code="context_length_exceeded",
            )
        return min((default or self.max_new_tokens) if asked is None else asked, self.max_new_tokens, self.context - n)

    def jobs(self, body: dict, prompts: list[list[int]], logprobs: Optional[int] = None, echo: Optional[bool] = None) -> list[dict]:
        """One worker job per choice: ``n`` per prompt. ``echo``: None on the routes without echo."""
        refuse_unsupported(body)
        n = number(body, "n", 1, 1, MAX_CHOICES, integer=True)
        if n * len(prompts) > MAX_CHOICES:
            raise invalid("n", f"times the number of prompts is {n * len(prompts)}: ask for at most {MAX_CHOICES} choices in one request")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**64):
            raise invalid("seed", f"is {seed!r:.40}: use an integer in [-2**63, 2**64 - 1]")
        top_k = number(body, "top_k", -1, -1, 2**31, integer=True)  # vLLM's extra: -1 (or 0) keeps every token
        settings = dict(
            temperature=float(number(body, "temperature", 1.0, 0, 2)), top_p=float(number(body, "top_p", 1.0, 0, 1, low_open=True)),
            top_k=top_k if top_k > 0 else None, min_p=float(number(body, "min_p", 0.0, 0, 1)),
            stop=stop_strings(body), logprobs=logprobs, prompt_logprobs=bool(echo) and logprobs is not None, adapter=self.adapter(body),
        )
        jobs = []
        for ids in prompts:
            new = self.budget(body, len(ids), echo)
            jobs += [dict(settings, ids=ids, max_new_tokens=new, seed=None if seed is None else seed + j) for j in range(n)]
        if logprobs is not None:  # each scored token is a JSON entry with its alternatives: bound the reply's size
            scores = sum(((len(j["ids"]) if echo else 0) + j["max_new_tokens"]) * (logprobs + 1) for j in jobs)
            if scores > MAX_SCORES:
                raise invalid(
                    "logprobs", f"asks for {scores:,} log-probabilities (choices x scored tokens x (alternatives + 1)), more than"
                    f" {MAX_SCORES:,} in one request: lower n, logprobs or max_tokens, or split the prompts over requests",
                )
        return jobs

    # ------------------------------------------------------------------ the workers
    @cached_property
    def streams(self) -> dict[str, tuple[asyncio.Queue, int]]:
        """uid -> (the queue of the request that waits for its events, the choice it is)."""
        return {}

    def start_demux(self) -> None:
        """Once per HTTP process: a task that hands the events of each worker message to the requests they belong to."""
        if getattr(self, "demux", None) is not None:
            return
        item = self.response_buffer[EVENTS] = ResponseBufferItem(event=asyncio.Event(), response_queue=deque())

        async def route() -> None:
            while True:
                await item.event.wait()
                item.event.clear()
                while item.response_queue:
                    events, _ = item.response_queue.popleft()
                    for uid, event in events:
                        target = self.streams.get(uid)
                        if target is not None:
                            target[0].put_nowait((target[1], event))

        self.demux = asyncio.get_running_loop().create_task(route())

    async def run(self, jobs: list[dict]) -> AsyncIterator[tuple[int, dict]]:
        """The events of ``jobs`` as ``(job index, event)``, as they come. Generations still running when this
        stops (the client went away, or an error) are cancelled."""
        self.start_demux()
        queue: asyncio.Queue = asyncio.Queue()
        uids = [uuid.uuid4().hex for _ in jobs]
        running = set(range(len(jobs)))
        try:
            for i, (uid, job) in enumerate(zip(uids, jobs)):
                self.streams[uid] = (queue, i)
                self.request_queue.put((self.response_queue_id, uid, time.monotonic(), job))
            while running:
                i, event = await queue.get()
                if "error" in event:
                    running.discard(i)
                    raise RequestError(500, f"generation failed: {event['error']}", type="server_error", code="internal_error")
                if "finish_reason" in event:
                    running.discard(i)
                yield i, event
        finally:
            for uid in uids:
                self.streams.pop(uid, None)
            for i in running:
                self.cancelled[uids[i]] = time.time()

    def add_event(self, choice: Choice, event: dict, scoring: Optional[TokenTexts]) -> None:
        """Fold one event into ``choice``; with ``scoring``, the tokens' texts and log-probabilities too."""
        choice.text += event.get("text", "")
        if "finish_reason" in event:
            choice.finish, choice.count = event["finish_reason"], event["completion_tokens"]
        if scoring is not None and "ids" in event:
            tokens, offsets = scoring.add(event["ids"])
            choice.tokens += tokens
            choice.offsets += offsets
            choice.logprobs += event["logprobs"]
            choice.top += [self.top_dict(*entry) for entry in zip(event["top"], event["ids"], event["logprobs"], tokens)]

    def top_dict(self, pairs: list, token: int, logprob: float, text: str) -> dict:
        """{token text: logprob} of the top alternatives and of the chosen ``token`` (OpenAI always includes it), most
        likely first. The chosen token's key is ``text``, its string in ``tokens``, so that ``top[tokens[i]]`` is its
        log-probability (``token_text`` shows a token that completes a character as bytes, ``tokens`` as the whole
        character); another token with that text goes under its bytes form. Alternatives with the same text keep the
        highest logprob."""
        top: dict[str, float] = {}
        for i, lp in sorted([*((i, lp) for i, lp in pairs if i != token), (token, logprob)], key=lambda pair: -pair[1]):
            if i == token:
                top[text] = lp
            else:
                key = token_text(self.tokenizer, i)
                top.setdefault(bytes_text(self.tokenizer, i) if key == text else key, lp)
        return top

    # ------------------------------------------------------------------ responses out
    def envelope(self, kind: str, body: dict) -> dict:
        """The fields every response (and chunk) starts with; ``model`` is the one the request named (an adapter's
        name when it asked for one)."""
        model = body.get("model") if body.get("model") in self.model_ids else self.model_name
        return {"id": f"{'chatcmpl' if kind.startswith('chat') else 'cmpl'}-{uuid.uuid4().hex[:24]}", "object": kind, "created": int(time.time()), "model": model}

    @staticmethod
    def sse(chunks: AsyncIterator[dict]) -> StreamingResponse:
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

    # ------------------------------------------------------------------ /v1/chat/completions
    async def chat_completions(self, request: Request):
        try:
            body = await self.read_body(request)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise RequestError(400, "messages is required: a non-empty list of {role, content}", param="messages", code="missing_required_parameter")
            if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in messages):
                raise invalid("messages", "must be objects with a role and a content")
            from litgpt_clone.chat_template import MAX_NESTING, ChatTemplateError, plain_data, render_for_tokenizer

            # an assistant turn may have no content (OpenAI's schema: null when it made tool calls)
            plain = [{"role": m["role"], "content": "" if m["content"] is None and m["role"] == "assistant" else message_text(m["content"])} for m in messages]
            if self.tokenizer.chat_template is None and (len(plain) > 1 or plain[0]["role"] != "user"):
                raise invalid("messages", f"must be one user message: {self.model_name} has no chat template, so its prompt is"
                              " that message's text alone (send a whole conversation as text to /v1/completions)")
            variables = body.get("chat_template_kwargs") or {}  # vLLM's extra, e.g. {"enable_thinking": false}
            if not isinstance(variables, dict) or not all(isinstance(k, str) and k not in RESERVED_VARIABLES for k in variables):
                raise invalid("chat_template_kwargs", "must be an object of template variables, e.g. {\"enable_thinking\": false}"
                              f" (not {', '.join(RESERVED_VARIABLES)}; add_generation_prompt is a field of the request)")
            try:
                variables = plain_data(variables)
            except ChatTemplateError:
                raise invalid("chat_template_kwargs", f"nest lists and objects more than {MAX_NESTING} levels deep: flatten them") from None
            if body.get("echo") not in (None, False):
                raise invalid("echo", "is not supported on /v1/chat/completions: leave it out (/v1/completions echoes a prompt)")
            # vLLM's extras: end with a new assistant turn (the default), or continue the last (assistant) message
            keep_going = flag(body, "continue_final_message")
            if keep_going and body.get("add_generation_prompt") is True:
                raise invalid("continue_final_message", "and add_generation_prompt cannot both be true: the reply continues the last"
                              " message rather than starting a new turn; set add_generation_prompt false")
            add_generation_prompt = flag(body, "add_generation_prompt", default=not keep_going)
            if keep_going and plain[-1]["role"] != "assistant":
                raise invalid("messages", f"end with a {plain[-1]['role']!r:.20} message, but continue_final_message continues the"
                              " last message as the assistant's: end with an assistant message, or leave continue_final_message out")

            def render(turns: list[dict]) -> str:
                return render_for_tokenizer(self.tokenizer, turns, add_generation_prompt=add_generation_prompt, **variables)

            try:
                prompt = continue_final(render, plain) if keep_going else render(plain)
            except ChatTemplateError as err:
                raise invalid("messages", f"were refused by the chat template: {err}") from None
            logprobs = flag(body, "logprobs")
            top = number(body, "top_logprobs", 0, 0, MAX_LOGPROBS, integer=True)
            if body.get("top_logprobs") and not logprobs:  # (0 asks for nothing: some clients always send it)
                raise invalid("top_logprobs", "needs \"logprobs\": true")
            ids = await self.encode(prompt, bos=request_bos(self.tokenizer, body, chat=True))
            jobs = self.jobs(body, [ids], logprobs=top if logprobs else None)
        except RequestError as err:
            return err.response()
        stream = body.get("stream")
        head = self.envelope("chat.completion.chunk" if stream else "chat.completion", body)
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

            async def chunks():
                for i in range(len(jobs)):
                    yield {**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]}
                total = 0
                async for i, event in self.run(jobs):
                    total += event.get("completion_tokens", 0)
                    if event.get("text") or event.get("finish_reason") or "ids" in event:
                        delta = {"content": event["text"]} if event.get("text") else {}
                        scores = {"content": self.chat_logprobs(event["ids"], event["logprobs"], event["top"])} if "ids" in event else None
                        yield {**head, "choices": [{"index": i, "delta": delta, "logprobs": scores, "finish_reason": event.get("finish_reason")}]}
                if include_usage:
                    yield {**head, "choices": [], "usage": self.usage(len(ids), total)}

            return self.sse(chunks())
        choices = [Choice() for _ in jobs]
        raw: list[list] = [[] for _ in jobs]
        try:
            async def consume() -> None:
                async for i, event in self.run(jobs):
                    self.add_event(choices[i], event, None)
                    if "ids" in event:
                        raw[i].append(event)

            await self.until_disconnected(request, consume())
        except RequestError as err:
            return err.response()
        out = []
        for i, (choice, events) in enumerate(zip(choices, raw)):
            scores = None
            if logprobs:
                scores = {"content": [s for e in events for s in self.chat_logprobs(e["ids"], e["logprobs"], e["top"])]}
            out.append({"index": i, "message": {"role": "assistant", "content": choice.text}, "logprobs": scores, "finish_reason": choice.finish})
        return {**head, "choices": out, "usage": self.usage(len(ids), sum(c.count for c in choices))}

    def chat_logprobs(self, ids: list[int], logprobs: list[float], top: list) -> list[dict]:
        """Chat's logprobs entries: ``{"token", "logprob", "bytes", "top_logprobs": [...]}`` per token."""

        def entry(token_id: int, logprob: float) -> dict:
            return {"token": token_text(self.tokenizer, token_id), "logprob": logprob, "bytes": list(self.tokenizer.token_bytes(token_id))}

        return [{**entry(t, lp), "top_logprobs": [entry(i, v) for i, v in pairs]} for t, lp, pairs in zip(ids, logprobs, top)]

    @staticmethod
    async def until_disconnected(request: Request, work) -> None:
        """Await ``work``; cancel it (and so its generations) if the client disconnects meanwhile."""
        task = asyncio.ensure_future(work)
        while not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if not task.done() and await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise RequestError(499, "the client closed the connection", code="client_disconnected")
        task.result()

    # ------------------------------------------------------------------ /v1/completions
    async def prompts(self, body: dict) -> tuple[list[list[int]], list[Optional[str]]]:
        """The prompts as token ids, and as given when given as text: a string, a list of strings, a list of
        token ids or a list of such lists."""
        prompt = body.get("prompt")
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(isinstance(p, int) and not isinstance(p, bool) for p in prompt)):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise RequestError(400, "prompt is required: a string, a list of strings or a list of token-id lists", param="prompt", code="missing_required_parameter")
        if len(prompt) > MAX_CHOICES:
            raise invalid("prompt", f"has {len(prompt)} prompts: send at most {MAX_CHOICES} in one request")
        ids, texts = [], []
        vocab, bos = self.config.vocab_size, request_bos(self.tokenizer, body, chat=False)
        for p in prompt:
            if isinstance(p, str):
                ids.append(await self.encode(p, bos) if p else [])
                texts.append(p)
            elif isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in p):
                ids.append(list(p))
                texts.append(None)
            else:
                raise invalid("prompt", f"must hold strings or lists of token ids in [0, {vocab})")
        return ids, texts

    async def completions(self, request: Request):
        try:
            body = await self.read_body(request)
            ids, texts = await self.prompts(body)
            logprobs = number(body, "logprobs", None, 0, MAX_LOGPROBS, integer=True)
            echo = flag(body, "echo")
            jobs = self.jobs(body, ids, logprobs=logprobs, echo=echo)
        except RequestError as err:
            return err.response()
        n = len(jobs) // len(ids)
        prompt_of = [i // n for i in range(len(jobs))]
        echoed = [texts[p] if texts[p] is not None else self.tokenizer.decode(ids[p]) for p in prompt_of] if echo else None
        prompt_tokens = sum(len(i) for i in ids)
        head = self.envelope("text_completion", body)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

            async def chunks():
                scorers = [TokenTexts(self.tokenizer, len(echoed[i]) if echo else 0) for i in range(len(jobs))]
                if echo and logprobs is None:  # the prompts first (with logprobs, each comes with its scores)
                    for i in range(len(jobs)):
                        yield {**head, "choices": [{"index": i, "text": echoed[i], "logprobs": None, "finish_reason": None}]}
                total = 0
                async for i, event in self.run(jobs):
                    total += event.get("completion_tokens", 0)
                    text, scores = event.get("text", ""), None
                    if logprobs is not None:
                        choice = Choice()
                        if "prompt_logprobs" in event:
                            text = echoed[i] + text
                            self.add_prompt(choice, event, ids[prompt_of[i]])
                        self.add_event(choice, event, scorers[i])
                        scores = self.legacy_logprobs(choice) if choice.tokens else None
                    if text or scores or event.get("finish_reason"):
                        yield {**head, "choices": [{"index": i, "text": text, "logprobs": scores, "finish_reason": event.get("finish_reason")}]}
                if include_usage:
                    yield {**head, "choices": [], "usage": self.usage(prompt_tokens, total)}

            return self.sse(chunks())
        choices = [Choice() for _ in jobs]
        scorers = [TokenTexts(self.tokenizer, len(echoed[i]) if echo else 0) for i in range(len(jobs))] if logprobs is not None else None
        try:
            async def consume() -> None:
                async for i, event in self.run(jobs):
                    if "prompt_logprobs" in event:
                        self.add_prompt(choices[i], event, ids[prompt_of[i]])
                    self.add_event(choices[i], event, scorers[i] if scorers else None)

            await self.until_disconnected(request, consume())
        except RequestError as err:
            return err.response()
        out = [
            {"index": i, "text": (echoed[i] if echo else "") + c.text, "finish_reason": c.finish, "logprobs": self.legacy_logprobs(c) if logprobs is not None else None}
            for i, c in enumerate(choices)
        ]
        return {**head, "choices": out, "usage": self.usage(prompt_tokens, sum(c.count for c in choices))}

    def add_prompt(self, choice: Choice, event: dict, ids: list[int]) -> None:
        """The echoed prompt's tokens, log-probabilities (None for the first) and top alternatives."""
        tokens, offsets = TokenTexts(self.tokenizer).add(ids)
        choice.tokens += tokens
        choice.offsets += offsets
        choice.logprobs += event["prompt_logprobs"]
        entries = zip(event["prompt_top"], ids, event["prompt_logprobs"], tokens)
        choice.top += [None if pairs is None else self.top_dict(pairs, token, lp, text) for pairs, token, lp, text in entries]

    @staticmethod
    def legacy_logprobs(choice: Choice) -> dict:
        return {"tokens": choice.tokens, "token_logprobs": choice.logprobs, "top_logprobs": choice.top, "text_offset": choice.offsets}

    # ------------------------------------------------------------------ /predict (LitGPT's route)
    async def predict(self, request: Request):
        """``litgpt serve``'s route, so that a LitGPT client script works unchanged: ``{"prompt": ...}`` ->
        ``{"output": text}``; with ``"stream": true`` a body of ``{"output": piece}`` JSON lines (what LitGPT's
        streaming clients read with ``response.iter_lines()``). Errors are the /v1 routes' (OpenAI's shape)."""
        try:
            body = await self.read_body(request)
            jobs = await self.predict_jobs(body)
        except RequestError as err:
            return err.response()
        if body.get("stream"):
            async def lines():  # a client that goes away closes this generator, and self.run cancels its generation
                try:
                    async for _, event in self.run(jobs):
                        if event.get("text"):
                            yield json.dumps({"output": event["text"]}) + "\n"
                except RequestError as err:
                    yield json.dumps(err.body()) + "\n"

            return StreamingResponse(lines(), media_type="application/x-ndjson")
        choice = Choice()
        try:
            async def consume() -> None:
                async for _, event in self.run(jobs):
                    self.add_event(choice, event, None)

            await self.until_disconnected(request, consume())
        except RequestError as err:
            return err.response()
        return {"output": choice.text}

    async def predict_jobs(self, body: dict) -> list[dict]:
        """The one job of a /predict request. Its prompt is a single user turn rendered exactly as
        /v1/chat/completions renders ``messages=[{"role": "user", "content": prompt}]`` (LitGPT's generate applies
        the model's prompt style), so greedy replies of the two routes are the same text. Sampling takes LitGPT's
        field names and ``litgpt serve``'s defaults, checked as the /v1 routes check them; other fields are
        ignored, as LitGPT ignores them."""
        prompt = body.get("prompt")
        if prompt is None:
            raise RequestError(400, "prompt is required: a string", param="prompt", code="missing_required_parameter")
        if not isinstance(prompt, str):
            raise invalid("prompt", f"is {prompt!r:.40}: use a string")
        from litgpt_clone.chat_template import ChatTemplateError, chat_bos, render_for_tokenizer

        try:
            text = render_for_tokenizer(self.tokenizer, [{"role": "user", "content": prompt}])
        except ChatTemplateError as err:
            raise invalid("prompt", f"was refused by the chat template: {err}") from None
        ids = await self.encode(text, bos=chat_bos(self.tokenizer))
        settings = {name: default if body.get(name) is None else body[name] for name, default in LITGPT_SAMPLING.items()}
        asked = {"prompt": prompt, "max_new_tokens": body.get("max_new_tokens")}  # (errors then name these fields)
        settings["max_tokens"] = self.budget(asked, len(ids), name="max_new_tokens", default=LITGPT_MAX_NEW_TOKENS)
        return self.jobs(settings, [ids])

    # ------------------------------------------------------------------ /v1/models
    async def models(self, request: Request):
        data = [{"id": name, "object": "model", "created": self.created, "owned_by": "litgpt-clone"} for name in self.model_ids]
        for entry in data[1:]:
            entry["parent"] = self.model_name  # a LoRA adapter over the base model
        return {"object": "list", "data": data}
