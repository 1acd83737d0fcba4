"""Text generation through the static KV cache: one prefill, then one fixed-shape decode step per token.

    prefill(prompt) -> sample -> decode_one_token -> sample -> decode_one_token -> ...

- ``sample`` turns next-token logits into tokens: greedy at temperature 0, else temperature, top-k, top-p and
  min-p (applied in that order, as transformers does) and a draw from an optional ``torch.Generator``.
- ``stream`` yields the new tokens of every prompt, step by step. Prompts of different lengths run as one
  left-padded batch: each row gets its own RoPE positions and a key mask that hides its padding, and each row
  stops on its own stop id. With ``draft_model`` a batch of one is decoded speculatively. A longrope model with
  ``Config.rope_recompute_at_switch`` (Phi-3) prefills the whole sequence again at the step that first passes the
  original context, so that every key takes the long factors, as transformers' Phi-3 does.
- ``generate`` collects ``stream``; ``TextStream`` turns one row's growing tokens into text pieces that never
  split a multi-byte character and end at stop strings, at a cost per token that grows with neither the text nor
  the stop strings' length (``litgpt_clone.api.LLM`` and the server stream text with it).
- ``compile=True`` runs the decode step through ``torch.compile`` (inductor with its C++ wrapper on CPU, CUDA
  graphs and coordinate-descent tuning on GPU); the prefill stays eager (SDPA). On a GPU the loop queues the
  next step before it reads this step's tokens on the host (``ToHost``).
"""

from __future__ import annotations

import bisect
import functools
import inspect
import math
import numbers
import operator
from typing import Iterable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from litgpt_clone.model import GPT, head_only_at
from litgpt_clone.parallel import compile_options


class GenerationError(ValueError):
    """Generation arguments that cannot work; the message names the problem and the fix."""


# ----------------------------------------------------------------------------- sampling
def logits_to_probs(logits: torch.Tensor, temperature: float = 0.0, top_k: Optional[int] = None, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """Next-token probabilities (B, V) in fp32 from logits (B, V): one-hot on the argmax at temperature 0, else
    softmax(logits / temperature) restricted to the top-k, then the top-p nucleus, then tokens >= min_p * max."""
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).float()
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        sorted_probs = sorted_logits.softmax(dim=-1)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely tokens
        drop = before >= top_p  # the most likely token always stays (its `before` is 0)
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    if min_p > 0.0:
        probs = logits.softmax(dim=-1)
        logits = logits.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), float("-inf"))
    return logits.softmax(dim=-1)


def sample(
    logits: torch.Tensor, temperature: float = 0.0, top_k: Optional[int] = None, top_p: float = 1.0, min_p: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """One token per row (B,) from logits (B, V); see ``logits_to_probs`` for the filters."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = logits_to_probs(logits, temperature, top_k, top_p, min_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ----------------------------------------------------------------------------- model steps
def prefill(model: GPT, tokens: torch.Tensor, rope_pos: Optional[torch.Tensor] = None, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Write the prompts (B, T) into cache slots 0..T-1; the next-token logits (B, V)."""
    input_pos = torch.arange(tokens.size(1), device=tokens.device)
    return model(tokens, input_pos, rope_pos, key_mask, last_only=True)[:, -1]


def decode_one_token(
    model: GPT, token: torch.Tensor, input_pos: torch.Tensor, rope_pos: Optional[torch.Tensor] = None, key_mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """One token per row (B, 1) at cache slot ``input_pos`` (1,); the next-token logits (B, V).

    Every step has the same shapes (the attention reads the whole static cache under a mask), so a compiled
    step is reused for every token and, on CUDA, replayed as one CUDA graph.
    """
    return model(token, input_pos, rope_pos, key_mask)[:, -1]


@functools.lru_cache(maxsize=None)
def compiled_decode(device_type: str):
    """``decode_one_token`` through ``torch.compile``: CUDA graphs on GPU, inductor on CPU. Callers clone what it
    returns before the next step (a CUDA graph replay overwrites its outputs).

    On a GPU also inductor's coordinate-descent tuning: with it inductor writes each one-row matmul (every linear
    of a batch-1 step) as a fused reduction that reads the weights at full memory bandwidth, where the bf16 matrix-
    vector product of cuBLAS does not (``torch/_inductor/decomposition.py``; gpt-fast sets it too). The H200 run of
    2026-11-27 had the compiled batch-1 step of TinyLlama's shape at 1.45 ms, against 0.46 ms to read its weights
    once."""
    # Each (batch size, cache length) compiles once (the KV cache's shapes are guarded); dynamo's default of 8 per
    # function would turn an LLM serving many prompt counts back to eager after the eighth, with only a warning.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    if device_type == "cuda":  # "triton.cudagraphs" is what mode="reduce-overhead" sets
        return torch.compile(decode_one_token, options={"triton.cudagraphs": True, "coordinate_descent_tuning": True})
    return torch.compile(decode_one_token, options=compile_options(device_type))


def run_decode(step, compiled: bool, *args, same_as_last: bool = False) -> torch.Tensor:
    """One decode step. ``same_as_last``: the inputs have the shapes, dtypes and devices of the previous call (steps
    after the first of one request), so a compiled step skips re-checking the guards that say so (~3% of a step
    on CPU for a small model); the first step of each request checks them all and compiles if it must."""
    if not compiled:
        return step(*args)
    if args[1].device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()
    skip = same_as_last and not getattr(step, "guards_change", False)
    try:
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=skip):
            out = step(*args)
    except RuntimeError as err:  # a model whose state changes between steps (bitsandbytes' int8 layers fill theirs
        if not skip or "skip_guard_eval_unsafe" not in str(err):  # in the first ones) needs its guards checked: from
            raise  # here on they are (the step did not run: the check comes first)
        step.guards_change = True
        out = step(*args)
    return out.clone()  # the next replay of a CUDA graph would overwrite it


class GraphedStep:
    """A function of fixed-shape tensors, run on persistent copies of its inputs. On CUDA it is captured once as a
    CUDA graph and then replayed: all of its kernels in one launch, so a small decode step of an eager model costs
    what its kernels take on the GPU rather than what Python takes to launch them one by one (vLLM captures its
    decode steps the same way). Without ``capture`` (and off CUDA) ``fn`` is called on the copies.

    ``fn`` must give the same result when it runs twice on the same inputs (the capture runs it once first, to warm
    up): a decode step writes the same K/V into the same cache slots. The output of a replay lives in the graph's
    memory ``pool`` and the next replay of any graph of that pool may overwrite it: use it before then.
    """

    def __init__(self, fn, inputs: Sequence[torch.Tensor], capture: bool = True, pool=None) -> None:
        self.fn, self.inputs, self.graph = fn, [x.clone() for x in inputs], None
        if capture and self.inputs[0].device.type == "cuda":
            side = torch.cuda.Stream()  # warm up off the capture (lazy initializations such as cuBLAS workspaces)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn(*self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                self.output = fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        for buffer, x in zip(self.inputs, inputs):
            buffer.copy_(x)
        if self.graph is None:
            return self.fn(*self.inputs)
        self.graph.replay()
        return self.output


def recompute_at(model: GPT) -> Optional[int]:
    """The position at which generation recomputes every cached key with longrope's long factors, as transformers'
    Phi-3 does (``Config.rope_recompute_at_switch``): the first past ``original_max_position_embeddings``, whose
    step is the first to use the long factors; None for a model that keeps the keys it cached."""
    return model.longrope_after if model.config.rope_recompute_at_switch else None


# ----------------------------------------------------------------------------- checks and cache
def whole_number(name: str, value, fix: str) -> int:
    """``value`` as an ``int``: a Python or numpy integer (anything ``operator.index`` takes), not a bool or a float;
    else the one-line error "<name> is <value>: <fix>"."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise GenerationError(f"{name} is {value!r}: {fix}")


def check_seed(seed) -> Optional[int]:
    """``seed`` as an ``int`` (None stays None); a one-line error for one ``torch.Generator.manual_seed`` refuses."""
    if seed is None:
        return None
    seed = whole_number("seed", seed, "use a whole number (or leave it unset)")
    if not -(2**63) <= seed < 2**64:
        raise GenerationError(f"seed is {seed}: use a whole number that fits in 64 bits")
    return seed


def check_request(model: GPT, lengths: Sequence[int], max_new_tokens: int, temperature: float, top_k: Optional[int], top_p: float, min_p: float) -> None:
    """One-line errors for prompts, lengths and sampling settings that cannot work."""
    check_sampling(temperature, top_k, top_p, min_p)
    context = model.max_seq_length
    max_new_tokens = whole_number("max_new_tokens", max_new_tokens, "use a whole number of tokens")
    if max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens is {max_new_tokens}: ask for at least 1 new token")
    for n in lengths:
        if n == 0:
            raise GenerationError("the prompt is empty: give some text to continue")
        if n >= context:
            raise GenerationError(f"the prompt has {n} tokens but the model's context is {context} tokens: shorten the prompt")
    longest = max(lengths)
    if longest + max_new_tokens > context:
        raise GenerationError(
            f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) = {longest + max_new_tokens} tokens is more than the"
            f" model's context of {context} tokens: use max_new_tokens <= {context - longest}"
        )


def check_sampling(temperature: float, top_k: Optional[int], top_p: float, min_p: float) -> None:
    for name, value in (("temperature", temperature), ("top_p", top_p), ("min_p", min_p)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):  # (numpy's too)
            raise GenerationError(f"{name} is {value!r}: use a finite number")
    if temperature < 0:
        raise GenerationError(f"temperature is {temperature}: use 0 (greedy) or more")
    if top_k is not None and whole_number("top_k", top_k, "use a whole number of tokens (or leave it unset)") < 1:
        raise GenerationError(f"top_k is {top_k}: use 1 or more (or leave it unset)")
    if not 0 < top_p <= 1:
        raise GenerationError(f"top_p is {top_p}: use a value in (0, 1]")
    if not 0 <= min_p <= 1:
        raise GenerationError(f"min_p is {min_p}: use a value in [0, 1]")


def ensure_kv_cache(model: GPT, batch_size: int, needed: int, reuse_longer: bool = False) -> int:
    """Give ``model`` a KV cache of ``batch_size`` rows and at least ``needed`` slots (rounded up to a multiple of
    64, so that a compiled decode step is reused across requests); reuse the current one if it has that length, or
    with ``reuse_longer`` any longer one (a compiled step: a new length would compile again). Its length."""
    length = min(-(-needed // 64) * 64, model.max_seq_length)
    dtype, device = model.transformer.wte.weight.dtype, model.transformer.wte.weight.device
    cache = model.transformer.h[0].attn.kv_cache
    if cache is not None and cache.k.shape[0] == batch_size and cache.k.dtype == dtype and cache.k.device == device:
        if cache.k.shape[2] == length or (reuse_longer and cache.k.shape[2] > length):
            return cache.k.shape[2]
    model.set_kv_cache(batch_size, length, device=device, dtype=dtype)
    return length


def to_device(x: torch.Tensor, device) -> torch.Tensor:
    """``x`` (on the host) copied to ``device`` without waiting for the work queued there: on CUDA through pinned
    memory (a copy from pageable memory first waits for the device to finish everything queued before it)."""
    if torch.device(device).type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def pad_left(
    prompts: Sequence[torch.Tensor], cache_len: int, device, length: int = 0
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Prompts of different lengths as one left-padded batch of T = max(longest prompt, ``length``) tokens.

    Returns tokens (B, T), pad (B,) (padding of each row), rope_pos (B, T) and key_mask (B, cache_len), the
    last two None when no row is padded (the plain, fastest path).
    """
    sizes = [len(p) for p in prompts]
    T = max(max(sizes), length)
    tokens = torch.zeros(len(prompts), T, dtype=torch.long)
    for i, p in enumerate(prompts):  # on the host, then one copy to the device
        tokens[i, T - sizes[i] :] = p
    tokens, pad = to_device(tokens, device), T - to_device(torch.tensor(sizes), device)  # (B, T), (B,)
    if T == min(sizes):
        return tokens, pad, None, None
    slots = torch.arange(T, device=device)
    rope_pos = (slots[None, :] - pad[:, None]).clamp(min=0)  # (B, T): a row's first real token is at position 0
    key_mask = torch.arange(cache_len, device=device)[None, :] >= pad[:, None]  # (B, cache_len): hides the padding
    # (slots past the prompt are True from the start: the causal mask hides them until they are written)
    return tokens, pad, rope_pos, key_mask


# ----------------------------------------------------------------------------- the token loop
@torch.inference_mode()
def as_prompts(prompts) -> list[torch.Tensor]:
    """``prompts`` as a list of 1-D token tensors: also a (B, T) tensor (B prompts, as ``model(ids)`` takes them), one
    1-D tensor, or lists or arrays of ids; anything else is one ``GenerationError`` line."""
    if isinstance(prompts, torch.Tensor) and prompts.dim() in (1, 2):
        prompts = list(prompts) if prompts.dim() == 2 else [prompts]
    try:
        out = [torch.as_tensor(p, dtype=torch.long) for p in prompts]
    except (TypeError, ValueError, RuntimeError) as err:
        raise GenerationError(f"prompts must be token ids: a list of 1-D tensors or lists of ints, or a (B, T) tensor ({err})") from None
    if not out:
        raise GenerationError("no prompts given: pass at least one")
    if any(p.dim() != 1 for p in out):
        raise GenerationError(f"each prompt must be 1-D token ids; one has shape {tuple(next(p for p in out if p.dim() != 1).shape)}: pass a (B, T) tensor itself, or list(ids)")
    return out


def stream(
    model: GPT,
    prompts: Sequence[torch.Tensor],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: Optional[int] = None,
    top_p: float = 1.0,
    min_p: float = 0.0,
    stop_ids: Iterable[int] = (),
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    compile: bool = False,
    draft_model: Optional[GPT] = None,
    speculative_k: int = 4,
) -> Iterator[list[list[int]]]:
    """Generate from ``prompts`` (1-D token tensors), yielding after every step a list with each row's new tokens.

    A row ends at its first stop id (not yielded) or after ``max_new_tokens``; an ended row yields ``[]``. The
    loop ends when every row has ended (or when the caller stops iterating). ``seed`` (or a ``generator``) makes
    sampling reproducible. With ``draft_model`` (same tokenizer, a batch of one) a step may yield several tokens.
    """
    prompts = as_prompts(prompts)
    check_request(model, [len(p) for p in prompts], max_new_tokens, temperature, top_k, top_p, min_p)
    max_new_tokens, seed = operator.index(max_new_tokens), check_seed(seed)  # (numpy integers as Python ints)
    device = model.transformer.wte.weight.device
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    top_k = None if top_k is None else operator.index(top_k)
    sampling = dict(temperature=float(temperature), top_k=top_k, top_p=float(top_p), min_p=float(min_p))
    stop_ids = set(stop_ids)
    if draft_model is not None:
        if len(prompts) != 1:
            raise GenerationError(f"speculative decoding takes one prompt at a time, got {len(prompts)}")
        yield from speculative(model, draft_model, prompts[0].to(device), max_new_tokens, sampling, stop_ids, generator, speculative_k)
        return

    B = len(prompts)
    cache_len = ensure_kv_cache(model, B, max(len(p) for p in prompts) + max_new_tokens, reuse_longer=compile)
    tokens, pad, rope_pos, key_mask = pad_left(prompts, cache_len, device)
    T = tokens.size(1)
    slots = torch.arange(T, T + max_new_tokens, device=device)  # the cache slot of each decode step
    step_fn = compiled_decode(device.type) if compile else decode_one_token
    # the step whose input sits at slot `switch` (the longest row's position) prefills the whole sequence instead,
    # every key rotated with longrope's long factors; None when no step crosses the switch
    switch = recompute_at(model)
    recompute = switch - T if switch is not None and 0 <= switch - T < max_new_tokens - 1 else None
    fed: list[torch.Tensor] = []  # the tokens of steps 0, 1, ... (B,), kept for that prefill

    def next_token(i: int, token: torch.Tensor) -> torch.Tensor:  # step i: the tokens of step i in, step i + 1's out
        if i == recompute:  # eager; the compiled step resumes at the next one, checking its guards (it may be the first)
            seq = torch.cat([tokens, *(t.view(B, 1) for t in fed), token.view(B, 1)], dim=1)  # (B, T + i + 1)
            seq_pos = None if rope_pos is None else (torch.arange(seq.size(1), device=device) - pad[:, None]).clamp(min=0)
            return sample(prefill(model, seq, seq_pos, key_mask), generator=generator, **sampling)
        if recompute is not None and i < recompute:
            fed.append(token)
        input_pos = slots[i : i + 1]  # (1,)
        row_pos = None if rope_pos is None else (input_pos - pad).view(B, 1)  # (B, 1)
        logits = run_decode(step_fn, compile, model, token.view(B, 1), input_pos, row_pos, key_mask, same_as_last=i > 0 and i - 1 != recompute)
        return sample(logits, generator=generator, **sampling)

    # On a GPU, from the second token on, step i + 1 is queued before the host waits for step i's tokens (see
    # ToHost); the first token goes out as soon as the prefill is done. On a CPU nothing would overlap.
    ahead = device.type in QUEUE_AHEAD
    token = sample(prefill(model, tokens, rope_pos, key_mask), generator=generator, **sampling)  # (B,)
    done = [False] * B
    for i in range(max_new_tokens):
        on_host, more = ToHost(token), i < max_new_tokens - 1
        early = ahead and i > 0  # queue step i + 1 before reading step i's tokens
        if more and early:
            token = next_token(i, token)
        new = on_host.tolist()
        done = [d or t in stop_ids for d, t in zip(done, new)]
        yield [[] if d else [t] for t, d in zip(new, done)]
        if all(done):
            return
        if more and not early:
            token = next_token(i, token)


QUEUE_AHEAD = {"cuda"}
"""Device types on which ``stream`` (and the serve engine) queue the next decode step before reading the current one's tokens."""


class ToHost:
    """A tensor (a step's sampled tokens, say) on its way to the host. On CUDA the copy goes to pinned memory behind
    an event, so the loop can queue the next decode step (which needs only the tokens on the device) before it
    waits: the GPU runs step i + 1 while the host reads step i's tokens, checks stop ids and yields, instead of idling
    through all of that host work every token. After a row stops, at most one step was queued for nothing."""

    def __init__(self, x: torch.Tensor) -> None:
        self.event = None
        if x.device.type == "cuda":
            self.host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
            self.host.copy_(x, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = x

    def tolist(self) -> list:
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()


def speculative(
    model: GPT, draft: GPT, prompt: torch.Tensor, max_new_tokens: int, sampling: dict, stop: set[int],
    generator: Optional[torch.Generator], k: int,
) -> Iterator[list[list[int]]]:
    """Speculative decoding (Leviathan et al., 2023) of one prompt: the draft proposes ``k`` tokens one by one,
    the target scores them in one forward, and each is kept with probability min(1, p/q); the first rejected one
    is replaced by a draw from max(p - q, 0). The tokens follow the target's distribution exactly; at temperature
    0 they are the target's greedy tokens.

    Both caches hold stale entries past the accepted tokens; they sit at later slots than any query, so the causal
    mask hides them until they are overwritten.

    A longrope target never verifies across its switch point (one forward takes one table, short or long): a verify
    that would is cut short before it, so every key is rotated as plain decoding rotates it. With
    ``Config.rope_recompute_at_switch`` the verify that starts there recomputes the target's whole cache with the long
    factors, as ``stream`` does (the draft's cache stays as it is: it only changes how many proposals are kept).

    Models of one family can pad the same tokenizer's vocabulary to other sizes (Qwen2.5-0.5B 151,936 rows,
    Qwen2.5-7B 152,064): both then choose among the ids they share, the smaller vocabulary (the ids past it are
    padding, which no text holds). ``LLM.load`` checks that the two tokenizers are the same.
    """
    shared = min(draft.config.vocab_size, model.config.vocab_size)
    k = whole_number("speculative_k", k, "use a whole number of tokens")
    if k < 1:
        raise GenerationError(f"speculative_k is {k}: propose at least 1 token per step")
    device = prompt.device
    L = len(prompt)
    needed = L + max_new_tokens
    if needed > draft.max_seq_length:
        raise GenerationError(f"the draft model's context ({draft.max_seq_length}) is shorter than prompt + max_new_tokens ({needed})")
    ensure_kv_cache(model, 1, needed)
    ensure_kv_cache(draft, 1, needed)
    probs = lambda logits: logits_to_probs(logits[..., :shared], **sampling)  # noqa: E731
    switch, recompute = model.longrope_after, recompute_at(model)  # the first position with the long factors

    seq = prompt.tolist()
    prefill(draft, prompt[None])
    first = int(sample(prefill(model, prompt[None])[..., :shared], generator=generator, **sampling)[0])
    draft_len = L  # tokens of `seq` in the draft's cache; the target holds all but the last token of `seq`
    if first in stop:
        return
    seq.append(first)
    yield [[first]]
    while len(seq) - L < max_new_tokens:
        n = len(seq)
        k_now = min(k, max_new_tokens - (n - L))  # never write past the last slot we may need
        if switch is not None and n - 1 < switch <= n - 1 + k_now:  # a verify ends before the switch (maybe with no
            k_now = switch - n  # proposals): its positions all take the short factors, and a later one starts there
        proposed, q = [], []
        if k_now:  # the draft: catch up on the tokens it has not seen, then propose k_now tokens
            pending = torch.tensor(seq[draft_len:], device=device)
            logits = draft(pending[None], torch.arange(draft_len, n, device=device), last_only=True)[0, -1]
        for j in range(k_now):
            q.append(probs(logits[None])[0])
            proposed.append(int(torch.multinomial(q[-1], 1, generator=generator)) if sampling["temperature"] else int(q[-1].argmax()))
            if j < k_now - 1:
                logits = draft(torch.tensor([[proposed[-1]]], device=device), torch.tensor([n + j], device=device))[0, -1]
        # the target scores the last token and all proposals in one forward: p[j] is its distribution for proposal j
        verify = torch.tensor([seq[-1], *proposed], device=device)
        rows = torch.arange(n - 1, n + k_now, device=device)
        if n - 1 == recompute:  # the first verify past the original context: every key again, with the long factors
            with head_only_at(model, rows):
                p = probs(model(torch.tensor(seq + proposed, device=device)[None], torch.arange(n + k_now, device=device)))
        else:
            p = probs(model(verify[None], rows)[0])  # (k_now + 1, V)
        new = accept_proposals(proposed, torch.stack(q) if q else p[:0], p, greedy=not sampling["temperature"], generator=generator)
        if k_now:
            draft_len = n + min(len(new) - 1, k_now - 1)  # the draft saw seq + proposals[:k_now - 1]
        new = new[: max_new_tokens - (n - L)]
        ends = next((i for i, t in enumerate(new) if t in stop), None)
        if ends is not None:
            if ends:
                yield [new[:ends]]
            return
        seq.extend(new)
        yield [new]


def accept_proposals(proposed: list[int], q: torch.Tensor, p: torch.Tensor, greedy: bool, generator: Optional[torch.Generator] = None) -> list[int]:
    """Speculative sampling's verification: the proposals kept plus one token of the target's own.

    ``q`` (k, V): the draft's distributions the k ``proposed`` tokens were drawn from; ``p`` (k + 1, V): the
    target's distributions at the same positions and one more. Proposal j is kept with probability
    min(1, p[j, x] / q[j, x]); the first one rejected is replaced by a draw from max(p[j] - q[j], 0) (normalized);
    if all are kept, a last token is drawn from p[k]. The result follows p exactly. ``greedy``: p and q are one-hot
    and every draw is an argmax, so the result is the target's greedy continuation.
    """
    draw = (lambda d: int(d.argmax())) if greedy else (lambda d: int(torch.multinomial(d / d.sum(), 1, generator=generator)))
    kept = []
    for j, token in enumerate(proposed):
        ratio = float(p[j, token] / q[j, token])
        if ratio >= 1 or (ratio > 0 and float(torch.rand((), generator=generator, device=p.device)) < ratio):
            kept.append(token)
            continue
        return kept + [draw((p[j] - q[j]).clamp(min=0))]
    return kept + [draw(p[len(proposed)])]


def generate(
    model: GPT,
    prompts: Sequence[torch.Tensor],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: Optional[int] = None,
    top_p: float = 1.0,
    stop_ids: Iterable[int] = (),
    stop_strings: Optional[Sequence[str]] = None,
    tokenizer=None,
    seed: Optional[int] = None,
    **kwargs,
) -> list[torch.Tensor]:
    """The new tokens (1-D tensors) for each prompt, without the stop id that ended it.

    ``stop_strings`` (which need ``tokenizer``) end a row once its text contains one of them (or, for a special
    token's text such as ``"<|im_start|>"``, once that token comes); its tokens then run up to the one that completed
    the stop string. Other keyword arguments go to ``stream``.
    """
    if stop_strings and tokenizer is None:
        raise GenerationError("stop_strings need a tokenizer to read the text: pass tokenizer=")
    prompts = as_prompts(prompts)
    unknown = sorted(set(kwargs) - set(inspect.signature(stream).parameters))
    if unknown:  # (transformers' do_sample, num_beams, max_length: said by this function's name, not stream's)
        known = dict.fromkeys([*inspect.signature(generate).parameters, *inspect.signature(stream).parameters])
        settings = ", ".join(k for k in known if k not in ("model", "prompts", "kwargs"))
        raise GenerationError(f"generate() has no argument {unknown[0]!r}: its settings are {settings}")
    texts = [TextStream(tokenizer, stop_strings) if stop_strings else None for _ in prompts]
    rows: list[list[int]] = [[] for _ in prompts]
    steps = stream(model, prompts, max_new_tokens, temperature, top_k, top_p, stop_ids=stop_ids, seed=seed, **kwargs)
    for step in steps:
        for row, text, new in zip(rows, texts, step):
            for token in new:
                if text is not None and text.stopped:
                    break
                row.append(token)
                if text is not None:
                    text.add([token])
        if all(not new or (text is not None and text.stopped) for new, text in zip(step, texts)):
            steps.close()
            break
    return [torch.tensor(row, dtype=torch.long) for row in rows]


# ----------------------------------------------------------------------------- text
def complete_length(text: str) -> int:
    """Characters of ``text`` before its trailing U+FFFD, the mark of a character whose later bytes are still to come."""
    n = len(text)
    while n and text[n - 1] == "\ufffd":
        n -= 1
    return n


class Detokenizer:
    """The text of a growing list of token ids, decoded over a short window of the latest ids (``special``: with special
    tokens written out, as ``skip_special_tokens=False`` writes them).

    Each call decodes only the ids since the last point where the text was complete, with a few ids before them for
    context (a decoder may treat the first token of a call differently, e.g. SentencePiece drops its leading space),
    and appends the window's new text. So a call costs the same at token 10 and at token 10,000 (decoding the whole
    sequence every time made a long generation quadratic).
    """

    def __init__(self, tokenizer, special: bool = False) -> None:
        self.tokenizer, self.special = tokenizer, special
        self.done = ""  # the text of ids[:marks[-1]]: complete characters
        self.marks = [0]  # the latest ends of complete text; the window decodes again from the one before the last
        self.text = ""

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False) if self.special else self.tokenizer.decode(ids)

    def update(self, ids: list[int]) -> str:
        """The text of ``ids``, which extend the ids of the last call."""
        read, k = self.marks[-1], max(0, len(self.marks) - 2)
        before = self.decode(ids[self.marks[k] : read])
        while not before and self.marks[k] > 0:  # a context without text (a lone space piece, skipped unknown or
            # special tokens) cannot tell the decoder what precedes the new ids: widen it to an earlier end of complete
            # text (never into a character: a byte-fallback decoder turns a whole run of bytes into U+FFFD when it
            # starts inside one, and every later window would start there)
            k -= 1
            if k < 0:  # (past the ends kept: the whole sequence)
                self.marks.insert(0, 0)
                k = 0
            before = self.decode(ids[self.marks[k] : read])
        window = self.decode(ids[self.marks[k] :])
        if window.startswith(before):  # the new ids' text is what the window adds
            self.text = self.done + window[len(before) :]
        else:  # a decoder whose earlier text changed with the new ids: the whole sequence decides (rare)
            self.text = self.decode(ids)
        if not self.text.endswith("\ufffd"):  # complete characters: later windows start here
            self.done = self.text
            self.marks = [*self.marks[-15:], len(ids)]
        return self.text


@functools.lru_cache(maxsize=512)
def borders(stop: str) -> tuple[int, ...]:
    """Knuth-Morris-Pratt's table for ``stop``: entry q - 1 is the length of the longest proper prefix of ``stop[:q]``
    that is also a suffix of it (where a partial match falls back to when the next character does not continue it).
    Cached: the n choices of a request share their stop strings."""
    table, k = [0] * len(stop), 0
    for q in range(1, len(stop)):
        while k and stop[q] != stop[k]:
            k = table[k - 1]
        if stop[q] == stop[k]:
            k += 1
        table[q] = k
    return tuple(table)


class StopPrefixes:
    """The longest tail of a growing text that one of ``stops`` starts with (text to hold back: it may become a stop
    string), kept up to date from the characters added since the last call through Knuth-Morris-Pratt's automaton of
    each stop string. A call costs O(new characters x stop strings), however long the stop strings are: testing every
    tail against every stop string cost O(longest stop² x stop strings) per token, which 64 stop strings of 1,000
    characters turned into tens of milliseconds per token."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops, self.tables = list(stops), [borders(s) for s in stops]
        self.states = [0] * len(self.stops)  # per stop string: the length of its longest prefix that ends the text read
        self.reach = max(map(len, self.stops), default=0)  # the states depend on this many last characters only
        self.seen = ""  # the last `reach` characters read
        self.read = 0  # characters read

    def longest(self, text: str, end: int) -> int:
        """Length of the longest tail of ``text[:end]`` that some stop string starts with (it is read on from where the
        last call ended; where the text changed before that, its last ``reach`` characters are read again)."""
        if not self.stops:
            return 0
        start = self.read
        if start > end or not text.startswith(self.seen, start - len(self.seen)):  # (a decoder rewrote earlier text)
            self.states, start = [0] * len(self.stops), max(0, end - self.reach)
        new = text[start:end]
        for n, (stop, table) in enumerate(zip(self.stops, self.tables)):
            q = self.states[n]
            for c in new:
                while q and (q == len(stop) or stop[q] != c):
                    q = table[q - 1]
                if stop[q] == c:
                    q += 1
            self.states[n] = q
        self.read, self.seen = end, text[max(0, end - self.reach) : end]
        return max(self.states)


class TextStream:
    """One row's growing tokens as text, handed out in pieces that are safe to print.

    The text grows through a ``Detokenizer`` (a short window of the latest tokens per call). A character made of
    several tokens (UTF-8 bytes of byte-level BPE) comes out whole: while the text ends in U+FFFD, the mark of an
    unfinished character, it is held back. So is a tail that could be the start of a stop string (``StopPrefixes``); once
    a stop string appears, the text ends just before it (``stopped`` turns True) and later tokens are ignored. A stop
    string that is the whole text of a special token (``"<|im_start|>"``) never appears in the text, which leaves
    special tokens out: it stops when that token's id arrives, as transformers' ``stop_strings`` does. One that holds a
    special token's text and more (``"<|im_end|>\\n"``) is looked for in the text written with special tokens (a second
    ``Detokenizer``, fed one token at a time so that each token's end in both texts is known); the text then ends
    where it starts.

    A token costs a few decodes of a short window and O(its characters x stop strings) steps, whatever the stop
    strings' length and the text's (the stop strings' search covers at most the held-back text and their length).
    """

    def __init__(self, tokenizer, stop_strings: Optional[Sequence[str]] = None) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = [s for s in (stop_strings or ()) if s]
        special = {s: tokenizer.special_token_id(s) for s in self.stop_strings}
        self.stop_tokens = {i for i in special.values() if i is not None}  # ids of stop strings that are special tokens
        texts = [t for t in getattr(tokenizer, "special_texts", ()) if t]
        self.mixed = [s for s in self.stop_strings if special[s] is None and any(t in s for t in texts)]  # special + text
        self.ids: list[int] = []
        self.shown = Detokenizer(tokenizer)
        self.prefixes = StopPrefixes(self.stop_strings)
        if self.mixed:
            self.written = Detokenizer(tokenizer, special=True)
            self.mixed_prefixes = StopPrefixes(self.mixed)
            self.ends: tuple[list[int], list[int]] = ([0], [0])  # complete text written / shown after each token
        self.text = ""
        self.sent = 0  # characters of `text` handed out
        self.stopped = False

    def add(self, ids: Iterable[int]) -> str:
        """Append token ids; the new text that is safe to show (possibly "")."""
        ids = list(ids)
        if self.stopped or not ids:
            return ""
        if self.mixed and len(ids) > 1:  # (one at a time: the stop string's first token decides where the text ends)
            return "".join(self.add([i]) for i in ids)
        cut = next((n for n, i in enumerate(ids) if i in self.stop_tokens), None)
        if cut is None:
            return self._add(ids)
        piece = self._add(ids[:cut]) if cut else ""
        if self.stopped:  # a stop string in the text before the special token
            return piece
        if self.mixed:  # one holding this token's text may start before it ("n<|im_end|>"): the earliest stop wins
            piece += self._add(ids[cut : cut + 1])
            if self.stopped:
                return piece
        self.stopped = True  # the text ends just before the special token: all of it goes out, held-back tails too
        return piece + self.flush()

    def _add(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        if self.mixed and (at := self._mixed_stop()) is not None:
            return self._end_at(at)
        self.text = self.shown.update(self.ids)
        found = [i for i in (self.text.find(s, max(0, self.sent - len(s))) for s in self.stop_strings) if i >= 0]
        if found:
            self.stopped = True
            self.text = self.text[: min(found)]
            return self._emit(len(self.text))
        safe = complete_length(self.text)
        end = safe - self.prefixes.longest(self.text, safe)
        if self.mixed:
            self.ends[1].append(safe)
            end = min(end, self._mixed_hold())
        return self._emit(end)

    def _mixed_stop(self) -> Optional[int]:
        """Where a stop string holding special-token text starts in the text written with special tokens, when the
        latest token completed one (the earliest, if it completed several); else None."""
        checked = self.ends[0][-1]  # (one that ends before this token's text was found before)
        written = self.written.update(self.ids)
        self.ends[0].append(complete_length(written))
        return min((i for i in (written.find(s, max(0, checked - len(s))) for s in self.mixed) if i >= 0), default=None)

    def _mixed_hold(self) -> int:
        """Where the held-back text of the stop strings holding special-token text starts in the shown text: at the
        first token whose written text (special tokens written out) reaches into a tail that could be the start of one
        (``"<|im_start|>"`` before ``"<|im_start|>user"``), or at the end of the text when there is none."""
        written, shown = self.ends
        k = self.mixed_prefixes.longest(self.written.text, written[-1])
        if not k or self.written.text.endswith("\ufffd"):  # (an unfinished character starts no stop string)
            return shown[-1]
        return shown[self._token_at(written[-1] - k)]

    def _token_at(self, at: int) -> int:
        """The index of the token whose text holds character ``at`` of the written text (of a character made of several
        tokens, the first: it is where the character starts)."""
        written = self.ends[0]  # (the complete text after each token: a character is counted at its last token)
        token = bisect.bisect_right(written, at) - 1
        return bisect.bisect_left(written, at) if written[token] == at else token

    def _end_at(self, at: int) -> str:
        """End the text where the stop string that starts at character ``at`` of the written text (special tokens
        written out) begins: the text of the tokens before the one that holds that character, and the part of that token
        before it (none of a special token's text: the text leaves them out). Those read from whole decodes, once: a
        decode of a slice may lose its first space."""
        start = self._token_at(at)
        decode = self.tokenizer.decode
        before = decode(self.ids[:start], skip_special_tokens=False)
        special = self.tokenizer.special_token_id(decode(self.ids[start : start + 1], skip_special_tokens=False)) is not None
        self.stopped = True
        self.text = decode(self.ids[:start]) + ("" if special else self.written.text[len(before) : at])
        return self._emit(len(self.text))

    def flush(self) -> str:
        """The rest of the text (held-back tails included), at the end of generation."""
        return self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        piece = self.text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return piece
