"""A checkpoint as an lm-eval model: ``LitGPTLM``, registered with lm-eval as ``litgpt_clone``.

- ``loglikelihood``: lm-eval's ``TemplateLM`` tokenizes (context, continuation) pairs; ``_loglikelihood_tokens``
  reads a context shared by several continuations (multiple choice) once into the KV cache, then scores the
  continuations from there; other requests run as whole sequences in right-padded batches sorted longest first.
  Batches end where padding would pass ``data.batching.MAX_PADDING`` of their tokens (``length_runs``), except
  on a GPU for batches small enough that padding costs nothing there (``data.batching.free_tokens``).
  The output layer and the softmax run only at the positions that predict continuation tokens (``HFLM`` runs
  both over every position of context + continuation).
- ``loglikelihood_rolling``: a text longer than the context is scored in windows of ``max_length`` tokens; each
  window after the first re-reads ``rolling_context`` tokens of the one before (the overlap) and scores only the
  tokens after them. ``rolling_context=1``, the default, gives ``HFLM``'s disjoint windows exactly (so perplexity
  tasks give lm-eval's numbers); ``rolling_nll`` is also what ``litgpt-clone evaluate perplexity`` runs, with half a
  window of overlap by default.
- ``generate_until``: the shared generate module (through ``LLM.stream_ids``), batched, ending at stop strings.
"""

from __future__ import annotations

import array
import functools
import itertools
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from litgpt_clone.api import LLM
from litgpt_clone.data.batching import free_tokens, length_runs
from litgpt_clone.evaluate import EvaluationError
from litgpt_clone.model import head_only_at

ENCODED_TEXTS = 64
"""How many recently encoded texts ``LitGPTLM.tok_encode`` remembers (a document's requests come one after another)."""


@register_model("litgpt_clone")
class LitGPTLM(TemplateLM):
    """lm-eval's view of a native checkpoint.

    Args:
        checkpoint_dir: Native checkpoint folder (or hub repo id).
        batch_size: Sequences per forward pass (multiple choice: contexts per pass), or "auto" (see
            ``batch_size_for``).
        max_batch_size: The largest batch "auto" picks.
        device: "auto", "cpu", "cuda[:N]".
        precision: "32-true", "bf16-true" or "16-true" (default: bf16 on a GPU that has it, else fp32).
        max_length: Longest sequence fed to the model (default: the model's context).
        rolling_context: Tokens each rolling window after the first re-reads from the one before (default 1:
            lm-eval's disjoint windows, as its HF model scores perplexity tasks).
        quantize: bitsandbytes weight quantization ("bnb.nf4", "bnb.int8", ...), as ``LLM.load`` takes it.
        llm: An already loaded ``LLM`` (then checkpoint_dir, device, precision and quantize are not used).
    """

    def __init__(
        self, checkpoint_dir: Union[str, Path, None] = None, batch_size: Union[int, str] = 8, max_batch_size: int = 64, device: str = "auto",
        precision: Optional[str] = None, max_length: Union[int, str, None] = None, rolling_context: Union[int, str, None] = None,
        llm: Optional[LLM] = None, quantize: Optional[str] = None, pretrained: Union[str, Path, None] = None,
    ) -> None:
        super().__init__()
        # (``pretrained=``: lm-eval's name for it, from which its EvaluationTracker also names the --output_path folder)
        checkpoint_dir = checkpoint_dir if checkpoint_dir is not None else pretrained
        self.auto_batch = str(batch_size).startswith("auto")  # lm-eval's "auto:N" too: ours is chosen on every call
        self.batch_size = 1 if self.auto_batch else int(batch_size)
        self.max_batch_size = int(max_batch_size)
        if self.batch_size < 1 or self.max_batch_size < 1:
            raise EvaluationError(f"batch_size is {batch_size} (max_batch_size {max_batch_size}): use a count of sequences (>= 1) or auto")
        self.llm = llm if llm is not None else LLM.load(checkpoint_dir, device=device or "auto", precision=precision, quantize=quantize)
        self.model, self.tok = self.llm.model, self.llm.tokenizer
        context = self.model.max_seq_length
        self.max_length = int(max_length) if max_length not in (None, "") else context  # (lm-eval passes strings)
        if not 1 < self.max_length <= context:
            raise EvaluationError(f"max_length is {self.max_length}: use a value in [2, {context}] (the model's context)")
        self.rolling_context = int(rolling_context) if rolling_context not in (None, "") else 1
        if not 1 <= self.rolling_context <= self.max_length:
            raise EvaluationError(f"stride_context is {self.rolling_context}: use a value in [1, {self.max_length}] (at most max_length)")
        self.max_gen_toks = 256
        self._encode = functools.lru_cache(maxsize=ENCODED_TEXTS)(self._encode_text)  # per object, freed with it
        self.free_tokens = free_tokens(self.model.config.n_embd, self.device)  # batches this small are not cut (GPU)
        self._prefetched: dict[tuple[str, Optional[bool]], array.array] = {}  # (text, add_special_tokens) -> ids
        self._bos_text = "" if self.tok.bos_id is None else self.tok.decode([self.tok.bos_id], skip_special_tokens=False)

    # ------------------------------------------------------------------ tokens
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context conditions on: BOS, else EOS (as ``HFLM``)."""
        return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

    @property
    def device(self) -> torch.device:
        return self.llm.device

    @property
    def tokenizer_name(self) -> str:
        return str(self.tok.checkpoint_dir).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs) -> list[int]:
        """Token ids; BOS as the checkpoint adds it, but never a second one in front of a text that starts with it.
        The texts of a ``loglikelihood`` call are encoded before it in batches (``prefetch``); other texts one at a
        time, the last ``ENCODED_TEXTS`` of them remembered: lm-eval encodes a context once per continuation (4
        times for a multiple-choice question), and a small model's MMLU-shaped run spent a quarter of its time there."""
        ids = self._prefetched.get((string, add_special_tokens))
        return list(self._encode(string, add_special_tokens) if ids is None else ids)  # a copy: callers may change it

    def _encode_text(self, string: str, add_special_tokens: Optional[bool]) -> tuple[int, ...]:
        return tuple(self.tok.encode(string, bos=self._bos(string, add_special_tokens)).tolist())

    def _bos(self, string: str, add_special_tokens: Optional[bool]) -> Optional[bool]:
        if add_special_tokens is False:
            return False
        if add_special_tokens is None and self.tok.bos_id is not None and string.startswith(self._bos_text):
            return False
        return None

    def prefetch(self, requests) -> None:
        """Encode every text lm-eval's ``loglikelihood`` will ask ``tok_encode`` for (its ``_encode_pair`` moves a
        context's trailing spaces to the continuation and encodes context + continuation and the context; an empty
        context is the prefix token), in batches: one call of the tokenizer per 1,024 texts, on several threads
        where the tokenizer can, instead of one call per text. A text this misses is simply encoded when asked."""
        texts: dict[tuple[str, Optional[bool]], None] = {}
        for context, continuation in (req.args for req in requests):
            if context == "":
                texts[(continuation, False)] = None
                continue
            n = len(context) - len(context.rstrip())
            if n:
                context, continuation = context[:-n], context[-n:] + continuation
            texts[(context + continuation, None)] = texts[(context, None)] = None
        by_bos: dict[Optional[bool], list[tuple[str, Optional[bool]]]] = {}
        for key in texts:
            by_bos.setdefault(self._bos(*key), []).append(key)
        for bos, keys in by_bos.items():
            for start in range(0, len(keys), 1024):
                chunk = keys[start : start + 1024]
                for key, ids in zip(chunk, self.tok.encode_batch([text for text, _ in chunk], bos=bos)):
                    self._prefetched[key] = array.array("l", ids)  # 8 bytes a token, not a list's ~36

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """lm-eval's ``TemplateLM.loglikelihood`` (tokenize, then ``_loglikelihood_tokens``), its texts encoded first
        in batches (``prefetch``)."""
        self.prefetch(requests)
        try:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._prefetched.clear()

    def chat_template(self, chat_template: Union[bool, str] = False) -> Optional[str]:
        if chat_template:
            self.check_chat_template()
        return self.tok.chat_template if chat_template else None

    def check_chat_template(self) -> None:
        if not self.tok.chat_template:  # (its plain fallback would keep the last message: no few-shot examples)
            raise EvaluationError(
                f"--apply_chat_template: {self.llm.checkpoint_dir} has no chat template (a base model): leave the option out"
            )

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        from litgpt_clone.chat_template import render_for_tokenizer

        self.check_chat_template()

        return render_for_tokenizer(self.tok, chat_history, add_generation_prompt=add_generation_prompt)

    # ------------------------------------------------------------------ scoring
    def batch_size_for(self, longest: int) -> int:
        """Sequences per forward pass for inputs of up to ``longest`` tokens: the given batch size, or for "auto" on
        a GPU the largest of max_batch_size, max_batch_size / 2, ... whose forward pass fits in memory, and on CPU
        (where running out of memory cannot be caught) the largest power of two up to max_batch_size whose fp32
        logits stay within 1 GiB."""
        if not self.auto_batch:
            return self.batch_size
        vocab = self.model.config.vocab_size
        if self.device.type != "cuda":
            b = self.max_batch_size
            while b > 1 and b * longest * vocab * 4 > 2**30:
                b //= 2
            return b
        b = self.max_batch_size
        while b > 1:
            try:
                with torch.inference_mode():
                    self.model(torch.zeros(b, longest, dtype=torch.long, device=self.device))
                break
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                b //= 2
        torch.cuda.empty_cache()
        return b

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(log p(continuation | context), whether the continuation is the greedy one) for each
        ((context, continuation), context ids, continuation ids), in the order given.

        Contexts continued by several requests (multiple choice) are read once (``score_shared``); the rest, and any
        request longer than max_length (cut from the left, as HFLM does), run as whole sequences (``score_whole``).
        """
        results: list = [None] * len(requests)
        by_context: dict[tuple, list[int]] = {}  # context ids -> the requests that continue it
        singles: list[int] = []  # requests scored as whole sequences
        # a context of only spaces encodes to nothing once lm-eval moved them to the continuation: condition on the
        # prefix token, as lm-eval does for an empty context (else the continuation's first token went unscored)
        requests = [(pair, list(ctx) or [self.prefix_token_id], cont) for pair, ctx, cont in requests]
        for i, (_, ctx, cont) in enumerate(requests):
            if not cont:
                results[i] = (0.0, True)
            elif len(ctx) + len(cont) - 1 > self.max_length:
                singles.append(i)
            else:
                by_context.setdefault(tuple(ctx), []).append(i)
        shared = []  # (context + the continuations' common prefix, that prefix's length, the rest of each, indices)
        last_token = []  # the same, for groups whose continuations differ in their last token only
        for ctx, idx in by_context.items():
            if len(idx) == 1:
                singles.append(idx[0])
            else:
                conts = [requests[i][2] for i in idx]
                n = common_prefix(conts)
                group = (list(ctx) + conts[0][:n], n, [c[n:] for c in conts], idx)
                (last_token if all(len(c) == n + 1 for c in conts) else shared).append(group)
        longest = max((len(ctx) + len(cont) - 1 for _, ctx, cont in requests if cont), default=1)
        batch_size = self.batch_size_for(min(longest, self.max_length))
        progress = tqdm(total=len(requests), disable=disable_tqdm, desc="loglikelihood")
        shared.sort(key=lambda g: -len(g[0]))  # longest context first: the least padding in each batch
        last_token.sort(key=lambda g: -len(g[0]))
        for run in length_runs([len(ctx) for ctx, *_ in last_token], batch_size, free_tokens=self.free_tokens):
            batch = [last_token[j] for j in run]
            for (*_, idx), scored in zip(batch, self.score_last_tokens(batch)):
                for i, result in zip(idx, scored):
                    results[i] = result
            progress.update(sum(len(idx) for *_, idx in batch))
        for batch in self.shared_batches(shared, batch_size):
            conts = [(g, cont) for g, (_, _, group_conts, _) in enumerate(batch) for cont in group_conts]
            indices = [i for *_, idx in batch for i in idx]
            scored = self.score_shared([ctx for ctx, *_ in batch], [n for _, n, _, _ in batch], conts, batch_size)
            for i, result in zip(indices, scored):
                results[i] = result
            progress.update(len(indices))
        length = {i: min(len(requests[i][1]) + len(requests[i][2]) - 1, self.max_length) for i in singles}
        singles.sort(key=lambda i: -length[i])
        for run in length_runs([length[i] for i in singles], batch_size, free_tokens=self.free_tokens):
            chunk = [singles[j] for j in run]
            for i, result in zip(chunk, self.score_whole([(requests[i][1], requests[i][2]) for i in chunk])):
                results[i] = result
            progress.update(len(chunk))
        progress.close()
        return results

    def shared_batches(self, groups: list, batch_size: int):
        """Runs of consecutive groups (``length_runs`` of their contexts) whose longest context + longest
        continuation fit in the model's cache."""
        for run in length_runs([len(ctx) for ctx, *_ in groups], batch_size, free_tokens=self.free_tokens):
            batch, cont_max = [], 0
            for group in (groups[i] for i in run):
                cont_len = max(len(c) for c in group[2]) - 1
                if batch and len(batch[0][0]) + max(cont_max, cont_len) > self.model.max_seq_length:
                    yield batch
                    batch, cont_max = [], 0
                batch.append(group)
                cont_max = max(cont_max, cont_len)
            yield batch

    def forward_at(self, inputs: list[list[int]], positions: list[range]) -> torch.Tensor:
        """One right-padded forward pass of ``inputs`` (right padding never changes a causal model's earlier
        positions), with the output layer only at each input's ``positions``: their logits (sum of their lengths, V),
        input after input."""
        T = max(len(x) for x in inputs)
        batch = torch.zeros(len(inputs), T, dtype=torch.long)  # (B, T), made on the host and copied once
        for i, x in enumerate(inputs):
            batch[i, : len(x)] = torch.tensor(x)
        rows = torch.tensor([i * T + j for i, span in enumerate(positions) for j in span])
        with torch.inference_mode(), head_only_at(self.model, rows.to(self.device)):
            return self.model(batch.to(self.device))

    def score_whole(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Each (context, continuation) as one sequence (its last max_length + 1 tokens) in one forward pass; a
        continuation longer than that is scored on its last max_length tokens."""
        inputs = [(ctx + cont)[-(self.max_length + 1):][:-1] for ctx, cont in pairs]
        targets = [cont[-len(x):] for x, (_, cont) in zip(inputs, pairs)]
        logits = self.forward_at(inputs, [range(len(x) - len(t), len(x)) for x, t in zip(inputs, targets)])
        logprobs, greedy = token_scores(logits, range(len(logits)), [t for ts in targets for t in ts])
        return sum_spans(logprobs, greedy, [len(t) for t in targets])

    def score_last_tokens(self, groups: list) -> list[list[tuple[float, bool]]]:
        """Groups (context ending with the n tokens every continuation starts with, n, the one-token rest of each
        continuation, indices), e.g. MMLU's answers " A" ... " D": one forward pass of the contexts, no KV cache;
        the logits of a context's last n + 1 positions score the shared tokens and every continuation's last."""
        logits = self.forward_at([ctx for ctx, *_ in groups], [range(len(ctx) - n - 1, len(ctx)) for ctx, n, _, _ in groups])
        rows, ids, start = [], [], 0  # (logits row, token) pairs: each group's n shared tokens, then its continuations
        for ctx, n, conts, _ in groups:
            rows += [*range(start, start + n), *([start + n] * len(conts))]
            ids += [*ctx[len(ctx) - n:], *(c[0] for c in conts)]
            start += n + 1
        logprobs, greedy = token_scores(logits, rows, ids)
        spans = iter(sum_spans(logprobs, greedy, [m for _, n, conts, _ in groups for m in (n, *[1] * len(conts))]))
        out = []
        for _, _, conts, _ in groups:
            prefix_logprob, prefix_greedy = next(spans)
            out.append([(prefix_logprob + logprob, prefix_greedy and last) for logprob, last in itertools.islice(spans, len(conts))])
        return out

    def score_shared(self, contexts: list[list[int]], prefix_lens: list[int], conts: list[tuple[int, list[int]]],
                     batch_size: int) -> list[tuple[float, bool]]:
        """Continuations (index of their context, ids) of a few contexts. Each context ends with the ``prefix_lens``
        tokens that all its continuations start with (folded in by ``_loglikelihood_tokens``: a continuation's
        score adds theirs). The contexts are read once into the KV cache (left-padded, as generation's ``prefill``),
        with the output layer only at each one's last prefix + 1 positions; then the continuations' other tokens,
        longest first, in ``length_runs``, each on a copy of its context's cache rows, at the slots after the
        contexts. Answers " A" ... " D" that share their first token (MMLU-style) need no forward of their own."""
        from litgpt_clone.generate import ensure_kv_cache, pad_left
        C = max(len(c) for c in contexts)
        cache_len = ensure_kv_cache(self.model, len(contexts), C + max(len(x) for _, x in conts) - 1)
        tokens, pad, rope_pos, key_mask = pad_left([torch.tensor(c) for c in contexts], cache_len, self.device)
        caches = [block.attn.kv_cache for block in self.model.transformer.h]
        results: list = [None] * len(conts)
        # flattened (G, C) positions whose logits are needed: the last prefix_len + 1 of each row, in order
        rows = torch.tensor([g * C + C - 1 - n + j for g, n in enumerate(prefix_lens) for j in range(n + 1)], device=self.device)
        with torch.inference_mode(), head_only_at(self.model, rows):
            picked = self.model(tokens, torch.arange(C, device=self.device), rope_pos, key_mask)  # (sum(n + 1), V)
        ends = list(itertools.accumulate(n + 1 for n in prefix_lens))  # one past each context's rows
        rows = [r for n, end in zip(prefix_lens, ends) for r in range(end - 1 - n, end - 1)]
        logprobs, greedy = token_scores(picked, rows, [t for c, n in zip(contexts, prefix_lens) for t in c[len(c) - n:]])
        prefix_scores = sum_spans(logprobs, greedy, prefix_lens)
        with torch.inference_mode():
            first = picked[torch.tensor(ends, device=self.device) - 1]  # (G, V): the logits after each context
            prefilled = [(cache.k, cache.v) for cache in caches]  # (G, n_query_groups, cache_len, hs) each
            order = sorted(range(len(conts)), key=lambda i: -len(conts[i][1]))
            for run in length_runs([len(conts[i][1]) - 1 for i in order], batch_size, free_tokens=self.free_tokens):
                chunk = [order[j] for j in run]
                rows = torch.tensor([conts[i][0] for i in chunk], device=self.device)  # (R,): each row's context
                T = len(conts[chunk[0]][1]) - 1  # the inputs are continuation[:-1]
                logits = first[rows][:, None]  # (R, 1, V)
                if T > 0:
                    for cache, (k, v) in zip(caches, prefilled):  # the slots this chunk reads: (R, n_query_groups, C + T, hs)
                        cache.k, cache.v = k[:, :, : C + T][rows], v[:, :, : C + T][rows]
                    batch = torch.zeros(len(chunk), T, dtype=torch.long)  # (R, T), right-padded, made on the host
                    for r, i in enumerate(chunk):
                        batch[r, : len(conts[i][1]) - 1] = torch.tensor(conts[i][1][:-1])
                    batch = batch.to(self.device)
                    input_pos = torch.arange(C, C + T, device=self.device)
                    rope = None if rope_pos is None else input_pos[None, :] - pad[rows][:, None]  # (R, T)
                    mask = None if key_mask is None else key_mask[rows, : C + T]  # (R, C + T)
                    logits = torch.cat([logits, self.model(batch, input_pos, rope, mask)], dim=1)  # (R, 1 + T, V)
                width = logits.size(1)
                rows = [r * width + j for r, i in enumerate(chunk) for j in range(len(conts[i][1]))]
                logprobs, greedy = token_scores(logits.flatten(0, 1), rows, [t for i in chunk for t in conts[i][1]])
                for i, (logprob, all_greedy) in zip(chunk, sum_spans(logprobs, greedy, [len(conts[i][1]) for i in chunk])):
                    prefix_logprob, prefix_greedy = prefix_scores[conts[i][0]]
                    results[i] = (prefix_logprob + logprob, prefix_greedy and all_greedy)
            for cache, (k, v) in zip(caches, prefilled):  # the next batch of as many contexts reuses them
                cache.k, cache.v = k, v
        return results

    def rolling_windows(self, tokens: list[int]) -> list[tuple[list[int], list[int]]]:
        """(context, continuation) windows that together score every token of ``tokens`` once."""
        windows = get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, self.rolling_context)
        return [make_disjoint_window(w) for w in windows]

    def rolling_nll(self, tokens: list[int]) -> float:
        """The summed negative log-likelihood of ``tokens`` (the first conditioned on ``prefix_token_id``)."""
        windows = [((None, None), ctx, cont) for ctx, cont in self.rolling_windows(tokens)]
        return -sum(ll for ll, _ in self._loglikelihood_tokens(windows, disable_tqdm=True))

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of each whole text (perplexity tasks)."""
        return [-self.rolling_nll(self.tok_encode(req.args[0])) for req in tqdm(requests, disable=disable_tqdm, desc="loglikelihood_rolling")]

    # ------------------------------------------------------------------ generation
    @functools.cached_property
    def sampling_defaults(self) -> dict:
        """What transformers' ``generate`` samples with where a task's generation_kwargs say nothing: the checkpoint's
        generation_config.json, else transformers' defaults (temperature 1, top_k 50, top_p 1)."""
        import json

        path = self.llm.checkpoint_dir and Path(self.llm.checkpoint_dir) / "generation_config.json"
        config = json.loads(path.read_text()) if path and path.is_file() else {}
        defaults = {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "min_p": None}
        return {k: config[k] if config.get(k) is not None else v for k, v in defaults.items()}

    def sampling(self, kwargs: dict) -> dict:
        """``stream_ids``' sampling arguments for a task's generation_kwargs: greedy unless ``do_sample``, as
        lm-eval's HF model runs transformers' ``generate``."""
        if not kwargs.get("do_sample"):
            return {"temperature": 0.0}
        given = {**self.sampling_defaults, **{k: kwargs[k] for k in ("temperature", "top_k", "top_p", "min_p") if kwargs.get(k) is not None}}
        return {"temperature": float(given["temperature"]), "top_k": int(given["top_k"]) if given["top_k"] else None,
                "top_p": float(given["top_p"]), "min_p": float(given["min_p"] or 0.0)}

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with ``do_sample``) continuations that end before the first stop string."""
        collator = Collator(
            [req.args for req in requests], sort_fn=lambda r: (-len(self.tok_encode(r[0])), r[0]), group_by="gen_kwargs",
            group_fn=lambda r: r[1],
        )
        eos = None if self.tok.eos_id is None else self.tok.decode([self.tok.eos_id], skip_special_tokens=False)
        results = []
        for chunk in tqdm(collator.get_batched(n=self.batch_size_for(self.max_length)), disable=disable_tqdm, desc="generate_until"):
            contexts, all_kwargs = zip(*chunk)
            kwargs = normalize_gen_kwargs(all_kwargs[0], self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_new = int(kwargs.pop("max_gen_toks"))
            if max_new >= self.max_length:
                context = self.model.max_seq_length
                raise EvaluationError(
                    f"a task asks for {max_new} new tokens (max_gen_toks) but max_length is {self.max_length}: "
                    + (f"raise --max_length above {max_new} (at most {context}), or " if max_new < context else "")
                    + f"ask for fewer with --gen_kwargs max_gen_toks=<n below {self.max_length}> (or the task's generation_kwargs)"
                )
            keep = self.max_length - max_new  # the end of a long context
            prompts = [torch.tensor((self.tok_encode(c) or [self.prefix_token_id])[-keep:]) for c in contexts]
            texts = [""] * len(prompts)
            for pieces in self.llm.stream_ids(prompts, max_new, stop=until, **self.sampling(kwargs)):
                texts = [t + p for t, p in zip(texts, pieces)]
            results.extend(postprocess_generated_text(t, until, None) for t in texts)
        return collator.get_original(results)


def common_prefix(seqs: list[list[int]]) -> int:
    """How many first tokens all of ``seqs`` share, leaving each at least one of its own."""
    n = 0
    while n < min(len(x) for x in seqs) - 1 and all(x[n] == seqs[0][n] for x in seqs):
        n += 1
    return n


def token_scores(logits: torch.Tensor, rows: Sequence[int], ids: Sequence[int]) -> tuple[list[float], list[bool]]:
    """For each (row, id) pair: log p(id) under the softmax of ``logits[row]`` (logits (N, V), normalized in fp32)
    and whether id is that row's argmax. One normalizer per row and two copies to the host for all pairs (a GPU
    syncs twice per batch, not twice per request); a row may be asked about several ids."""
    if not len(rows):
        return [], []
    with torch.inference_mode():
        z = logits.float()
        index = torch.tensor(list(rows), dtype=torch.long, device=z.device)
        target = torch.tensor(list(ids), dtype=torch.long, device=z.device)
        logprob = z[index, target] - torch.logsumexp(z, dim=-1)[index]
        return logprob.tolist(), (z.argmax(dim=-1)[index] == target).tolist()


def sum_spans(logprobs: list[float], greedy: list[bool], lengths: Sequence[int]) -> list[tuple[float, bool]]:
    """(sum, all) over consecutive spans of ``lengths`` pairs: the score of each continuation from its tokens'."""
    out, at = [], 0
    for n in lengths:
        out.append((sum(logprobs[at : at + n]), all(greedy[at : at + n])))
        at += n
    return out
