"""``litgpt-clone serve``: the real LitServe server in a subprocess on a free loopback port, driven with the
official ``openai`` client and raw HTTP. Greedy answers must equal ``LLM``'s for the same prompts, streamed text
the non-streamed text, and bad requests must get OpenAI-shaped 4xx errors while the server keeps serving."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from litgpt_clone import LLM
from litgpt_clone.generate import generate
from test_generate import CHATML, PROMPTS, checkpoint, models_root  # noqa: F401  (fixture)

KEY = "test-key-123"
NAME = "tiny/llama"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(models_root):
    """(base url, LLM on the same checkpoint) with a running server; the server's process group is killed at the end."""
    _, native = checkpoint(models_root, "llama", chat_template=CHATML)
    port = free_port()
    cmd = [sys.executable, "-m", "litgpt_clone", "serve", str(native), "--port", str(port), "--accelerator", "cpu",
           "--max_batch_size", "4", "--max_new_tokens", "64", "--model_name", NAME]
    env = {**os.environ, "LITGPT_CLONE_API_KEY": KEY}
    log = open(models_root / f"serve-{port}.log", "w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):  # up to 60 s
            if proc.poll() is not None:
                break
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.25)
        else:
            pytest.fail("the server did not become healthy in 60 s")
        log.seek(0)
        assert proc.poll() is None, log.read()
        yield url, LLM.load(native, device="cpu"), log
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        log.close()


def client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_logs_url_and_lists_the_model(server):
    url, _, log = server
    log.seek(0)
    assert f"Serving model '{NAME}'" in log.read() and url.endswith(str(int(url.rsplit(":", 1)[1])))
    models = client(url).models.list()
    assert [m.id for m in models.data] == [NAME]


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
    # sampling with a seed is reproducible
    a, b = (client(url).completions.create(model=NAME, prompt=PROMPTS[0], temperature=1.0, top_p=0.9, seed=7, max_tokens=12).choices[0].text for _ in range(2))
    assert a == b != out.choices[0].text


def test_eight_concurrent_clients(server):
    url, llm, _ = server
    prompts = [PROMPTS[i % 3] + " " * (i // 3) for i in range(8)]  # different lengths: left-padded batches
    expected = [llm.generate(p, max_new_tokens=8) for p in prompts]

    def ask(prompt: str) -> str:
        return client(url).completions.create(model=NAME, prompt=prompt, temperature=0, max_tokens=8).choices[0].text

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(ask, prompts)) == expected


def post(url: str, path: str, body, key: str | None = KEY) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(url + path, data=content, headers={**headers, "Content-Type": "application/json"}, timeout=60)


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server):
    url, llm, _ = server
    context = llm.model.max_seq_length
    chat = lambda **kw: {"model": NAME, "messages": [{"role": "user", "content": "Hi"}], **kw}  # noqa: E731
    cases = [
        ("/v1/chat/completions", "{not json", 400, None),
        ("/v1/chat/completions", {"model": NAME}, 400, "messages"),
        ("/v1/completions", {"model": NAME}, 400, "prompt"),
        ("/v1/chat/completions", chat(model="gpt-4"), 404, "model"),
        ("/v1/chat/completions", chat(temperature=3), 400, "temperature"),
        ("/v1/chat/completions", chat(top_p=0), 400, "top_p"),
        ("/v1/chat/completions", chat(max_tokens=0), 400, "max_tokens"),
        ("/v1/chat/completions", chat(n=2), 400, "n"),
        ("/v1/completions", {"model": NAME, "prompt": "fox " * context}, 400, "prompt"),
        ("/v1/completions", {"model": NAME, "prompt": "Hi", "max_tokens": context}, 400, "max_tokens"),
    ]
    for path, body, status, param in cases:
        r = post(url, path, body)
        assert r.status_code == status, (body, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["param"] == param
    long = post(url, "/v1/completions", {"model": NAME, "prompt": "fox " * context}).json()["error"]["message"]
    assert f"context is {context} tokens" in long and "prompt has" in long  # both numbers
    with pytest.raises(openai.BadRequestError):
        client(url).chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], temperature=-1)
    assert requests.get(url + "/health").status_code == 200
    assert client(url).completions.create(model=NAME, prompt="Hi", max_tokens=2, temperature=0).usage.completion_tokens == 2


def test_api_key_is_required(server):
    url, _, _ = server
    for key in (None, "wrong"):
        r = post(url, "/v1/completions", {"model": NAME, "prompt": "Hi", "max_tokens": 2}, key=key)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert requests.get(url + "/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        client(url, key="wrong").models.list()
