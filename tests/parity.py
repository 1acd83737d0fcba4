"""Shared checks for the per-family parity tests: a tiny random ``transformers`` model against ours."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from litgpt_clone.checkpoints.convert import convert_hf_checkpoint, convert_to_hf_checkpoint
from litgpt_clone.model import GPT

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=96)
"""Sizes every family test starts from (each overrides what its architecture needs)."""


def build_hf(model_cls, config, path: Path, seed: int = 0, attn_implementation: str = "sdpa"):
    """A random transformers model saved with ``save_pretrained``; norms get random weights too."""
    torch.manual_seed(seed)
    config._attn_implementation = attn_implementation
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norms and biases start at constants: randomize so a mix-up cannot hide
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    return model


def check_parity(
    model_cls, config, tmp_path: Path, seq_len: int = 20, atol: float | None = None, rtol: float | None = None,
    attn_implementation: str = "sdpa",
):
    """HF -> native logits equal, native -> HF logits equal, KV-cache decode equals the full forward.

    ``attn_implementation="eager"`` for references whose SDPA path drops a feature (softcapping).
    Returns the native model for further checks.
    """
    tol = {} if atol is None else dict(atol=atol, rtol=rtol or 0)
    hf_dir, native_dir, back_dir = tmp_path / "hf", tmp_path / "native", tmp_path / "back"
    hf_model = build_hf(model_cls, config, hf_dir, attn_implementation=attn_implementation)
    convert_hf_checkpoint(hf_dir, native_dir)
    ours = GPT.from_checkpoint(native_dir).eval()

    torch.manual_seed(1)
    idx = torch.randint(0, config.vocab_size, (2, seq_len))
    with torch.no_grad():
        expected = hf_model(idx).logits
        got = ours(idx)
    torch.testing.assert_close(got, expected, **tol)

    # native -> HF: transformers loads our export and gives the same logits
    convert_to_hf_checkpoint(native_dir, back_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(back_dir, attn_implementation=attn_implementation).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(idx).logits, expected, **tol)

    # Past longrope's switch point a full forward rotates every position with the long factors while cached keys keep
    # the short ones (as transformers' Llama keeps them; its Phi-3 has generation recompute them at the switch, which
    # check_greedy_generation compares), so cached decoding is compared within the original context there.
    check_kv_cache(ours, idx if ours.longrope_after is None else idx[:, : ours.longrope_after])
    return ours


def check_kv_cache(model: GPT, idx: torch.Tensor, prefill: int = 5) -> None:
    """Prefill then one token at a time through the KV cache gives the logits of one full forward."""
    B, T = idx.shape
    with torch.no_grad():
        full = model(idx)
        model.set_kv_cache(B, max_seq_length=T + 3)
        steps = [model(idx[:, :prefill], input_pos=torch.arange(prefill))]
        for t in range(prefill, T):
            steps.append(model(idx[:, t : t + 1], input_pos=torch.tensor([t])))
        model.clear_kv_cache()
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)


def check_greedy_generation(hf_model, ours: GPT, prompts: list[torch.Tensor], max_new_tokens: int, batched: bool = True, **kwargs) -> None:
    """Greedy tokens of ``litgpt_clone.generate`` (``kwargs``: compile, draft_model, ...) equal transformers'
    ``generate(do_sample=False)``: each prompt alone and, with ``batched``, all of them in one left-padded batch, against
    transformers' left-padded batch (which need not give the tokens of the prompts alone: longrope takes its factors
    for the whole batch, and Phi-3 recomputes its cache at a step chosen by the padded length)."""
    from litgpt_clone.generate import generate

    def theirs(rows: list[torch.Tensor]) -> list[list[int]]:
        T = max(len(p) for p in rows)
        ids = torch.stack([torch.nn.functional.pad(p, (T - len(p), 0)) for p in rows])  # (B, T), padded on the left
        mask = (torch.arange(T)[None, :] >= torch.tensor([[T - len(p)] for p in rows])).long()
        with torch.no_grad():
            out = hf_model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=0)
        return out[:, T:].tolist()

    for prompt in prompts:
        assert generate(ours, [prompt], max_new_tokens, **kwargs)[0].tolist() == theirs([prompt])[0], len(prompt)
    if batched:
        assert [t.tolist() for t in generate(ours, prompts, max_new_tokens, **kwargs)] == theirs(prompts)
