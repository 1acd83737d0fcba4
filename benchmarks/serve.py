"""Serving throughput and latency: ``litgpt-clone serve`` vs ``litgpt serve`` (LitGPT 0.5.13) on the same tiny model.

Both servers are started as their users start them, each in its own process group, on the same random-weight
Llama (``forward_backward.py``'s tiny-llama shape, with a byte-level BPE tokenizer trained here on ASCII text and a
ChatML chat template), on CPU, with ``OMP_NUM_THREADS=1`` (``--threads``):

- ours: ``python -m litgpt_clone serve <native dir> --max_batch_size 64 --max_new_tokens 2N`` (continuous batching);
- LitGPT: ``litgpt serve <litgpt dir> --openai_spec true --stream true --temperature 0 --max_new_tokens 2N`` (one
  request at a time; it binds 0.0.0.0). Its checkpoint holds the same weights (``lit_model.pth``): before serving,
  its ``GPT`` must give our logits on a probe (max abs difference printed).

For each number of concurrent clients (1, 8, 32, 64), every client is an ``aiohttp`` session that sends streaming
``/v1/chat/completions`` requests one after the other (greedy, ``max_tokens``/``max_completion_tokens`` around N, a
different prompt each) until the level's requests are done. Measured per request: time to first token (TTFT: from
sending to the first chunk with text) and output tokens (ours: ``usage.completion_tokens`` from
``stream_options.include_usage``; LitGPT: its text chunks, one per generated token). Requests ask for between half
and 1.5x ``--max-tokens`` new tokens, so that the clients do not all finish (and send again) at the same step. Per level: aggregate output
tokens/s = all output tokens / wall time of the level, p50 and p95 TTFT. Our levels take seconds, so each runs
``--rounds`` times (the median round's tokens/s and the TTFT percentiles of all rounds' requests are reported);
LitGPT's take up to a minute and run ``--litgpt-rounds`` times. Prints a table and the ratios the issue asks for
(ours/LitGPT aggregate throughput; our p50 TTFT at 64 clients over our single-client p50).

    .venv/bin/python benchmarks/serve.py                      # about 4-6 min on 2 cores
    .venv/bin/python benchmarks/serve.py --clients 1 8 --servers ours
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import forward_backward as fb  # noqa: E402  (the shared configs, the litgpt venv location, quiet env)

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOPICS = "llamas rivers compilers gardens trains volcanoes chess bread owls glaciers radios tides".split()

LITGPT_PREPARE = r"""
import json, shutil, sys, torch
from pathlib import Path
from safetensors.torch import load_file
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.utils import save_config

native, out, s = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
cfg = Config(
    name="bench-tiny-llama", block_size=s["T"], vocab_size=s["vocab_size"], padded_vocab_size=s["vocab_size"],
    n_layer=s["n_layer"], n_embd=s["n_embd"], n_head=s["n_head"], n_query_groups=s["n_query_groups"],
    intermediate_size=s["intermediate_size"], norm_class_name="RMSNorm", norm_eps=s["norm_eps"], mlp_class_name="LLaMAMLP",
    bias=False, parallel_residual=False, rotary_percentage=1.0, rope_base=int(s["rope_base"]),
)
model = GPT(cfg)
model.load_state_dict(load_file(str(native / "lit_model.safetensors")), strict=True)
probe = torch.load(out / "probe.pt", weights_only=True)
with torch.no_grad():
    diff = (model(probe["ids"]) - probe["logits"]).abs().max().item()
out.mkdir(parents=True, exist_ok=True)
torch.save(model.state_dict(), out / "lit_model.pth")
save_config(cfg, out)
for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
    shutil.copy(native / name, out / name)
print("@@DIFF@@", diff)
"""


# ----------------------------------------------------------------------------- the model
def training_text() -> str:
    """ASCII text to train the tokenizer on (so every token decodes to whole characters): stdlib sources."""
    import textwrap

    root = Path(textwrap.__file__).parent
    parts = [(root / name).read_text(errors="ignore") for name in ("textwrap.py", "argparse.py", "json/decoder.py", "string.py", "this.py")]
    return "".join(ch for ch in "".join(parts) if ord(ch) < 128)


def build_model(work: Path, spec: dict, litgpt_python: str | None) -> tuple[Path, Path | None, float | None]:
    """(our native checkpoint, LitGPT checkpoint or None, LitGPT's max logit difference from ours)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    from litgpt_clone.checkpoints.convert import convert_hf_checkpoint
    from litgpt_clone.model import GPT

    hf = work / "hf"
    hf.mkdir(parents=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([training_text()], trainers.BpeTrainer(vocab_size=spec["vocab_size"], special_tokens=SPECIALS, show_progress=False))
    tok.save(str(hf / "tokenizer.json"))
    (hf / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "bos_token": None, "chat_template": CHATML}))
    vocab = tok.get_vocab_size()
    spec["vocab_size"] = vocab
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=spec["n_embd"], intermediate_size=spec["intermediate_size"], num_hidden_layers=spec["n_layer"],
        num_attention_heads=spec["n_head"], num_key_value_heads=spec["n_query_groups"], max_position_embeddings=spec["T"],
        rms_norm_eps=spec["norm_eps"], rope_theta=spec["rope_base"], tie_word_embeddings=False,
        eos_token_id=tok.token_to_id("<|endoftext|>"), bos_token_id=None, pad_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(hf)
    (hf / "generation_config.json").write_text(json.dumps({"eos_token_id": tok.token_to_id("<|endoftext|>")}))
    native = work / "native"
    convert_hf_checkpoint(hf, native)
    if litgpt_python is None:
        return native, None, None
    lit = work / "litgpt"
    lit.mkdir()
    ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.save({"ids": ids, "logits": GPT.from_checkpoint(native).eval()(ids)}, lit / "probe.pt")
    proc = subprocess.run([litgpt_python, "-c", LITGPT_PREPARE, str(native), str(lit), json.dumps(spec)], capture_output=True, text=True, env={**os.environ, **fb.QUIET_ENV})
    diff = next((float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("@@DIFF@@")), None)
    if proc.returncode != 0 or diff is None:
        raise RuntimeError(f"preparing the LitGPT checkpoint failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return native, lit, diff


# ----------------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd: list[str], port: int, log: Path, env: dict, timeout: float = 300.0) -> subprocess.Popen:
    """Start ``cmd`` in its own process group and wait until ``/health`` answers 200."""
    import requests

    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=str(fb.REPO_ROOT))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.25)
    stop_server(proc)
    raise RuntimeError(f"{cmd[0]} did not become healthy in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


# ----------------------------------------------------------------------------- clients
async def one_request(session, url: str, body: dict, usage: bool) -> tuple[float | None, int]:
    """(TTFT in s, or None for a reply without text; output tokens) of one streaming (chat) completion."""
    start = time.perf_counter()
    first, chunks, tokens = None, 0, None
    async with session.post(url, json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:500]}")
        async for raw in response.content:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                if choice.get("text") or (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter()
    if usage and tokens is None:
        raise RuntimeError("a stream ended without usage")
    return (None if first is None else first - start), tokens if usage else chunks


def chat_request(max_tokens: int, usage: bool):
    """The request of client c's r-th turn: a streaming chat completion of a different prompt and length each."""

    def make(c: int, r: int) -> tuple[str, dict]:
        topic = TOPICS[(c * 5 + r) % len(TOPICS)]
        new = max_tokens // 2 + (c * 7 + r * 13) % (max_tokens + 1)  # lengths vary (mean max_tokens), as real replies do
        body = dict(
            model="bench", messages=[{"role": "user", "content": f"Client {c}, request {r}: write a short story about {topic}."}],
            temperature=0, stream=True, max_tokens=new, max_completion_tokens=new,
        )
        if usage:
            body["stream_options"] = {"include_usage": True}
        return "/v1/chat/completions", body

    return make


async def level(url: str, clients: int, per_client: int, make_request, usage: bool) -> dict:
    """``clients`` concurrent clients, each sending ``per_client`` streaming requests (``make_request(c, r)`` gives
    (path, body)) one after the other."""
    import aiohttp

    async def client(c: int) -> list[tuple[float, int]]:
        out = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as session:
            for r in range(per_client):
                path, body = make_request(c, r)
                out.append(await one_request(session, url + path, body, usage))
        return out

    start = time.perf_counter()
    results = [x for per in await asyncio.gather(*(client(c) for c in range(clients))) for x in per]
    wall = time.perf_counter() - start
    tokens = sum(n for _, n in results)
    # a reply that ended at once (an end-of-text token first) has no time to first token
    return dict(clients=clients, requests=len(results), tokens=tokens, wall_s=wall, ttfts=[t for t, _ in results if t is not None])


def measure(url: str, clients: int, per_client: int, make_request, usage: bool, rounds: int) -> dict:
    """``level`` ``rounds`` times: the median round's aggregate tokens/s and the TTFT percentiles of all requests."""
    runs = [asyncio.run(level(url, clients, per_client, make_request, usage)) for _ in range(rounds)]
    ttfts = sorted(t for r in runs for t in r["ttfts"])
    return dict(
        clients=clients, rounds=rounds, requests=sum(r["requests"] for r in runs), tokens=sum(r["tokens"] for r in runs),
        wall_s=sum(r["wall_s"] for r in runs), tokens_per_s=statistics.median(r["tokens"] / r["wall_s"] for r in runs),
        ttft_p50=statistics.median(ttfts), ttft_p95=ttfts[min(len(ttfts) - 1, math.ceil(0.95 * len(ttfts)) - 1)],
    )


def print_table(results: list[dict]) -> None:
    print("| server | clients | rounds | requests | output tokens | wall s | aggregate tok/s | TTFT p50 ms | TTFT p95 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['server']} | {r['clients']} | {r['rounds']} | {r['requests']} | {r['tokens']} | {r['wall_s']:.1f} | {r['tokens_per_s']:.1f} | "
              f"{r['ttft_p50'] * 1e3:.1f} | {r['ttft_p95'] * 1e3:.1f} |")
    print()


def report(name: str, r: dict) -> None:
    print(f"  {name:6s} {r['clients']:3d} clients x {r['rounds']} rounds: {r['requests']:4d} requests, {r['tokens']:6d} tokens in {r['wall_s']:6.1f} s,"
          f" {r['tokens_per_s']:8.1f} tok/s (median round), TTFT p50 {r['ttft_p50'] * 1e3:7.1f} ms p95 {r['ttft_p95'] * 1e3:7.1f} ms", flush=True)


# ----------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32, 64])
    p.add_argument("--servers", nargs="+", default=["ours", "litgpt"], choices=["ours", "litgpt"])
    p.add_argument("--max-tokens", type=int, default=64, help="mean new tokens per request (each asks for between half and 1.5x)")
    p.add_argument("--requests-per-client", type=int, default=4)
    p.add_argument("--min-requests", type=int, default=32, help="at least this many requests per level (more per client at low concurrency)")
    p.add_argument("--rounds", type=int, default=3, help="repetitions of each level for our server (a level takes seconds)")
    p.add_argument("--litgpt-rounds", type=int, default=1, help="repetitions of each level for litgpt (its 64-client level takes about a minute)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the servers")
    p.add_argument("--litgpt-python", default=str(fb.DEFAULT_LITGPT_PYTHON))
    p.add_argument("--json", default=None, help="also write the raw results to this file")
    args = p.parse_args()

    servers = list(args.servers)
    notes = []
    litgpt_bin = Path(args.litgpt_python).parent / "litgpt"
    if "litgpt" in servers and not litgpt_bin.exists():
        servers.remove("litgpt")
        notes.append(f"litgpt skipped: no {litgpt_bin} (run benchmarks/setup_litgpt_venv.sh)")
    spec = dict(fb.CONFIGS["tiny-llama"], T=512)
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    t0 = time.perf_counter()
    try:
        native, lit, diff = build_model(work, spec, args.litgpt_python if "litgpt" in servers else None)
        import torch

        print("# Serve benchmark: litgpt-clone serve vs litgpt serve")
        print(f"date: {_dt.datetime.now().isoformat(timespec='seconds')}; torch {torch.__version__}, python {platform.python_version()}, "
              f"os.cpu_count()={os.cpu_count()}, OMP_NUM_THREADS={args.threads}; model: {spec['desc']} (vocab {spec['vocab_size']}, "
              f"context {spec['T']}), fp32 CPU; greedy, {args.max_tokens // 2}-{args.max_tokens * 3 // 2} new tokens per request (mean {args.max_tokens}), streaming chat completions")
        if diff is not None:
            print(f"LitGPT checkpoint: same weights, max |logit difference| from ours on a probe = {diff:.2e}")
        for line in notes:
            print(line)
        env = {**os.environ, **fb.QUIET_ENV, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(fb.REPO_ROOT)}
        commands = {
            "ours": lambda port: [sys.executable, "-m", "litgpt_clone", "serve", str(native), "--port", str(port), "--accelerator", "cpu",
                                  "--max_batch_size", str(max(args.clients)), "--max_new_tokens", str(2 * args.max_tokens), "--model_name", "bench"],
            "litgpt": lambda port: [str(litgpt_bin), "serve", str(lit), "--port", str(port), "--accelerator", "cpu", "--openai_spec", "true",
                                    "--stream", "true", "--temperature", "0", "--max_new_tokens", str(2 * args.max_tokens), "--timeout", "3600"],
        }
        results = []
        for name in servers:
            port = free_port()
            proc = start_server(commands[name](port), port, work / f"{name}.log", env)
            try:
                url = f"http://127.0.0.1:{port}"
                make = chat_request(args.max_tokens, usage=name == "ours")
                asyncio.run(level(url, 1, 2, make, name == "ours"))  # warm-up
                rounds = args.rounds if name == "ours" else args.litgpt_rounds
                for clients in args.clients:
                    per = max(args.requests_per_client, math.ceil(args.min_requests / clients))
                    r = dict(measure(url, clients, per, make, name == "ours", rounds), server=name)
                    results.append(r)
                    report(name, r)
            finally:
                stop_server(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    by = {(r["server"], r["clients"]): r for r in results}
    print()
    print_table(results)
    if "ours" in servers and "litgpt" in servers:
        print("| clients | aggregate tok/s ours/litgpt | TTFT p50 litgpt/ours |")
        print("|---:|---:|---:|")
        for c in args.clients:
            a, b = by.get(("ours", c)), by.get(("litgpt", c))
            if a and b:
                print(f"| {c} | {a['tokens_per_s'] / b['tokens_per_s']:.1f}x | {b['ttft_p50'] / a['ttft_p50']:.1f}x |")
        print()
    if ("ours", 1) in by and ("ours", max(args.clients)) in by:
        one, most = by[("ours", 1)], by[("ours", max(args.clients))]
        print(f"ours: p50 TTFT at {most['clients']} clients / at 1 client = {most['ttft_p50'] / one['ttft_p50']:.2f}x (target <= 2x)")
    if ("ours", 64) in by and ("litgpt", 64) in by:
        ratio = by[("ours", 64)]["tokens_per_s"] / by[("litgpt", 64)]["tokens_per_s"]
        print(f"ours/litgpt aggregate throughput at 64 clients = {ratio:.1f}x (target >= 10x)")
    print(f"total wall time {time.perf_counter() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
