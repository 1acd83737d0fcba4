"""``litgpt-clone serve``: the real LitServe server in a subprocess on a free loopback port, driven with the
official ``openai`` client (sync, async, streaming) and raw HTTP. Greedy answers must equal the generate module's
for the same prompts (alone, and with 32 clients decoded together), streamed text the non-streamed text, usage
the real token counts; bad and hostile requests must get OpenAI-shaped 4xx errors while the server keeps serving;
a client that goes away must have its generation cancelled. LitGPT's ``/predict`` must give the chat route's greedy
text for the same prompt. tests/test_serve_lora_eval.py covers LoRA adapters,
logprobs/echo and lm-eval's ``local-completions`` model against the server.

``running_server`` (shared with that file) starts the server in its own process group and kills the whole group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests
import torch

from litgpt_clone import LLM
from litgpt_clone.generate import generate
from test_generate import CHATML, CORPUS, PROMPTS, checkpoint, cli_error, models_root  # noqa: F401  (fixture)
from test_serve_engine import one_thread  # noqa: F401  (fixture: the references run on one thread)

KEY = "test-key-123"
NAME = "tiny/llama"
CONTEXT = 2040
"""The ``server`` fixture's --max_seq_length, below the tiny model's context of 2048."""
LIMIT = f"this server's limit of {CONTEXT} tokens (--max_seq_length; the model's context is 2048)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(checkpoint_dir: Path, log_path: Path, *args: str, env: dict | None = None):
    """(base url, log file) of ``litgpt-clone serve checkpoint_dir *args`` on a free port; the server's whole process
    group (uvicorn, inference workers, manager) is killed at the end."""
    port = free_port()
    cmd = [sys.executable, "-m", "litgpt_clone", "serve", str(checkpoint_dir), "--port", str(port), "--accelerator", "cpu", *args]
    log = open(log_path, "w+")
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}  # one thread: steady on a small shared machine
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(480):  # up to 120 s on a busy machine
            if proc.poll() is not None:
                break
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.25)
        else:
            pytest.fail("the server did not become healthy in 120 s")
        log.seek(0)
        assert proc.poll() is None, log.read()
        yield url, log
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        log.close()


def read_log(log) -> str:
    log.seek(0)
    return log.read()


@pytest.fixture(scope="module")
def server(models_root):
    """(base url, LLM on the same checkpoint, log) with a running server."""
    _, native = checkpoint(models_root, "llama", chat_template=CHATML)
    args = ["--max_batch_size", "32", "--max_new_tokens", "2000", "--max_seq_length", str(CONTEXT), "--model_name", NAME, "--stats_interval", "0.5"]
    with running_server(native, models_root / "serve-main.log", *args, env={"LITGPT_CLONE_API_KEY": KEY}) as (url, log):
        yield url, LLM.load(native, device="cpu"), log


def client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


def test_logs_url_and_lists_the_model(server):
    """The log names the URL and the limits a request meets: a client asking for more than --max_new_tokens gets that
    many tokens and finish_reason "length" (as LitGPT caps max_new_tokens), so the cap must be visible somewhere."""
    url, _, log = server
    assert f"Serving model '{NAME}'" in read_log(log) and f"at {url}/v1" in read_log(log)
    assert (f"litgpt-clone serve: replies of at most 2000 tokens (--max_new_tokens: a larger max_tokens is cut to it), prompt + reply"
            f" of at most {CONTEXT} tokens (--max_seq_length), 32 generations decoded together per worker (--max_batch_size)") in read_log(log)
    assert [m.id for m in client(url).models.list().data] == [NAME]


def test_chat_matches_llm_and_streams_the_same_text(server):
    url, llm, _ = server
    messages = [{"role": "user", "content": "Tell me a story"}, {"role": "assistant", "content": "Once upon a time"}, {"role": "user", "content": "More"}]
    expected = llm.chat(messages, max_new_tokens=12)
    ids = llm.encode_chat(messages)
    out = client(url).chat.completions.create(model=NAME, messages=messages, temperature=0, max_tokens=12)
    assert out.choices[0].message.content == expected and out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (len(ids), 12, len(ids) + 12)
    chunks = list(client(url).chat.completions.create(
        model=NAME, messages=messages, temperature=0, max_completion_tokens=12, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens == len(ids)
    # a stop string ends the text before it, with finish_reason "stop"
    stop = expected[len(expected) // 2 :][:3]
    out = client(url).chat.completions.create(model=NAME, messages=messages, temperature=0, max_tokens=12, stop=[stop])
    assert out.choices[0].message.content == expected[: expected.index(stop)] and out.choices[0].finish_reason == "stop"
    # n choices: greedy ones are all the same text
    out = client(url).chat.completions.create(model=NAME, messages=messages, temperature=0, max_tokens=12, n=3)
    assert [c.message.content for c in out.choices] == [expected] * 3 and out.usage.completion_tokens == 36


def test_continue_final_message_continues_the_assistants_message_as_transformers_renders_it(server):
    """vLLM's ``continue_final_message`` (prefill the assistant's reply) and ``add_generation_prompt`` (they were
    ignored: a new assistant turn always followed). The prompt is transformers' ``apply_chat_template(...,
    continue_final_message=True)``: cut right after the last message's text, its end-of-turn marker dropped."""
    from transformers import AutoTokenizer

    url, llm, _ = server
    hf = AutoTokenizer.from_pretrained(llm.checkpoint_dir)
    conversation = [{"role": "user", "content": "Tell me a story"}, {"role": "assistant", "content": "Once upon"}]
    for extra, kwargs in (({"continue_final_message": True}, dict(continue_final_message=True)),
                          ({"continue_final_message": True, "add_generation_prompt": False}, dict(continue_final_message=True)),
                          ({"add_generation_prompt": False}, dict(add_generation_prompt=False)),
                          ({}, dict(add_generation_prompt=True))):
        ids = hf.apply_chat_template(conversation, tokenize=True, **kwargs)["input_ids"]
        expected = llm.tokenizer.decode(generate(llm.model, [torch.tensor(ids)], 8, stop_ids=llm.tokenizer.stop_ids)[0])
        out = client(url).chat.completions.create(model=NAME, messages=conversation, temperature=0, max_tokens=8, extra_body=extra)
        assert (out.usage.prompt_tokens, out.choices[0].message.content) == (len(ids), expected), extra
    assert hf.apply_chat_template(conversation, tokenize=False, continue_final_message=True).endswith("assistant\nOnce upon")
    both = post(url, "/v1/chat/completions", {"messages": conversation, "continue_final_message": True, "add_generation_prompt": True}).json()["error"]
    assert both["param"] == "continue_final_message" and "cannot both be true" in both["message"]
    user_last = post(url, "/v1/chat/completions", {"messages": conversation[:1], "continue_final_message": True}).json()["error"]
    assert user_last["param"] == "messages" and user_last["message"].startswith("messages end with a 'user' message, but continue_final_message")


def test_text_parts_of_a_message_are_joined_with_newlines_as_vllm_joins_them(server):
    url, llm, _ = server
    parts = [{"type": "text", "text": "Summarize:"}, {"type": "text", "text": "The cat sat."}]
    joined = [{"role": "user", "content": "Summarize:\nThe cat sat."}]
    out = client(url).chat.completions.create(model=NAME, messages=[{"role": "user", "content": parts}], temperature=0, max_tokens=6)
    assert out.usage.prompt_tokens == len(llm.encode_chat(joined)) != len(llm.encode_chat([{"role": "user", "content": "Summarize:The cat sat."}]))
    assert out.choices[0].message.content == llm.chat(joined, max_new_tokens=6)


def test_completions_match_the_generate_module(server):
    url, llm, _ = server
    out = client(url).completions.create(model=NAME, prompt=PROMPTS, temperature=0, max_tokens=10)
    for prompt, choice in zip(PROMPTS, out.choices):
        tokens = generate(llm.model, [llm.encode(prompt)], 10, stop_ids=llm.tokenizer.stop_ids)[0]
        assert choice.text == llm.tokenizer.decode(tokens) == llm.generate(prompt, max_new_tokens=10)
        assert choice.finish_reason == ("length" if len(tokens) == 10 else "stop")
    assert out.usage.prompt_tokens == sum(len(llm.encode(p)) for p in PROMPTS) and out.usage.completion_tokens == 30
    streamed = client(url).completions.create(model=NAME, prompt=PROMPTS[1], temperature=0, max_tokens=10, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == out.choices[1].text
    # a prompt given as token ids is the same prompt
    by_ids = client(url).completions.create(model=NAME, prompt=llm.encode(PROMPTS[1]).tolist(), temperature=0, max_tokens=10)
    assert by_ids.choices[0].text == out.choices[1].text
    # sampling with a seed is reproducible
    a, b = (client(url).completions.create(model=NAME, prompt=PROMPTS[0], temperature=1.0, top_p=0.9, seed=7, max_tokens=12).choices[0].text for _ in range(2))
    assert a == b != out.choices[0].text


def test_32_concurrent_async_clients_get_the_greedy_answers(server):
    url, llm, _ = server
    words = CORPUS.split()
    prompts = [f"{PROMPTS[i % 3]} {' '.join(words[: i % 11])}" for i in range(32)]  # different lengths: ragged joins
    budgets = [4 + i % 9 for i in range(32)]
    expected = [llm.generate(p, max_new_tokens=m) for p, m in zip(prompts, budgets)]
    messages = [[{"role": "user", "content": p}] for p in prompts]
    expected_chat = [llm.chat(m, max_new_tokens=n) for m, n in zip(messages, budgets)]

    async def ask(api: openai.AsyncOpenAI, i: int) -> str:
        chat, stream = i % 4 >= 2, i % 2 == 1
        if chat:
            kw = dict(model=NAME, messages=messages[i], temperature=0, max_tokens=budgets[i])
            if stream:
                return "".join([c.choices[0].delta.content or "" async for c in await api.chat.completions.create(**kw, stream=True)])
            return (await api.chat.completions.create(**kw)).choices[0].message.content
        kw = dict(model=NAME, prompt=prompts[i], temperature=0, max_tokens=budgets[i])
        if stream:
            return "".join([c.choices[0].text async for c in await api.completions.create(**kw, stream=True)])
        return (await api.completions.create(**kw)).choices[0].text

    async def all_clients() -> list[str]:
        clients = [openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120) for _ in range(32)]
        return await asyncio.gather(*(ask(c, i) for i, c in enumerate(clients)))

    answers = asyncio.run(all_clients())
    assert answers == [expected_chat[i] if i % 4 >= 2 else expected[i] for i in range(32)]


def post(url: str, path: str, body, key: str | None = KEY) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(url + path, data=content, headers={**headers, "Content-Type": "application/json"}, timeout=60)


def test_bad_and_hostile_requests_get_openai_errors_and_the_server_keeps_serving(server):
    url, llm, log = server
    start = len(read_log(log))
    context = CONTEXT
    chat = lambda **kw: {"model": NAME, "messages": [{"role": "user", "content": "Hi"}], **kw}  # noqa: E731
    text = lambda **kw: {"model": NAME, "prompt": "Hi", **kw}  # noqa: E731
    C, T = "/v1/chat/completions", "/v1/completions"
    cases = [
        (C, "{not json", 400, None), (C, "[1, 2]", 400, None), (C, "[" * 100_000 + "]" * 100_000, 400, None),
        (C, '{"messages": [{"role": "user", "content": "Hi"}], "temperature": NaN}', 400, None),
        (C, '{"messages": [{"role": "user", "content": "Hi"}], "temperature": 1e999}', 400, "temperature"),
        (C, b"\xff\xfe\x00garbage", 400, None),
        (C, {"model": NAME}, 400, "messages"), (C, {"model": NAME, "messages": "Hi"}, 400, "messages"),
        (C, chat(messages=[{"role": "user", "content": 5}]), 400, "messages"), (C, chat(messages=[["user", "Hi"]]), 400, "messages"),
        (C, chat(model="gpt-4"), 404, "model"), (C, chat(model=["x"]), 404, "model"),
        (C, chat(temperature=3), 400, "temperature"), (C, chat(temperature=1e308), 400, "temperature"),
        (C, chat(temperature="hot"), 400, "temperature"), (C, chat(temperature=True), 400, "temperature"),
        (C, chat(top_p=0), 400, "top_p"), (C, chat(top_p=-1e308), 400, "top_p"),
        (C, chat(max_tokens=0), 400, "max_tokens"), (C, chat(max_tokens=-5), 400, "max_tokens"),
        (C, chat(max_tokens=10**30), 400, "max_tokens"), (C, chat(max_tokens=2.5), 400, "max_tokens"),
        (C, chat(max_completion_tokens="8"), 400, "max_completion_tokens"),
        (C, chat(n=0), 400, "n"), (C, chat(n=10**6), 400, "n"), (C, chat(seed="x"), 400, "seed"), (C, chat(seed=10**30), 400, "seed"),
        (C, chat(stop=5), 400, "stop"), (C, chat(stop=["a"] * 65), 400, "stop"), (C, chat(stream="yes"), 400, "stream"),
        (C, chat(stream_options=5), 400, "stream_options"), (C, chat(logprobs="yes"), 400, "logprobs"),
        (C, chat(logprobs=True, top_logprobs=100), 400, "top_logprobs"),
        (C, chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools"), (C, chat(tool_choice="required"), 400, "tool_choice"),
        (C, chat(response_format={"type": "json_object"}), 400, "response_format"), (T, text(logit_bias={"5": 100}), 400, "logit_bias"),
        # what OpenAI or vLLM would do and this server does not: refused, not ignored
        (T, text(suffix="END"), 400, "suffix"), (T, text(best_of=3), 400, "best_of"), (C, chat(presence_penalty=0.5), 400, "presence_penalty"),
        (C, chat(frequency_penalty=-1), 400, "frequency_penalty"), (C, chat(repetition_penalty=1.2), 400, "repetition_penalty"),
        (T, text(min_tokens=3), 400, "min_tokens"), (T, text(ignore_eos=True), 400, "ignore_eos"), (T, text(stop_token_ids=[1]), 400, "stop_token_ids"),
        (C, chat(guided_json={"type": "object"}), 400, "guided_json"), (C, chat(top_logprobs=2), 400, "top_logprobs"),
        (C, chat(top_k=-2), 400, "top_k"), (C, chat(top_k=2.5), 400, "top_k"), (T, text(min_p=1.5), 400, "min_p"),
        (C, chat(chat_template_kwargs=5), 400, "chat_template_kwargs"), (C, chat(chat_template_kwargs={"add_generation_prompt": False}), 400, "chat_template_kwargs"),
        (T, {"model": NAME}, 400, "prompt"), (T, text(prompt=5), 400, "prompt"), (T, text(prompt=[]), 400, "prompt"),
        (T, text(prompt=[[-1]]), 400, "prompt"), (T, text(prompt=[[10**9]]), 400, "prompt"), (T, text(prompt=[[1.5]]), 400, "prompt"),
        (T, text(prompt=["Hi"] * 1000), 400, "prompt"), (T, text(prompt=""), 400, "prompt"),
        (T, text(logprobs=-1), 400, "logprobs"), (T, text(logprobs=21), 400, "logprobs"), (T, text(echo="x"), 400, "echo"),
        (T, text(max_tokens=0), 400, "max_tokens"), (T, text(max_tokens=context), 400, "max_tokens"),
        (T, text(prompt="fox " * context), 400, "prompt"), (T, text(prompt="x" * 2**20), 400, "prompt"),  # a 1 MB prompt
        (T, "x" * (9 * 2**20), 413, None),  # a 9 MB body
        (T, '{"prompt": "\\ud800", "max_tokens": 2}', 400, None), (C, '{"messages": [{"role": "user", "content": "a\\udfffb"}]}', 400, None),
        (C, chat(chat_template_kwargs={"namespace": 1}), 400, "chat_template_kwargs"),  # the template's own functions
        # vLLM's extras that change the result and are not implemented here (they were ignored)
        (C, chat(chat_template="{{ 'X' }}"), 400, "chat_template"), (C, chat(echo=True), 400, "echo"),
        (T, text(include_stop_str_in_output=True, stop=["a"]), 400, "include_stop_str_in_output"), (T, text(allowed_token_ids=[5, 6]), 400, "allowed_token_ids"),
        (T, text(truncate_prompt_tokens=2), 400, "truncate_prompt_tokens"), (C, chat(skip_special_tokens=False), 400, "skip_special_tokens"),
        (T, text(return_tokens_as_token_ids=True), 400, "return_tokens_as_token_ids"), (C, chat(add_generation_prompt="no"), 400, "add_generation_prompt"),
        # 128 choices x 901 scored tokens x 21 entries: a reply of 2.4M log-probabilities (~70 MB of JSON) is refused
        (T, text(prompt=[[1] * 900] * 32, n=4, echo=True, logprobs=20, max_tokens=1), 400, "logprobs"),
        # JSON's integers have no bound: one past float's range was an OverflowError (a plain-text 500); template
        # variables nested 600 deep a RecursionError
        *[(C, chat(**{name: 10**400}), 400, name) for name in ("max_tokens", "n", "temperature", "top_p", "top_k", "min_p", "top_logprobs")],
        (T, text(logprobs=10**400), 400, "logprobs"), (T, text(max_tokens=-(10**400)), 400, "max_tokens"),
        (C, chat(chat_template_kwargs={"x": json.loads("[" * 600 + "]" * 600)}), 400, "chat_template_kwargs"),
    ]
    for path, body, status, param in cases:
        r = post(url, path, body)
        assert r.status_code == status, (str(body)[:200], r.text[:500])
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["param"] == param, (str(body)[:200], error)
    # the limit is the server's --max_seq_length, not the model's context; a prompt must leave room for a new token
    long = post(url, T, text(prompt="fox " * context)).json()["error"]
    assert long["code"] == "context_length_exceeded" and long["message"] == (
        f"the prompt has {len(llm.encode('fox ' * context))} tokens, more than {LIMIT}: shorten it"
        f" (at most {context - 1} tokens, or {context} with max_tokens 0 and echo to score it)")
    full = post(url, C, chat(messages=[{"role": "user", "content": "fox " * context}])).json()["error"]
    assert full["param"] == "messages" and full["message"].endswith(f"more than {LIMIT}: shorten it (at most {context - 1} tokens)")
    exact = post(url, T, text(prompt=[5] * context)).json()["error"]
    assert exact["param"] == "prompt" and exact["message"] == (
        f"the prompt has {context} tokens, all of {LIMIT}: leave room for a new token (at most {context - 1} tokens, or {context}"
        " with max_tokens 0 and echo to score it)")
    over = post(url, T, text(prompt=[5] * 60, max_tokens=context)).json()["error"]
    assert over["param"] == "max_tokens" and over["message"] == f"the prompt has 60 tokens and max_tokens is {context}: together more than {LIMIT}; use max_tokens <= {context - 60}"
    seed = post(url, T, text(seed=2**70)).json()["error"]
    assert seed["param"] == "seed" and seed["message"] == f"seed is {2**70}: use an integer in [-2**63, 2**64 - 1]"
    deep = post(url, C, chat(chat_template_kwargs={"x": json.loads("[" * 600 + "]" * 600)})).json()["error"]
    assert deep["message"] == "chat_template_kwargs nest lists and objects more than 64 levels deep: flatten them"
    assert "Traceback" not in read_log(log)[start:]  # (each 500 wrote one of ~3,000 lines)
    with pytest.raises(openai.BadRequestError):
        client(url).chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], temperature=-1)
    assert requests.get(url + "/health").status_code == 200
    assert client(url).completions.create(model=NAME, prompt="Hi", max_tokens=2, temperature=0).usage.completion_tokens == 2
    # the values that ask for nothing are what some clients always send: they pass
    nothing = dict(tools=[], tool_choice="none", response_format={"type": "text"}, logit_bias={}, presence_penalty=0, frequency_penalty=0.0,
                   best_of=1, top_k=-1, min_p=0, stop_token_ids=[], chat_template_kwargs={"enable_thinking": False}, user="me",
                   chat_template=None, include_stop_str_in_output=False, allowed_token_ids=None, truncate_prompt_tokens=None,
                   skip_special_tokens=True, return_tokens_as_token_ids=False)
    vllm_chat = dict(echo=False, add_generation_prompt=True, continue_final_message=False)
    assert post(url, C, chat(max_tokens=2, **nothing, **vllm_chat)).json()["usage"]["completion_tokens"] == 2
    assert post(url, T, text(max_tokens=2, suffix="", best_of=2, n=2)).json()["usage"]["completion_tokens"] == 4
    # an assistant turn without content (null in OpenAI's schema after tool calls) is an empty turn
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}, {"role": "user", "content": "More"}]
    empty = [{**m, "content": m["content"] or ""} for m in turns]
    out = post(url, C, chat(messages=turns, max_tokens=3, temperature=0)).json()
    assert out["usage"]["prompt_tokens"] == len(llm.encode_chat(empty)) and out["choices"][0]["message"]["content"] == llm.chat(empty, max_new_tokens=3)


def test_a_long_prompt_is_tokenized_without_stalling_the_server(server):
    """A prompt of a few MB takes seconds to tokenize; meanwhile the server answers others (tokenizers' encode holds
    the interpreter lock, so the server's event loop stalled for all of it when it ran on a thread)."""
    url, llm, _ = server
    with ThreadPoolExecutor(1) as pool:
        start = time.perf_counter()
        big = pool.submit(post, url, "/v1/completions", {"model": NAME, "prompt": "the quick fox " * 200_000})  # 2.8 MB
        time.sleep(0.3)  # the body is read and tokenizing starts
        waited = []
        while not big.done():
            t = time.perf_counter()
            assert requests.get(url + "/health", timeout=60).status_code == 200
            waited.append(time.perf_counter() - t)
        took = time.perf_counter() - start
        error = big.result().json()["error"]
    assert error["code"] == "context_length_exceeded" and f"more than {LIMIT}" in error["message"]
    assert len(waited) >= 3 and max(waited) < took / 3, (waited, took)


def test_top_k_and_min_p_sample_as_generate_does(server):
    """vLLM's top_k and min_p (they were ignored: top_k 1 at temperature 1 gave random text, not the greedy text)."""
    url, llm, _ = server
    greedy = client(url).completions.create(model=NAME, prompt=PROMPTS[0], max_tokens=12, temperature=0).choices[0].text
    for extra in ({"top_k": 1}, {"min_p": 1.0}):  # both keep only the most likely token
        texts = {client(url).completions.create(model=NAME, prompt=PROMPTS[0], max_tokens=12, temperature=1.5, seed=s, extra_body=extra).choices[0].text
                 for s in range(3)}
        assert texts == {greedy}, extra
    sampled = {client(url).completions.create(model=NAME, prompt=PROMPTS[0], max_tokens=12, temperature=1.5, seed=s).choices[0].text for s in range(3)}
    assert len(sampled) > 1  # (without them the same seeds give other texts)


def test_api_key_is_required(server):
    url, _, _ = server
    for key in (None, "wrong", KEY + "x"):
        r = post(url, "/v1/completions", {"model": NAME, "prompt": "Hi", "max_tokens": 2}, key=key)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert requests.get(url + "/v1/models").status_code == 401
    for path in ("/info", "/docs", "/openapi.json"):  # LitServe's pages (the device, the settings) need the key too
        assert requests.get(url + path).status_code == 401, path
        assert requests.get(url + path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200, path
    with pytest.raises(openai.AuthenticationError):
        client(url, key="wrong").models.list()
    assert requests.get(url + "/health").status_code == 200  # health needs no key


def test_predict_answers_litgpt_clients_with_the_chat_routes_greedy_text(server):
    """LitGPT's ``POST /predict``: the prompt is one user turn through the chat template, so greedy outputs equal
    /v1/chat/completions' (and the LLM's) for the same prompt; without max_new_tokens a reply has litgpt serve's 50
    tokens; unknown fields are ignored, as LitGPT does."""
    url, llm, _ = server
    for prompt, n in (("Tell me a story", 12), (PROMPTS[1], 7)):
        r = post(url, "/predict", {"prompt": prompt, "max_new_tokens": n, "temperature": 0, "top_k": 50, "top_p": 1.0, "model": "gpt-4", "n": 3, "stop": 5, "messages": 5})
        assert r.status_code == 200 and set(r.json()) == {"output"}, r.text
        messages = [{"role": "user", "content": prompt}]
        chat = client(url).chat.completions.create(model=NAME, messages=messages, temperature=0, max_tokens=n).choices[0].message.content
        assert r.json()["output"] == chat == llm.chat(messages, max_new_tokens=n) != ""
    default = post(url, "/predict", {"prompt": "Hi", "temperature": 0}).json()["output"]
    fifty = client(url).chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], temperature=0, max_tokens=50)
    assert (fifty.usage.completion_tokens, fifty.choices[0].finish_reason) == (50, "length")  # (not the server's cap of 2000)
    assert default == fifty.choices[0].message.content


def test_predict_streams_json_lines_and_a_client_that_goes_away_stops_it(server):
    url, _, log = server
    body = {"prompt": PROMPTS[0], "max_new_tokens": 12, "temperature": 0}
    whole = post(url, "/predict", body).json()["output"]
    auth = {"Authorization": f"Bearer {KEY}"}
    with requests.post(url + "/predict", json={**body, "stream": True}, headers=auth, stream=True, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.iter_lines(decode_unicode=True) if line]
    assert len(lines) > 1 and all(set(line) == {"output"} for line in lines)
    assert "".join(line["output"] for line in lines) == whole
    start = len(read_log(log))
    with requests.post(url + "/predict", json={**body, "max_new_tokens": 1900, "stream": True}, headers=auth, stream=True, timeout=60) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i == 2:
                break
    line = wait_for_line(log, "cancelled by its client", start)
    assert 3 <= int(line.split("after ")[1].split(" tokens")[0]) < 1900 and "0 generations running" in line, line


def test_predict_refuses_bad_input_and_requests_without_the_key(server):
    url, llm, _ = server
    context = CONTEXT
    cases = [
        ({}, "prompt", "prompt is required: a string"), ({"prompt": 5}, "prompt", "prompt is 5: use a string"),
        ({"prompt": ["Hi"]}, "prompt", "prompt is ['Hi']: use a string"),
        ({"prompt": "Hi", "max_new_tokens": -1}, "max_new_tokens", "max_new_tokens is -1: use an integer in [1, 1000000000]"),
        ({"prompt": "Hi", "max_new_tokens": 10**400}, "max_new_tokens", f"max_new_tokens is {str(10**400)[:40]}: use an integer in [1, 1000000000]"),
        ({"prompt": "Hi", "temperature": 10**400}, "temperature", f"temperature is {str(10**400)[:40]}: use a number in [0, 2]"),
        ({"prompt": "Hi", "top_p": 2}, "top_p", "top_p is 2: use a number in (0, 1]"),
        ({"prompt": "Hi", "temperature": "hot"}, "temperature", "temperature is 'hot': use a number in [0, 2]"),
        ({"prompt": "Hi", "top_k": -2}, "top_k", "top_k is -2: use an integer in [-1, 2147483648]"),
        ({"prompt": "Hi", "stream": "yes"}, "stream", "stream is 'yes': use true or false"),
        ({"prompt": "Hi", "max_new_tokens": context, "messages": 5}, "max_new_tokens", f"together more than {LIMIT}; use max_new_tokens <= "),
        ({"prompt": "fox " * context}, "prompt", f"more than {LIMIT}: shorten it (at most {context - 1} tokens)"),
        ("{not json", None, "the request body is not valid JSON"),
    ]
    for body, param, message in cases:
        r = post(url, "/predict", body)
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert error["param"] == param and message in error["message"] and "\n" not in error["message"], (body, error)
    for key in (None, "wrong"):
        r = post(url, "/predict", {"prompt": "Hi", "max_new_tokens": 2}, key=key)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert requests.get(url + "/health").status_code == 200
    assert post(url, "/predict", {"prompt": "Hi", "max_new_tokens": 3, "temperature": 0}).json()["output"] == llm.chat(
        [{"role": "user", "content": "Hi"}], max_new_tokens=3)


def wait_for_line(log, text: str, after: int, timeout: float = 20.0) -> str:
    """The first log line containing ``text`` written after character ``after``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in read_log(log)[after:].splitlines() if text in line]
        if lines:
            return lines[0]
        time.sleep(0.05)
    raise AssertionError(f"no log line with {text!r} in {timeout} s:\n{read_log(log)[after:][-3000:]}")


def test_a_client_that_goes_away_has_its_generation_cancelled(server):
    url, _, log = server
    body = {"model": NAME, "prompt": "Once upon a time", "max_tokens": 1900, "temperature": 0}
    # a stream closed after a few chunks
    start = len(read_log(log))
    with requests.post(url + "/v1/completions", json={**body, "stream": True}, headers={"Authorization": f"Bearer {KEY}"}, stream=True, timeout=60) as r:
        chunks = 0
        for line in r.iter_lines():
            chunks += line.startswith(b"data: {")
            if chunks == 3:
                break
    line = wait_for_line(log, "cancelled by its client", start)
    tokens = int(line.split("after ")[1].split(" tokens")[0])
    assert 3 <= tokens < 1900 and "0 generations running" in line, line
    # a client that disconnects while waiting for a whole (non-streamed) reply
    start = len(read_log(log))
    payload = json.dumps(body).encode()
    host, port = url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload
        )
        time.sleep(0.5)
    line = wait_for_line(log, "cancelled by its client", start)
    assert int(line.split("after ")[1].split(" tokens")[0]) < 1900 and "0 generations running" in line, line
    # the freed rows serve the next requests
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: client(url).completions.create(model=NAME, prompt="Hi", max_tokens=3, temperature=0), range(4)))
    assert all(r.usage.completion_tokens == 3 for r in replies)


STATS = re.compile(r"litgpt-clone serve: last [\d.]+ s: ([\d,]+) prompt tokens in (\d+) prefills .*?(\d+) decode steps .*?([\d,.]+) tokens/s generated")


def test_the_log_says_what_the_engine_did(server):
    """Every --stats_interval seconds of work, one line: prompt tokens, prefills, decode steps, tokens generated. Over
    a known workload the lines add up to the prompt and completion tokens the replies report."""
    url, _, log = server
    time.sleep(2.0)  # the lines of earlier tests' work are written
    start = len(read_log(log))
    replies = [
        client(url).completions.create(model=NAME, prompt=p, max_tokens=n, temperature=0, stop=None)
        for p, n in (("Once upon a time", 30), ("The river", 12), ("A llama", 20))
    ]
    time.sleep(2.0)  # an interval, and an idle loop's wait for requests (1 s)
    lines = [m for m in STATS.finditer(read_log(log)[start:])]
    assert lines, read_log(log)[start:][-2000:]
    prompt_tokens = sum(int(m.group(1).replace(",", "")) for m in lines)
    assert prompt_tokens == sum(r.usage.prompt_tokens for r in replies)
    assert sum(int(m.group(2)) for m in lines) == 3  # one prefill a request (they came one after the other)
    completion = sum(r.usage.completion_tokens for r in replies)
    # a decode step per token after the first (which the prefill samples); a stop token is sampled but not reported
    assert completion - 3 <= sum(int(m.group(3)) for m in lines) <= completion


def test_the_log_counts_the_generations_waiting_in_line(server):
    """A request for 40 choices on a server of 32 rows: 8 generations wait in LitServe's queue, and the log's stats
    lines and cancellation lines count them (they said "0 waiting": only generations the engine had taken counted)."""
    url, _, log = server
    start = len(read_log(log))
    body = {"model": NAME, "prompt": "Once upon a time", "max_tokens": 1900, "temperature": 0, "n": 40, "stream": True}
    with requests.post(url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, stream=True, timeout=60):
        wait_for_line(log, "; 32 running, 8 waiting", start)
    line = wait_for_line(log, "cancelled by its client", start)  # the client went away: all 40 are cancelled
    assert line.endswith("31 generations running, 8 waiting"), line
    wait_for_line(log, "0 generations running, 0 waiting", start)


@pytest.mark.parametrize("ctrl_c", [False, True])
def test_sigterm_or_ctrl_c_stops_every_process_of_the_server(models_root, tmp_path, ctrl_c):  # noqa: F811
    """``kill <pid>`` (SIGTERM, as service managers stop a service) shuts the server down as Ctrl-C does: the HTTP
    process, the managers and the model's worker all exit and the port is free again (LitServe alone left them running
    and answering). Ctrl-C (SIGINT to the terminal's whole process group) does so without a traceback (the worker
    printed one of 25 lines)."""
    _, native = checkpoint(models_root, "llama")
    with running_server(native, tmp_path / "serve.log", "--stats_interval", "0") as (url, log):
        group = os.getpgid(int(re.search(r"MainProcess\[(\d+)\]", read_log(log)).group(1)))
        members = [pid for pid in os.listdir("/proc") if pid.isdigit() and pgid_of(pid) == group]
        assert len(members) >= 4  # main, uvicorn, two managers, the inference worker
        if ctrl_c:
            os.killpg(group, signal.SIGINT)
        else:
            os.kill(group, signal.SIGTERM)  # the main process only (it leads the group)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(pgid_of(pid) == group for pid in members):
            time.sleep(0.25)
        assert not [pid for pid in members if pgid_of(pid) == group], read_log(log)[-3000:]
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/health", timeout=2)
        assert "Traceback" not in read_log(log), read_log(log)[-3000:]


def pgid_of(pid: str) -> int | None:
    """The process group of a running process (None once it has exited; a zombie counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[2])


def test_a_host_it_cannot_bind_or_a_taken_port_is_one_line_before_the_model_loads(models_root, capsys):  # noqa: F811
    """``--host`` takes what LitServe can bind (``localhost`` is 127.0.0.1; anything else was a traceback from inside
    LitServe), and a port another process listens on is named with the fix instead of uvicorn's "[Errno 98]" after
    the model had loaded."""
    _, native = checkpoint(models_root, "llama")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = [
            (["--host", "10.1.2.3", "--port", str(free_port())], "--host 10.1.2.3: the server listens on 127.0.0.1 (this machine only), 0.0.0.0"),
            (["--port", str(port)], f"cannot listen on 127.0.0.1 port {port}: Address already in use; pass a free --port"),
            (["--host", "localhost", "--port", str(port)], f"cannot listen on 127.0.0.1 port {port}"),
        ]
        capsys.readouterr()
        for args, message in cases:
            started = time.monotonic()
            assert message in cli_error(capsys, "serve", native, *args)
            assert time.monotonic() - started < 10  # no model loaded, no server started


def test_an_empty_api_key_is_one_line_before_the_model_loads(models_root, capsys, monkeypatch):  # noqa: F811
    """``--api_key "$KEY"`` with KEY unset (or an empty LITGPT_CLONE_API_KEY) served every request without a key, with
    no notice on 127.0.0.1: an empty key given on purpose is an error naming the two ways out."""
    _, native = checkpoint(models_root, "llama")
    capsys.readouterr()
    for key in ("", "  "):
        assert cli_error(capsys, "serve", native, "--port", free_port(), "--api_key", key) == (
            "error: --api_key is empty: give a key, or leave --api_key out to serve without one")
    monkeypatch.setenv("LITGPT_CLONE_API_KEY", "")
    assert cli_error(capsys, "serve", native, "--port", free_port()) == (
        "error: LITGPT_CLONE_API_KEY is empty: give a key, or unset LITGPT_CLONE_API_KEY to serve without one")


def test_an_accelerator_the_machine_lacks_is_one_line_before_the_model_loads(models_root, capsys):  # noqa: F811
    """``--accelerator cuda`` without a GPU (or one LitServe does not know) is one line naming the fix, where the
    workers used to fail to start behind two tracebacks (and told serve's user to pass --device, generate's flag)."""
    import torch

    _, native = checkpoint(models_root, "llama")
    cases = [(["--accelerator", "tpu"], "--accelerator tpu: use auto, cpu or cuda"), (["--quantize", "bnb.nf3"], "unknown quantize mode 'bnb.nf3': use one of bnb.nf4")]
    if not torch.cuda.is_available():
        cases.append((["--accelerator", "cuda"], "--accelerator cuda: no CUDA GPU is visible here: use --accelerator cpu (or auto)"))
    capsys.readouterr()
    for args, message in cases:
        assert message in cli_error(capsys, "serve", native, "--port", free_port(), *args)
