"""A checkpoint as an lm-eval model: ``LitGPTLM``, registered with lm-eval as ``litgpt_clone``.

- ``loglikelihood``: lm-eval's ``TemplateLM`` tokenizes (context, continuation) pairs; ``_loglikelihood_tokens``
  scores them in right-padded batches sorted longest first (right padding never changes a causal model's earlier
  positions). Requests whose context + continuation[:-1] match (multiple choice with one-token answers) run once,
  through lm-eval's ``Collator(group_by="contexts")``, as ``HFLM`` does.
- ``loglikelihood_rolling``: a text longer than the context is scored in windows of ``max_length`` tokens; each
  window after the first re-reads ``rolling_context`` tokens of the one before (the overlap) and scores only the
  tokens after them. ``rolling_context=1`` gives ``HFLM``'s disjoint windows exactly. ``rolling_nll`` is also what
  ``litgpt-clone evaluate perplexity`` runs.
- ``generate_until``: the shared generate module (through ``LLM.stream_ids``), batched, ending at stop strings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from litgpt_clone.api import LLM


@register_model("litgpt_clone")
class LitGPTLM(TemplateLM):
    """lm-eval's view of a native checkpoint.

    Args:
        checkpoint_dir: Native checkpoint folder (or hub repo id).
        batch_size: Sequences per forward pass.
        device: "auto", "cpu", "cuda[:N]".
        precision: "32-true", "bf16-true" or "16-true" (default: bf16 on a GPU that has it, else fp32).
        max_length: Longest sequence fed to the model (default: the model's context).
        rolling_context: Tokens each rolling window after the first re-reads from the one before (default:
            half of ``max_length``; 1 gives lm-eval's disjoint windows).
        llm: An already loaded ``LLM`` (then checkpoint_dir, device and precision are not used).
    """

    def __init__(
        self, checkpoint_dir: Union[str, Path, None] = None, batch_size: Union[int, str] = 8, device: str = "auto",
        precision: Optional[str] = None, max_length: Union[int, str, None] = None, rolling_context: Union[int, str, None] = None,
        llm: Optional[LLM] = None,
    ) -> None:
        super().__init__()
        self.llm = llm if llm is not None else LLM.load(checkpoint_dir, device=device or "auto", precision=precision)
        self.model, self.tok = self.llm.model, self.llm.tokenizer
        context = self.model.max_seq_length
        self.max_length = int(max_length) if max_length else context
        if not 1 < self.max_length <= context:
            raise ValueError(f"max_length is {self.max_length}: use a value in [2, {context}] (the model's context)")
        self.rolling_context = int(rolling_context) if rolling_context else self.max_length // 2
        self.batch_size = int(batch_size) if str(batch_size) != "auto" else 8
        self.max_gen_toks = 256

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
        """Token ids; BOS as the checkpoint adds it, but never a second one in front of a text that starts with it."""
        bos = None if add_special_tokens in (None, True) else False
        if add_special_tokens is None and self.tok.bos_id is not None and string.startswith(self.tok.decode([self.tok.bos_id], skip_special_tokens=False)):
            bos = False
        return self.tok.encode(string, bos=bos).tolist()

    def chat_template(self, chat_template: Union[bool, str] = False) -> Optional[str]:
        return self.tok.chat_template or "" if chat_template else None

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        from litgpt_clone.chat_template import render_for_tokenizer

        return render_for_tokenizer(self.tok, chat_history, add_generation_prompt=add_generation_prompt)

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def logprobs(self, inputs: Sequence[list[int]]) -> list[torch.Tensor]:
        """Next-token log-probabilities (T_i, V) in fp32 for each input, from one right-padded forward pass."""
        T = max(len(x) for x in inputs)
        batch = torch.zeros(len(inputs), T, dtype=torch.long, device=self.device)  # (B, T), right-padded
        for i, x in enumerate(inputs):
            batch[i, : len(x)] = torch.tensor(x, device=self.device)
        logprobs = F.log_softmax(self.model(batch).float(), dim=-1)  # (B, T, V)
        return [lp[: len(x)] for lp, x in zip(logprobs, inputs)]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(log p(continuation | context), whether the continuation is the greedy one) for each
        ((context, continuation), context ids, continuation ids), in the order given."""
        collator = Collator(
            requests, sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])), group_by="contexts",
            group_fn=lambda r: r[1] + r[2][:-1],
        )
        results = []
        for chunk in tqdm(collator.get_batched(n=self.batch_size), disable=disable_tqdm, desc="loglikelihood"):
            # the last max_length + 1 tokens of context + continuation, without the last: the model's input
            inputs = [(ctx + cont)[-(self.max_length + 1):][:-1] for _, ctx, cont in chunk]
            for (request, ctx, cont), lp in zip(chunk, self.logprobs(inputs)):
                lp = lp[-len(cont):][None]  # (1, len(cont), V): the positions that predict the continuation
                greedy = lp.argmax(dim=-1)  # (1, len(cont))
                for _, cont_toks, lp_one in collator.get_cache(req_str=request, cxt_toks=ctx, cont_toks=cont, logits=lp):
                    target = torch.tensor(cont_toks, device=self.device)[None]  # (1, n)
                    picked = lp_one[:, -target.size(1):].gather(2, target[..., None])  # (1, n, 1)
                    results.append((float(picked.sum()), bool((greedy[:, -target.size(1):] == target).all())))
        return collator.get_original(results)

    def rolling_windows(self, tokens: list[int]) -> list[tuple[list[int], list[int]]]:
        """(context, continuation) windows that together score every token of ``tokens`` once."""
        windows = get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, min(self.rolling_context, self.max_length))
        return [make_disjoint_window(w) for w in windows]

    def rolling_nll(self, tokens: list[int]) -> float:
        """The summed negative log-likelihood of ``tokens`` (the first conditioned on ``prefix_token_id``)."""
        windows = [((None, None), ctx, cont) for ctx, cont in self.rolling_windows(tokens)]
        return -sum(ll for ll, _ in self._loglikelihood_tokens(windows, disable_tqdm=True))

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of each whole text (perplexity tasks)."""
        return [-self.rolling_nll(self.tok_encode(req.args[0])) for req in tqdm(requests, disable=disable_tqdm, desc="loglikelihood_rolling")]

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with ``do_sample``) continuations that end before the first stop string."""
        collator = Collator(
            [req.args for req in requests], sort_fn=lambda r: (-len(self.tok_encode(r[0])), r[0]), group_by="gen_kwargs",
            group_fn=lambda r: r[1],
        )
        eos = None if self.tok.eos_id is None else self.tok.decode([self.tok.eos_id], skip_special_tokens=False)
        results = []
        for chunk in tqdm(collator.get_batched(n=self.batch_size), disable=disable_tqdm, desc="generate_until"):
            contexts, all_kwargs = zip(*chunk)
            kwargs = normalize_gen_kwargs(all_kwargs[0], self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_new = int(kwargs.pop("max_gen_toks"))
            if max_new >= self.max_length:
                raise ValueError(f"max_gen_toks ({max_new}) must be less than max_length ({self.max_length})")
            keep = self.max_length - max_new  # the end of a long context
            prompts = [torch.tensor((self.tok_encode(c) or [self.prefix_token_id])[-keep:]) for c in contexts]
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            texts = [""] * len(prompts)
            for pieces in self.llm.stream_ids(prompts, max_new, temperature=temperature, top_p=float(kwargs.get("top_p") or 1.0), stop=until):
                texts = [t + p for t, p in zip(texts, pieces)]
            results.extend(postprocess_generated_text(t, until, None) for t in texts)
        return collator.get_original(results)
