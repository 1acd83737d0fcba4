"""GPT-NeoX (parallel and sequential residual), Phi-1.5/2, Phi-3 (sliding window, longrope with short and long
factors, greedy generation across longrope's switch point) and Phi-4-mini-like Phi-3 (tied embeddings, partial rotary,
GQA, longrope)."""

import dataclasses

import pytest
import torch
from transformers import (
    AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM, PhiConfig,
    PhiForCausalLM,
)

from litgpt_clone.checkpoints.convert import convert_hf_checkpoint, convert_to_hf_checkpoint
from litgpt_clone.config import Config, ConfigError
from litgpt_clone.model import GPT
from parity import TINY, build_hf, check_greedy_generation, check_kv_cache, check_parity

SEQ = 20
HEAD = TINY["hidden_size"] // TINY["num_attention_heads"]  # 16


def longrope(n_factors: int, original: int) -> dict:
    short = [1.0 + 0.1 * i for i in range(n_factors)]
    long = [1.5 + 0.7 * i for i in range(n_factors)]
    return dict(rope_type="longrope", short_factor=short, long_factor=long, original_max_position_embeddings=original)


PHI3 = dict(TINY, pad_token_id=None, bos_token_id=1, eos_token_id=2)

CASES = {
    "pythia-parallel": (GPTNeoXForCausalLM, GPTNeoXConfig(**TINY, use_parallel_residual=True)),
    "neox-sequential": (
        GPTNeoXForCausalLM,
        GPTNeoXConfig(
            **TINY, use_parallel_residual=False, hidden_act="gelu_new",
            rope_parameters=dict(rope_type="default", rope_theta=500.0, partial_rotary_factor=0.5),
        ),
    ),
    "neox-linear-rope": (
        GPTNeoXForCausalLM,
        GPTNeoXConfig(**TINY, rope_parameters=dict(rope_type="linear", factor=2.0, rope_theta=10000.0, partial_rotary_factor=0.5)),
    ),
    # Phi-2: head 80 with 40% rotated; here head 20 with 8 channels rotated
    "phi-2": (PhiForCausalLM, PhiConfig(**{**TINY, "hidden_size": 80}, partial_rotary_factor=0.4)),
    "phi-qk-layernorm": (PhiForCausalLM, PhiConfig(**TINY, num_key_value_heads=2, qk_layernorm=True)),
    # tied: only the head's weight is the embedding; its bias stays its own (and was refused by the converter)
    "phi-tied": (PhiForCausalLM, PhiConfig(**TINY, partial_rotary_factor=0.5, tie_word_embeddings=True)),
    "phi3": (Phi3ForCausalLM, Phi3Config(**PHI3, num_key_value_heads=2)),
    # transformers 5 applies Phi-3's sliding_window (2047 in phi-3-mini) with SDPA and eager attention too
    "phi3-sliding-window": (Phi3ForCausalLM, Phi3Config(**PHI3, sliding_window=6)),
    # longrope, sequence (20) longer than original_max_position_embeddings (16): transformers picks the long factors,
    # and so do we
    "phi3-longrope-long": (
        Phi3ForCausalLM,
        Phi3Config(**PHI3, max_position_embeddings=64, original_max_position_embeddings=16, rope_scaling=longrope(HEAD // 2, 16)),
    ),
    # an explicit longrope `factor` sets the attention factor instead of max_position_embeddings / original
    "phi3-longrope-factor": (
        Phi3ForCausalLM,
        Phi3Config(
            **PHI3, max_position_embeddings=64, original_max_position_embeddings=16, rope_scaling=dict(longrope(HEAD // 2, 16), factor=8.0),
        ),
    ),
    # Phi-4-mini: tied embeddings, 75% rotary, GQA, longrope (long factors as above)
    "phi4-mini-like": (
        Phi3ForCausalLM,
        Phi3Config(
            **PHI3, num_key_value_heads=2, tie_word_embeddings=True, partial_rotary_factor=0.75, max_position_embeddings=64,
            original_max_position_embeddings=16, rope_scaling=longrope(int(HEAD * 0.75) // 2, 16),
        ),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_parity(case, tmp_path):
    model_cls, config = CASES[case]
    check_parity(model_cls, config, tmp_path, seq_len=SEQ)


def test_phi3_longrope_short_factors(tmp_path):
    """Sequence (20) within original_max_position_embeddings (32) < max_position_embeddings (64): transformers uses
    the short factors, and so do we, also with a KV cache longer than the original context."""
    config = Phi3Config(**PHI3, max_position_embeddings=64, original_max_position_embeddings=32, rope_scaling=longrope(HEAD // 2, 32))
    hf_model = build_hf(Phi3ForCausalLM, config, tmp_path / "hf")
    convert_hf_checkpoint(tmp_path / "hf", tmp_path / "native")
    ours = GPT.from_checkpoint(tmp_path / "native").eval()
    idx = torch.randint(0, config.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf_model(idx).logits
        torch.testing.assert_close(ours(idx), expected)
        long_idx = torch.randint(0, config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(ours(long_idx), hf_model(long_idx).logits)  # 40 > 32: the long factors

    convert_to_hf_checkpoint(tmp_path / "native", tmp_path / "back")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "back", attn_implementation="sdpa").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(idx).logits, expected)
    check_kv_cache(ours, idx)


def test_classic_and_transformers5_keys_agree():
    """config.json as old transformers wrote it (top-level rotary keys) maps like the transformers 5 form."""
    neox_classic = dict(
        architectures=["GPTNeoXForCausalLM"], vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=256, rotary_pct=0.25, rotary_emb_base=10000, max_position_embeddings=2048,
        use_parallel_residual=True, tie_word_embeddings=False,
    )
    neox_v5 = {k: v for k, v in neox_classic.items() if k not in ("rotary_pct", "rotary_emb_base")}
    neox_v5["rope_parameters"] = dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.25)
    assert Config.from_hf_config(neox_classic) == Config.from_hf_config(neox_v5)
    assert Config.from_hf_config(neox_classic).rope_n_elem == 4

    factors = longrope(8, 4096)
    phi3_classic = dict(
        architectures=["Phi3ForCausalLM"], vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=131072, original_max_position_embeddings=4096,
        sliding_window=262144, rope_theta=10000.0, partial_rotary_factor=1.0,
        rope_scaling=dict(type="su", short_factor=factors["short_factor"], long_factor=factors["long_factor"]),
    )
    phi3_v5 = {k: v for k, v in phi3_classic.items() if k not in ("rope_theta", "partial_rotary_factor", "rope_scaling")}
    phi3_v5["rope_parameters"] = dict(factors, rope_theta=10000.0, partial_rotary_factor=1.0)
    c = Config.from_hf_config(phi3_classic)
    assert c == Config.from_hf_config(phi3_v5)
    assert c.rope_scaling["rope_type"] == "longrope" and c.rope_scaling["original_max_position_embeddings"] == 4096
    assert c.sliding_window == 262144


def test_neox_without_attention_bias_is_refused():
    hf = dict(
        architectures=["GPTNeoXForCausalLM"], vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, attention_bias=False,
    )
    with pytest.raises(ConfigError, match="attention_bias"):
        Config.from_hf_config(hf)


def test_phi3_sliding_window_with_longrope_long_sequence(tmp_path):
    """Phi-3 slides on every layer and uses longrope: past the original context the sliding layers switch to the
    long factors too, as in transformers."""
    config = Phi3Config(
        **PHI3, max_position_embeddings=64, original_max_position_embeddings=16, sliding_window=12,
        rope_scaling=longrope(HEAD // 2, 16),
    )
    hf_model = build_hf(Phi3ForCausalLM, config, tmp_path / "hf")
    convert_hf_checkpoint(tmp_path / "hf", tmp_path / "native")
    ours = GPT.from_checkpoint(tmp_path / "native").eval()
    for length in (10, 30):  # within and past the original context
        idx = torch.randint(0, config.vocab_size, (1, length), generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            torch.testing.assert_close(ours(idx), hf_model(idx).logits)


# original_max_position_embeddings 32: prompts of 20, 5 and 11 tokens cross it after 12, 27 and 21 new tokens (20 and 5 in
# one batch: at step 12, where the padded sequence crosses it); 32 crosses it at the first decode step; 33 is past it
SWITCH = 32
LONGROPE_GENERATION = dict(
    max_position_embeddings=128, original_max_position_embeddings=SWITCH, eos_token_id=None, bos_token_id=None,
    initializer_range=0.1,  # weights large enough that the factors that rotated the cached keys decide the argmax
)


def longrope_prompts(vocab_size: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(1, vocab_size, (n,), generator=gen) for n in (20, 5, 11, SWITCH, SWITCH + 1)]


def check_generation_across_the_switch(hf_model, native_dir) -> GPT:
    """Greedy tokens across the switch equal transformers', alone, in left-padded batches and speculatively (with the
    model itself as draft: whole chunks kept; and with a random draft: most proposals rejected)."""
    ours = GPT.from_checkpoint(native_dir).eval()
    prompts = longrope_prompts(ours.config.vocab_size)
    check_greedy_generation(hf_model, ours, prompts[:3], 30)
    check_greedy_generation(hf_model, ours, prompts[3:], 30)  # (batch: 33 tokens, prefilled with the long factors)
    twin, other = GPT.from_checkpoint(native_dir).eval(), GPT(dataclasses.replace(ours.config)).eval()
    torch.manual_seed(0)
    other.init_weights()
    for draft in (twin, other):
        for k in (1, 4):
            check_greedy_generation(hf_model, ours, prompts, 30, batched=False, draft_model=draft, speculative_k=k)
    return ours


def test_phi3_longrope_generation_recomputes_the_cache_at_the_switch_as_transformers(tmp_path):
    """Phi3ForCausalLM's prepare_inputs_for_generation drops the KV cache at the first step past
    original_max_position_embeddings and recomputes every key with longrope's long factors (those cached kept the short
    ones): the converter sets rope_recompute_at_switch, and greedy tokens crossing the switch are transformers' (they
    were not from the step after it on: keys cached with the short factors)."""
    config = Phi3Config(**{**PHI3, **LONGROPE_GENERATION}, num_key_value_heads=2, rope_scaling=longrope(HEAD // 2, SWITCH))
    hf_model = build_hf(Phi3ForCausalLM, config, tmp_path / "hf")
    convert_hf_checkpoint(tmp_path / "hf", tmp_path / "native")
    ours = check_generation_across_the_switch(hf_model, tmp_path / "native")
    assert ours.config.rope_recompute_at_switch
    convert_to_hf_checkpoint(tmp_path / "native", tmp_path / "back")  # (not a key of config.json: the export ignores it)
    assert dataclasses.replace(Config.from_hf_config(tmp_path / "back"), name=ours.config.name) == ours.config


def test_llama_longrope_generation_keeps_the_cached_keys_as_transformers(tmp_path):
    """LlamaForCausalLM with longrope keeps the keys it cached with the short factors past the switch: so do we."""
    config = LlamaConfig(**TINY, **LONGROPE_GENERATION, num_key_value_heads=2, rope_scaling=longrope(HEAD // 2, SWITCH))
    hf_model = build_hf(LlamaForCausalLM, config, tmp_path / "hf")
    convert_hf_checkpoint(tmp_path / "hf", tmp_path / "native")
    assert not check_generation_across_the_switch(hf_model, tmp_path / "native").config.rope_recompute_at_switch
