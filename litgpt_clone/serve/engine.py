"""Continuous batching for ``litgpt-clone serve``: generations join and leave one shared decode batch at any step.

    engine = Engine(model, tokenizer, max_rows=32)
    engine.submit("a", job)                      # a job: see ``Engine.submit``
    while engine.busy:
        for uid, event in engine.step():         # one forward (a prefill of new requests, or a decode step); the
            ...                                  # events of the forward it read (on a GPU the one before)

The KV cache is one static tensor per layer, ``max_rows`` rows x ``slots`` slots (the model's context). Every decode
step writes all rows at the same slot ``t`` (the model's ``input_pos``). A row's tokens sit in the contiguous slots
``[start, t)``, its RoPE positions count from 0 at ``start`` (``rope_pos``) and ``key_mask`` hides every slot the row
did not write, so rows of any length and age share a step. A new request is prefilled together with the other
requests that join at the same step (one left-padded batch, ``generate.pad_left``, in a scratch cache) and copied
into slots ``[t - prompt, t)`` of a free row. When there is no room for it before ``t`` (a long prompt) or after it
(many new tokens), the used slots of every row move together (``shift``): distances between slots, hence attention
and sliding windows, do not change. A step runs on the first rows only (a power of two covering the highest busy
row) and the first slots only (a multiple of 64 past ``t``; on a GPU a power of two of them), so a lightly loaded
server does little work. On a GPU each such shape of the decode step is a CUDA graph (``generate.GraphedStep``),
captured when the server starts (``capture``) or the first time the shape runs, and replayed: an eager 1.1B model
spends most of a small step launching kernels (the H200 run of 2026-11-27 decoded one TinyLlama stream at 44-56
tokens/s eagerly, 336 with graphs). So is a prefill of at most ``graph_tokens`` padded tokens (as many as a forward
pass holds for the cost of its launches): its rows padded to a power of two (repeating the last prompt), its
prompts left-padded to a multiple of 64 tokens, its K/V in scratch caches all such graphs share; under load every
arriving request costs a prefill, which eagerly took as long as several decode steps.

Sampling, stop ids, stop strings and text pieces are the ones of ``litgpt_clone.generate`` (``sample``,
``TextStream``); each row has its own temperature, top-p, seed, stop strings, token budget and LoRA adapter. A forward's
tokens are sampled on the device and become the rows' inputs to the next step there (``launch``); the host reads them
(``receive``: text, stops, events) after it has queued the next forward, on a GPU (``ahead``), as ``generate.stream``
does: the device runs step i + 1 while the host detokenizes step i, instead of idling through that host work every
step (so no input of a step is copied from pageable host memory, which would wait for the device). A row that ends in
step i was queued into step i + 1 too, whose token for it is dropped; a row whose last token is in flight is not.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
import torch.nn as nn

from litgpt_clone.data.batching import free_tokens
from litgpt_clone.generate import QUEUE_AHEAD, GraphedStep, TextStream, ToHost, decode_one_token, pad_left, sample, to_device
from litgpt_clone.model import GPT, KVCache

PREFILL_TOKEN_BUDGET = 1024
"""Most padded prompt tokens prefilled in one forward on a CPU: a burst of new requests is prefilled in chunks, so
the first ones get their first token sooner (one prompt longer than this runs alone). On a GPU, at least as many as
a forward pass holds for the cost of its launches (``data.batching.free_tokens``: 2,048 for TinyLlama): the H200 run
of 2026-11-27 prefilled a burst of 64 prompts of 128 tokens in 8 launch-bound passes (p50 time to first token 3.1x
the single-client one)."""


SLOT_BLOCK = 64
"""Cache slots come in blocks of this many: decode steps attend over whole blocks and graphed prefills are padded to
them, so a few shapes cover every length."""


def round_up(n: int, block: int = SLOT_BLOCK) -> int:
    return -(-n // block) * block


CAPTURE_SLOTS = 4096
"""``Engine.capture`` captures the decode steps of up to this many cache slots when the server starts (7 slot counts x 7
row counts at 64 rows); steps over longer caches are captured the first time they run."""


class CacheView(KVCache):
    """A ``KVCache`` over views ``k`` and ``v`` (rows, n_query_groups, slots, hs) of bigger tensors: the model's
    writes land in those."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        nn.Module.__init__(self)
        self.register_buffer("k", k, persistent=False)
        self.register_buffer("v", v, persistent=False)


@contextlib.contextmanager
def kv_caches(model: GPT, caches: list[KVCache]) -> Iterator[None]:
    """Run ``model`` with ``caches`` (one per block) instead of its own."""
    own = [block.attn.kv_cache for block in model.transformer.h]
    for block, cache in zip(model.transformer.h, caches):
        block.attn.kv_cache = cache
    try:
        yield
    finally:
        for block, cache in zip(model.transformer.h, own):
            block.attn.kv_cache = cache


def sampling(job: dict) -> dict:
    """The arguments of ``sample`` a job sets."""
    return dict(temperature=job["temperature"], top_k=job.get("top_k"), top_p=job["top_p"], min_p=job.get("min_p", 0.0))


def power_of_two(n: int, most: int) -> int:
    return min(1 << max(n - 1, 0).bit_length(), most)


@dataclass
class Stats:
    """What the engine did since the last ``report``: the server logs it every few seconds while it works."""

    prefills: int = 0
    prompt_tokens: int = 0
    prefill_s: float = 0.0
    graphed: int = 0  # prefills that replayed a CUDA graph
    steps: int = 0
    rows: int = 0  # generations in the decode steps, summed over the steps
    decode_s: float = 0.0
    tokens: int = 0  # sampled, by prefills and decode steps
    since: float = field(default_factory=time.perf_counter)

    def book(self, joined: list[Row], decoded: int, seconds: float) -> None:
        """Count one ``Engine.step``: the prefill of ``joined``, else a decode step of ``decoded`` rows (else nothing
        ran but the reading of a forward in flight)."""
        if joined:
            self.prefills += 1
            self.prompt_tokens += sum(len(row.job["ids"]) for row in joined)
            self.prefill_s += seconds
        elif decoded:
            self.steps += 1
            self.rows += decoded
            self.decode_s += seconds

    def report(self, running: int, waiting: int) -> str:
        """One log line (the time of a step includes its host work: admitting, sampling, detokenizing). ``running``:
        generations in the decode batch; ``waiting``: generations not started yet (submitted, or still in line)."""
        elapsed = time.perf_counter() - self.since
        busy = (self.prefill_s + self.decode_s) / max(elapsed, 1e-9)
        graphed = f", {self.graphed} as graphs" if self.graphed else ""
        prefill = f"{self.prompt_tokens:,} prompt tokens in {self.prefills} prefills ({1e3 * self.prefill_s / max(self.prefills, 1):.1f} ms each{graphed})"
        decode = f"{self.steps} decode steps ({1e3 * self.decode_s / max(self.steps, 1):.1f} ms each, {self.rows / max(self.steps, 1):.1f} rows)"
        return (f"last {elapsed:.1f} s: {prefill}, {decode}, {self.tokens / elapsed:,.1f} tokens/s generated; engine busy {busy:.0%};"
                f" {running} running, {waiting} waiting")


@dataclass(eq=False)
class Row:
    """One generation: its job, its place in the cache and its progress."""

    uid: str
    job: dict
    text: TextStream
    generator: Optional[torch.Generator] = None
    index: int = -1  # row of the KV cache
    start: int = 0  # slot of its first prompt token
    pos: int = 0  # tokens in the cache: the RoPE position of the next one
    count: int = 0  # tokens generated and read on the host (stop ids not counted)
    sampled: int = 0  # tokens sampled on the device and not read on the host yet
    extra: dict = field(default_factory=dict)  # what the next event of this row carries besides its text

    @property
    def end(self) -> int:
        """One past the last slot this row may need."""
        return self.start + len(self.job["ids"]) + self.job["max_new_tokens"]

    @property
    def wants_more(self) -> bool:
        """Whether a next token may still be needed (after the ones in flight, unless one of those ends the row)."""
        return self.count + self.sampled < self.job["max_new_tokens"]


@dataclass
class Launched:
    """A forward's sampled tokens (and the log-probabilities its rows asked for) on their way to the host."""

    rows: list[Row]
    tokens: ToHost  # (n,)
    scored: list[int] = field(default_factory=list)  # positions in ``rows`` of the rows that asked for log-probabilities
    logprobs: Optional[tuple[ToHost, ToHost, ToHost]] = None  # chosen (k,), top values and ids (k, most)


class Engine:
    """Continuous batching over one model (see the module docstring).

    ``adapters``: a ``litgpt_clone.serve.multi_lora.AdapterRows`` when the model carries per-request LoRA adapters.
    ``cuda_graphs``: on a GPU, replay each decode shape as a CUDA graph (``generate.GraphedStep``), captured the first
    time the shape runs; MoE and LongRoPE models, and any whose capture fails (bitsandbytes int8, say), decode eagerly.
    """

    def __init__(self, model: GPT, tokenizer, max_rows: int, adapters=None, cuda_graphs: bool = True) -> None:
        self.model, self.tokenizer, self.max_rows, self.adapters = model, tokenizer, max_rows, adapters
        self.slots = model.max_seq_length
        self.device = model.transformer.wte.weight.device
        model.set_kv_cache(max_rows, self.slots)
        model.longrope_rows = True  # each row an independent request: its own longrope table, by its own length
        self.caches = [block.attn.kv_cache for block in model.transformer.h]
        self.key_mask = torch.zeros(max_rows, self.slots, dtype=torch.bool, device=self.device)  # slots a row wrote
        self.t = 0  # the slot the next decode step writes
        self.tokens = torch.zeros(max_rows, dtype=torch.long, device=self.device)  # each row's input to the next step
        self.rows: dict[int, Row] = {}  # cache row -> generation
        self.waiting: deque[Row] = deque()
        self.stop_ids = set(tokenizer.stop_ids)
        self.steps: dict[tuple[int, int, bool], GraphedStep] = {}  # (rows, slots, adapters in use) -> decode step
        # not for steps that read values on the host: LongRoPE's switch of tables, MoE routing (which tokens per expert)
        capturable = model.longrope_after is None and model.config.mlp_class_name != "MoE"
        self.graphs = cuda_graphs and self.device.type == "cuda" and capturable
        self.pool = torch.cuda.graph_pool_handle() if self.graphs else None  # memory shared by all the graphs
        self.prefill_tokens = max(PREFILL_TOKEN_BUDGET, free_tokens(model.config.n_embd, self.device))
        # prefills of at most this many padded tokens replay CUDA graphs: a pass this small costs its launches
        self.graph_tokens = min(free_tokens(model.config.n_embd, self.device), max_rows * self.slots)  # (sizes the scratch)
        self.prefills: dict[tuple[int, int], tuple[GraphedStep, list[KVCache]]] = {}  # (rows, length) -> graph, caches
        self.scratch: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None  # what those caches view
        self.stats = Stats()
        self.ahead = self.device.type in QUEUE_AHEAD  # read a step's tokens after queuing the next step
        self.in_flight: Optional[Launched] = None

    # ------------------------------------------------------------------ requests
    def submit(self, uid: str, job: dict) -> None:
        """Queue a generation. ``job``: ``ids`` (prompt token ids), ``max_new_tokens`` (0: score the prompt only),
        ``temperature``, ``top_p`` (and optionally ``top_k``, ``min_p``), ``seed``, ``stop`` (strings), ``logprobs`` (None, or how many alternatives to
        report with each new token's log-probability), ``prompt_logprobs`` (also score the prompt's tokens: echo) and
        ``adapter`` (0: the base model)."""
        n, new = len(job["ids"]), job["max_new_tokens"]
        if not 0 < n or n + new > self.slots:
            raise ValueError(f"a job of {n} prompt tokens and {new} new tokens does not fit the context of {self.slots}")
        seeded = job.get("seed") is not None and job["temperature"] > 0
        generator = torch.Generator(device=self.device).manual_seed(job["seed"] % 2**63) if seeded else None
        self.waiting.append(Row(uid, job, TextStream(self.tokenizer, job.get("stop")), generator))

    def cancel(self, uid: str) -> Optional[int]:
        """Drop a generation (its client went away); the tokens it had generated, or None if it is not here."""
        for row in self.waiting:
            if row.uid == uid:
                self.waiting.remove(row)
                return 0
        for index, row in self.rows.items():
            if row.uid == uid:
                del self.rows[index]
                return row.count
        return None

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.waiting or self.in_flight)

    @property
    def free(self) -> int:
        """How many more generations could start now."""
        return self.max_rows - len(self.rows) - len(self.waiting)

    def uids(self) -> list[str]:
        return [row.uid for row in self.waiting] + [row.uid for row in self.rows.values()]

    def reset(self) -> list[str]:
        """Forget every generation (after an error); their uids."""
        uids = self.uids()
        self.rows.clear()
        self.waiting.clear()
        self.in_flight = None
        self.t = 0
        return uids

    def take_stats(self, queued: int = 0) -> Optional[str]:
        """The log line on what the engine did since the last call (None if it did nothing); counting starts again.
        ``queued``: the generations in line before this engine (not submitted yet), counted as waiting."""
        stats, self.stats = self.stats, Stats()
        return stats.report(len(self.rows), len(self.waiting) + queued) if stats.prefills or stats.steps else None

    # ------------------------------------------------------------------ steps
    @torch.inference_mode()
    def step(self) -> list[tuple[str, dict]]:
        """One forward: the prefill of the requests that can join now, else one decode step of every row; and the
        events of a forward read on the host (this one, or with ``ahead`` the one before, read after this one is queued).

        Returns ``(uid, event)`` pairs: ``{"text": piece}`` (with ``ids``, ``logprobs`` and ``top`` for a job that
        asked for log-probabilities; ``prompt_logprobs`` and ``prompt_top`` once, for a job that scores its
        prompt), and last ``finish_reason`` ("stop" or "length") and ``completion_tokens``.
        """
        events: list[tuple[str, dict]] = []
        started = time.perf_counter()
        joined = self.admit()
        decoding = [] if joined else [row for row in self.rows.values() if row.wants_more]
        launched = self.prefill(joined, events) if joined else self.decode(decoding) if decoding else None
        # with ``ahead`` (on a GPU) the previous forward's tokens are read now, while this one runs
        previous, self.in_flight = (self.in_flight, launched) if self.ahead else (launched, None)
        if previous is not None:
            self.receive(previous, events)
        self.stats.book(joined, len(decoding), time.perf_counter() - started)
        return events

    def admit(self) -> list[Row]:
        """Move waiting requests into free rows while there is room (first come, first served)."""
        joined: list[Row] = []
        while self.waiting and len(self.rows) < self.max_rows:
            row = self.waiting[0]
            n = len(row.job["ids"])
            if joined and (row.job.get("prompt_logprobs") or joined[0].job.get("prompt_logprobs")):
                break  # a prompt to score is prefilled alone: its logits at every position can be large
            if joined and (len(joined) + 1) * max(n, *(len(r.job["ids"]) for r in joined)) > self.prefill_tokens:
                break
            # room before t for the prompt padded to a multiple of 64 (a prefill graph's length) where it fits
            bucket = round_up(n) if self.graphs else n
            if not self.make_room(bucket, row.job["max_new_tokens"]) and not self.make_room(n, row.job["max_new_tokens"]):
                break
            self.waiting.popleft()
            row.index = min(set(range(self.max_rows)) - set(self.rows))
            row.start, row.pos = self.t - n, n
            self.rows[row.index] = row
            joined.append(row)
        return joined

    def make_room(self, prompt: int, new: int) -> bool:
        """Shift the used slots (if needed) so that a prompt can end at ``t`` and its new tokens fit after it."""
        if not self.rows:
            if prompt + new > self.slots:
                return False
            self.t = prompt
            return True
        low = max(prompt - self.t, -min(r.start for r in self.rows.values()))  # shift >= this: room before t
        high = min(self.slots - new - self.t, self.slots - max(r.end for r in self.rows.values()))  # and after
        if low > high:
            return False  # wait until some rows finish
        shift = min(max(0, low), high)  # the smallest move that works
        if shift:
            self.shift(shift)
        return True

    def shift(self, d: int) -> None:
        """Move every row's slots by ``d`` (all rows move together, so relative positions are unchanged)."""
        lo, hi = min(r.start for r in self.rows.values()), max(self.rows) + 1
        for cache in self.caches:
            for buf in (cache.k, cache.v):  # (rows, n_query_groups, slots, hs)
                buf[:hi, :, lo + d : self.t + d] = buf[:hi, :, lo : self.t].clone()
        written = self.key_mask[:hi, lo : self.t].clone()
        self.key_mask[:hi] = False
        self.key_mask[:hi, lo + d : self.t + d] = written
        self.t += d
        for row in self.rows.values():
            row.start += d

    @property
    def adapters_in_use(self) -> bool:
        """Whether the rows of the next forward chose any LoRA adapter (``select_adapters``)."""
        return self.adapters is not None and self.adapters.any

    def select_adapters(self, rows: list[Optional[Row]]) -> None:
        if self.adapters is not None:
            self.adapters.select([row.job.get("adapter", 0) if row is not None else 0 for row in rows])

    def prefill(self, joined: list[Row], events: list) -> Optional[Launched]:
        """Run the new prompts as one left-padded batch in a scratch cache, copy it into their rows and sample each
        one's first token (None when every one of them only scores its prompt)."""
        prompts = [torch.tensor(row.job["ids"], dtype=torch.long) for row in joined]
        n, T = len(joined), max(len(p) for p in prompts)
        score_prompt = bool(joined[0].job.get("prompt_logprobs"))  # such a row is prefilled alone
        self.select_adapters(joined)
        rows, length = power_of_two(n, self.max_rows), min(round_up(T), self.t)  # the graph's shape (t >= T)
        if self.graphs and rows * length <= self.graph_tokens and not score_prompt and not self.adapters_in_use:
            logits, scratch = self.graphed_prefill(prompts, rows, length)
            T = length
            self.stats.graphed += self.prefills[(rows, length)][0].graph is not None
        else:
            tokens, pad, rope_pos, key_mask = pad_left(prompts, T, self.device)  # (n, T), (n,), (n, T) | None, (n, T) | None
            scratch = [KVCache(n, T, self.model.config, device=self.device, dtype=c.k.dtype) for c in self.caches]
            with kv_caches(self.model, scratch):
                logits = self.model(tokens, torch.arange(T, device=self.device), rope_pos, key_mask, last_only=not score_prompt)  # (n, T | 1, V)
        index = self.on_device([row.index for row in joined])
        for cache, part in zip(self.caches, scratch):
            cache.k[index, :, self.t - T : self.t] = part.k[:n]  # (n, n_query_groups, T, hs)
            cache.v[index, :, self.t - T : self.t] = part.v[:n]
        self.key_mask[index] = False
        for row in joined:
            self.key_mask[row.index, row.start : self.t] = True
        if score_prompt:
            self.score_prompt(joined[0], logits[0, int(pad[0]) :])
        for row in joined:
            if row.job["max_new_tokens"] == 0:  # the prompt's scores were all it asked for
                self.finish(row, "length", "", events)
        ready = [i for i, row in enumerate(joined) if row.job["max_new_tokens"] > 0]
        if not ready:
            return None
        return self.launch([joined[i] for i in ready], logits[:n, -1] if len(ready) == n else logits[self.on_device(ready), -1])

    def decode(self, rows: list[Row]) -> Launched:
        """The next token of ``rows``: one step of the first rows of the cache (the other rows' outputs are not
        used), all writing slot ``t``."""
        lo = min(r.start for r in self.rows.values())
        if lo >= SLOT_BLOCK:  # drop the slots no row uses any more, so that steps attend over fewer
            self.shift(-lo)
        B = power_of_two(max(self.rows) + 1, self.max_rows)
        S = self.slots_for(self.t)
        positions = [0] * B
        for row in rows:
            positions[row.index] = row.pos
        # a Phi-3 longrope row at its first position past the original context: its whole sequence again, every key
        # with the long factors (as generate.stream and transformers do); run first, the step below rewrites the same
        # key at slot t, and the row's logits come from here
        switch = self.model.longrope_after if self.model.config.rope_recompute_at_switch else None
        again = {row.index: self.recompute(row) for row in rows if switch is not None and row.pos == switch and len(row.job["ids"]) <= switch}
        self.select_adapters([self.rows.get(i) for i in range(B)])
        inputs = (self.tokens[:B, None], self.on_device([self.t]), self.on_device(positions)[:, None], self.key_mask[:B, :S])
        key = (B, S, self.adapters_in_use)
        if key not in self.steps:
            self.steps[key] = self.decode_step(B, S, inputs)
        logits = self.steps[key](*inputs)  # (B, V)
        if again:
            logits = logits.clone()  # (a graph's output is overwritten by its next replay)
            for i, row_logits in again.items():
                logits[i] = row_logits
        index = self.on_device([row.index for row in rows])
        self.key_mask[index, self.t] = True
        self.t += 1
        for row in rows:
            row.pos += 1
        return self.launch(rows, logits[index])

    def recompute(self, row: Row) -> torch.Tensor:
        """Prefill ``row``'s whole sequence (prompt, the tokens generated so far, and this step's input) into its slots
        ``row.start`` to ``t``; its next-token logits (V,). Reads the input token on the host (once per such row)."""
        # its input, sampled last, is read on the host already (receive) or still in flight (a GPU queues ahead)
        seq = [*row.job["ids"], *row.text.ids[: row.count], *([int(self.tokens[row.index])] if row.sampled else [])]
        T = len(seq)
        scratch = [KVCache(1, T, self.model.config, device=self.device, dtype=c.k.dtype) for c in self.caches]
        self.select_adapters([row])
        with kv_caches(self.model, scratch):
            logits = self.model(torch.tensor([seq], device=self.device), torch.arange(T, device=self.device), last_only=True)
        for cache, part in zip(self.caches, scratch):
            cache.k[row.index, :, row.start : row.start + T] = part.k[0]
            cache.v[row.index, :, row.start : row.start + T] = part.v[0]
        return logits[0, -1]

    def on_device(self, values: list[int]) -> torch.Tensor:
        """Integers as a tensor on the device, without waiting for the work queued there (``generate.to_device``)."""
        return to_device(torch.tensor(values, dtype=torch.long), self.device)

    def slots_for(self, t: int) -> int:
        """The cache slots a decode step writing slot ``t`` attends over: a multiple of 64 past ``t``; when steps are
        CUDA graphs a power of two of 64-slot blocks (fewer shapes to capture)."""
        blocks = round_up(t + 1) // SLOT_BLOCK
        if self.graphs:
            blocks = power_of_two(blocks, round_up(self.slots) // SLOT_BLOCK)
        return min(SLOT_BLOCK * blocks, self.slots)

    @torch.inference_mode()  # as ``step``: the graphs are captured and replayed without autograd
    def capture(self, most_slots: int = CAPTURE_SLOTS) -> int:
        """Capture the decode step of every shape up front, as vLLM does when it starts, so that no request waits
        for a capture: rows a power of two up to ``max_rows``, slots a power of two of 64-slot blocks up to
        ``most_slots`` (longer ones are captured the first time they run). Only while idle and when steps are CUDA
        graphs; returns how many shapes were added."""
        if not self.graphs or self.busy:
            return 0
        added = 0
        for B in sorted({power_of_two(n, self.max_rows) for n in range(1, self.max_rows + 1)}):
            for S in sorted({self.slots_for(t) for t in range(min(self.slots, most_slots))}):
                key = (B, S, False)
                if key not in self.steps:  # dummy inputs: the step writes slot 0 of idle rows, which a prefill rewrites
                    zeros = torch.zeros(B, 1, dtype=torch.long, device=self.device)
                    self.select_adapters([None] * B)
                    step = self.decode_step(B, S, (zeros, torch.zeros(1, dtype=torch.long, device=self.device), zeros, self.key_mask[:B, :S]))
                    if not self.graphs:  # the capture failed (decode_step logged why): steps run eagerly from now on
                        return added
                    self.steps[key] = step
                    added += 1
        return added

    def decode_step(self, B: int, S: int, inputs: tuple) -> GraphedStep:
        """The decode step of the first ``B`` rows over the first ``S`` cache slots (a CUDA graph on a GPU)."""
        views = [CacheView(c.k[:B, :, :S], c.v[:B, :, :S]) for c in self.caches]  # the first B rows and S slots

        def step(tokens, input_pos, rope_pos, key_mask):
            with kv_caches(self.model, views):
                return decode_one_token(self.model, tokens, input_pos, rope_pos, key_mask)

        return self.graph(step, inputs)

    def graph(self, fn, inputs: tuple) -> GraphedStep:
        """``fn`` on persistent copies of ``inputs``: captured as a CUDA graph while ``self.graphs`` holds."""
        if self.graphs:
            try:
                return GraphedStep(fn, inputs, capture=True, pool=self.pool)
            except RuntimeError as err:  # an operation a CUDA graph cannot hold (a host sync)
                self.graphs = False
                print(f"litgpt-clone serve: decoding without CUDA graphs, this model's step cannot be captured ({err})", file=sys.stderr, flush=True)
        return GraphedStep(fn, inputs, capture=False)

    def graphed_prefill(self, prompts: list[torch.Tensor], rows: int, length: int) -> tuple[torch.Tensor, list[KVCache]]:
        """Prefill ``prompts`` as ``rows`` rows (a power of two; rows past the prompts repeat the last one) of
        ``length`` tokens (a multiple of 64), replaying the CUDA graph of that shape (captured the first time it
        comes up) over scratch caches that every such graph shares. Returns the last position's logits (rows, 1, V)
        and the scratch caches (rows, n_query_groups, length, hs)."""
        padded = prompts + [prompts[-1]] * (rows - len(prompts))
        tokens, pad, rope_pos, key_mask = pad_left(padded, length, self.device, length=length)
        if rope_pos is None:  # no row padded: the same inputs as a padded batch, so one graph serves both
            rope_pos = torch.arange(length, device=self.device).expand(rows, length)
            key_mask = torch.ones(rows, length, dtype=torch.bool, device=self.device)
        if (rows, length) not in self.prefills:
            if self.scratch is None:  # flat K and V buffers per layer, the size of the largest graphed prefill
                self.scratch = [(torch.empty(self.graph_tokens * c.k[0, :, 0].numel(), dtype=c.k.dtype, device=self.device),
                                 torch.empty(self.graph_tokens * c.v[0, :, 0].numel(), dtype=c.v.dtype, device=self.device)) for c in self.caches]
            shape = (rows, self.caches[0].k.size(1), length, self.caches[0].k.size(3))
            n = rows * shape[1] * length * shape[3]
            views = [CacheView(k[:n].view(shape), v[:n].view(shape)) for k, v in self.scratch]
            positions = torch.arange(length, device=self.device)

            def run(tokens, rope_pos, key_mask):
                with kv_caches(self.model, views):
                    return self.model(tokens, positions, rope_pos, key_mask, last_only=True)  # (rows, 1, V)

            self.prefills[(rows, length)] = (self.graph(run, (tokens, rope_pos, key_mask)), views)
        step, views = self.prefills[(rows, length)]
        return step(tokens, rope_pos, key_mask), views

    # ------------------------------------------------------------------ tokens
    def launch(self, rows: list[Row], logits: torch.Tensor) -> Launched:
        """Sample the next token of each row from its logits (n, V) on the device, as each row's input to the next
        step, and start copying the tokens (and the log-probabilities rows asked for) to the host. Rows with the same
        settings are sampled together; a seeded row draws from its own generator. Nothing here waits for the device,
        and nothing reads ``logits`` later (a graph's next replay may overwrite them)."""
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault((*sampling(row.job).values(), id(row.generator) if row.generator else 0), []).append(i)
        if len(groups) == 1:
            tokens = sample(logits, **sampling(rows[0].job), generator=rows[0].generator)  # (n,)
        else:
            tokens = torch.empty(len(rows), dtype=torch.long, device=logits.device)
            for members in groups.values():
                row, index = rows[members[0]], self.on_device(members)
                tokens[index] = sample(logits[index], **sampling(row.job), generator=row.generator)
        self.tokens[self.on_device([row.index for row in rows])] = tokens
        for row in rows:
            row.sampled += 1
        launched = Launched(rows, ToHost(tokens))
        launched.scored = [i for i, row in enumerate(rows) if row.job.get("logprobs") is not None]
        if launched.scored:
            index = self.on_device(launched.scored)
            logprobs = torch.log_softmax(logits[index].float(), dim=-1)  # (k, V)
            chosen = logprobs.gather(1, tokens[index, None]).squeeze(1)  # (k,)
            top = logprobs.topk(max(1, max(rows[i].job["logprobs"] for i in launched.scored)), dim=-1)
            launched.logprobs = ToHost(chosen), ToHost(top.values), ToHost(top.indices)
        return launched

    def receive(self, launched: Launched, events: list) -> None:
        """Read a forward's tokens on the host: emit text, log-probabilities and endings. Rows that ended or were
        cancelled since the forward was queued are skipped."""
        tokens = launched.tokens.tolist()
        self.stats.tokens += len(tokens)
        if launched.logprobs is not None:
            chosen, values, ids = (part.tolist() for part in launched.logprobs)
            for j, i in enumerate(launched.scored):
                n = launched.rows[i].job["logprobs"]
                launched.rows[i].extra.update(ids=[tokens[i]], logprobs=[chosen[j]], top=[list(zip(ids[j][:n], values[j][:n]))])
        for row, token in zip(launched.rows, tokens):
            row.sampled -= 1
            if self.rows.get(row.index) is not row:
                continue
            if token in self.stop_ids:
                self.finish(row, "stop", "", events)
                continue
            row.count += 1
            piece = row.text.add([token])
            if row.text.stopped:
                self.finish(row, "stop", piece, events)
            elif row.count >= row.job["max_new_tokens"]:
                self.finish(row, "length", piece, events)
            elif piece or row.extra:
                events.append((row.uid, {"text": piece, **row.extra}))
                row.extra = {}

    def finish(self, row: Row, reason: str, piece: str, events: list) -> None:
        events.append((row.uid, {"text": piece + row.text.flush(), **row.extra, "finish_reason": reason, "completion_tokens": row.count}))
        del self.rows[row.index]

    def score_prompt(self, row: Row, logits: torch.Tensor) -> None:
        """The log-probability of each prompt token given the ones before it (None for the first) and the top
        alternatives at each position, from the prefill's logits (n, V) of the row's real positions."""
        ids = row.job["ids"]
        logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)  # (n - 1, V): position i predicts token i + 1
        target = torch.tensor(ids[1:], device=logprobs.device)
        chosen = logprobs.gather(1, target[:, None]).squeeze(1).tolist() if len(ids) > 1 else []
        k = row.job.get("logprobs") or 0
        top: list = [[] for _ in chosen]
        if k and chosen:
            values, indices = logprobs.topk(k, dim=-1)
            top = [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
        row.extra.update(prompt_logprobs=[None, *chosen], prompt_top=[None, *top])
