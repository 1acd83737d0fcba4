"""The named-config registry: every entry builds, names are unique, lookups work, and sizes match the published ones."""

from __future__ import annotations

from contextlib import contextmanager
from unittest import mock

import pytest
import torch

from litgpt_clone.config import Config, ConfigError, all_configs, find_config
from litgpt_clone.configs import FAMILIES
from litgpt_clone.model import GPT

ARCHITECTURES = {
    "LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM", "GPTNeoXForCausalLM", "PhiForCausalLM", "Phi3ForCausalLM", "GemmaForCausalLM",
    "Gemma2ForCausalLM", "Gemma3ForCausalLM", "FalconForCausalLM", "OlmoForCausalLM", "Olmo2ForCausalLM",
    "StableLmForCausalLM", "Starcoder2ForCausalLM",
}  # fmt: skip

ENTRIES = all_configs()


@contextmanager
def on_meta():
    """The meta device without the default init of Linear and Embedding weights: on meta it fills no data, yet
    costs a second on first use (random-init decompositions get imported) and adds up over MoE models' thousands
    of experts."""
    skip = lambda self: None  # noqa: E731
    with (
        torch.device("meta"),
        mock.patch.object(torch.nn.Linear, "reset_parameters", skip),
        mock.patch.object(torch.nn.Embedding, "reset_parameters", skip),
    ):
        yield


def n_params(config: Config) -> int:
    """Parameters of the model built on the meta device; ``parameters()`` counts a tied head once."""
    with on_meta():
        model = GPT(config)
    return sum(p.numel() for p in model.parameters())


def cheap(entry: dict) -> Config:
    """The entry with short RoPE tables and at most two blocks (every block of a config has the same shapes)."""
    return Config(**{**entry, "block_size": min(entry["block_size"], 4096), "n_layer": min(entry["n_layer"], 2)})


def test_families_are_listed_and_populated():
    assert FAMILIES[0].__name__.endswith(".llama")
    assert len(set(FAMILIES)) == len(FAMILIES)
    for family in FAMILIES:
        assert family.configs, f"{family.__name__} has no entries"


def test_names_and_repo_ids_are_unique():
    names = [e["name"] for e in ENTRIES]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
    repos = [f"{e['hf_config']['org']}/{e['hf_config']['name']}".lower() for e in ENTRIES]
    assert len(repos) == len(set(repos)), sorted({r for r in repos if repos.count(r) > 1})


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_entry_builds(entry):
    assert set(entry["hf_config"]) == {"org", "name"}
    assert entry["architecture"] in ARCHITECTURES
    assert "block_size" in entry and "vocab_size" in entry and "n_layer" in entry
    config = Config(**entry)
    assert config.name == entry["name"]
    if config.rope_scaling and config.rope_scaling.get("rope_type") == "longrope":
        for key in ("short_factor", "long_factor"):
            assert len(config.rope_scaling[key]) == config.rope_n_elem // 2
    with on_meta():
        model = GPT(cheap(entry))
    assert model.lm_head.weight.shape == (config.vocab_size, config.n_embd)


def test_lookup_by_hf_repo_id():
    assert Config.from_name("meta-llama/Llama-3.2-1B") == Config.from_name("Llama-3.2-1B")
    assert Config.from_name("meta-llama/Meta-Llama-3-8B").name == "Llama-3-8B"
    assert find_config("Qwen/Qwen2.5-0.5B")["name"] == "Qwen2.5-0.5B"


def test_unknown_name_suggests_close_names():
    with pytest.raises(ConfigError, match="Llama-3.2-1B") as info:
        Config.from_name("Lama-3.2-1B")
    assert "Lama-3.2-1B" in str(info.value)


PUBLISHED = {
    "pythia-160m": 162_322_944,
    "Llama-3.2-1B": 1.24e9,
    "Llama-3-8B": 8.03e9,
    "Mistral-7B-v0.1": 7.24e9,
    "Mixtral-8x7B-v0.1": 46.7e9,
    "phi-2": 2.78e9,
    "gemma-2-2b": 2.61e9,
    "Qwen2.5-0.5B": 494e6,
    "Qwen3-30B-A3B": 30.5e9,
    "TinyLlama-1.1B-intermediate-step-1431k-3T": 1.10e9,
    "falcon-7b": 6.92e9,
    "starcoder2-3b": 3.03e9,
    "SmolLM2-135M": 135e6,
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameter_count_matches_published(name):
    entry = find_config(name)
    count = n_params(Config(**{**entry, "block_size": min(entry["block_size"], 4096)}))
    assert count == pytest.approx(PUBLISHED[name], rel=0.02), f"{name}: {count / 1e9:.3f}B"


# One representative per architecture, picked to exercise its distinctive fields.
REPRESENTATIVES = {
    "LlamaForCausalLM": "Llama-3.2-1B",  # llama3 rope scaling, tied head, explicit head_size
    "MistralForCausalLM": "Mistral-7B-v0.1",  # sliding window
    "MixtralForCausalLM": "Mixtral-8x7B-v0.1",
    "Qwen2ForCausalLM": "Qwen2.5-0.5B",
    "Qwen3ForCausalLM": "Qwen3-0.6B",
    "Qwen3MoeForCausalLM": "Qwen3-30B-A3B",
    "GPTNeoXForCausalLM": "pythia-160m",
    "PhiForCausalLM": "phi-2",
    "Phi3ForCausalLM": "Phi-3.5-mini-instruct",  # longrope
    "GemmaForCausalLM": "gemma-2b",
    "Gemma2ForCausalLM": "gemma-2-2b",
    "Gemma3ForCausalLM": "gemma-3-4b-it",
    "FalconForCausalLM": "falcon-7b",
    "OlmoForCausalLM": "OLMo-1B-hf",
    "Olmo2ForCausalLM": "OLMo-2-1124-7B",
    "StableLmForCausalLM": "stablelm-2-1_6b",
    "Starcoder2ForCausalLM": "starcoder2-3b",
}


def test_representatives_cover_every_architecture():
    assert set(REPRESENTATIVES) == ARCHITECTURES
    for arch, name in REPRESENTATIVES.items():
        assert find_config(name)["architecture"] == arch


@pytest.mark.parametrize("arch", sorted(REPRESENTATIVES))
def test_hf_config_round_trip(arch):
    import litgpt_clone.checkpoints.families  # noqa: F401  (registers every family written so far)
    from litgpt_clone.checkpoints import convert
    from litgpt_clone.checkpoints.arch import ARCHS

    if arch not in ARCHS:
        pytest.skip(f"{arch} is not registered in litgpt_clone.checkpoints.arch.ARCHS yet")
    config = Config.from_name(REPRESENTATIVES[arch])
    back = Config.from_hf_config(convert.config_to_hf(config))
    expected = {k: v for k, v in config.to_dict().items() if k not in ("name", "hf_config")}
    actual = {k: v for k, v in back.to_dict().items() if k not in ("name", "hf_config")}
    assert actual == expected


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(norm_class_name="RmsNorm"), "norm_class_name is 'RmsNorm': use one of 'LayerNorm', 'RMSNorm'"),  # was a LayerNorm
        (dict(mlp_activation="relu"), "mlp_activation is 'relu': use one of 'gelu', 'gelu_tanh', 'silu'"),
        (dict(n_layer=-1), "n_layer is -1: it must be 1 or more"),
        (dict(n_head=0), "n_head is 0: it must be 1 or more"),
        (dict(sliding_window=0), "sliding_window is 0: it must be 1 or more"),
        (dict(sliding_window_pattern=0), "sliding_window_pattern is 0: it must be 1 or more"),
        (dict(n_layer="2"), "n_layer is '2': expected an integer"),
        (dict(norm_eps="abc"), "norm_eps is 'abc': expected a number"),
        (dict(rotary_percentage=1.5), "rotary_percentage is 1.5: use a fraction of each head in [0, 1]"),
        (dict(block_size=10**12), "block_size is 1000000000000: it must be at most 16777216 (2**24 tokens"),  # RoPE tables
        (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "rope_scaling type 'dynamic' is not supported"),
        (dict(n_layers=2), "unknown model config keys ['n_layers'] (did you mean n_layer?)"),
    ],
)
def test_values_no_model_can_have_are_named(override, message):
    """A value outside a field's choices, a count below 1, a context longer than any model's, text where a number
    belongs, an unknown RoPE type or an unknown key: a ConfigError naming the field, from every way of making a config
    (they were a silent LayerNorm, ZeroDivisionError, KeyError or TypeError tracebacks at build or forward time, and
    an allocator traceback for the RoPE tables of a crafted block_size)."""
    with pytest.raises(ConfigError) as err:
        Config.from_name("pythia-14m", **override)
    assert str(err.value).startswith(message)
    with pytest.raises(ConfigError):
        Config.from_dict({**Config.from_name("pythia-14m").to_dict(), **override})
    assert Config.from_name("pythia-14m", norm_eps="1e-5").norm_eps == 1e-5  # YAML reads 1e-5 as text: it is a number
    assert Config.from_name("pythia-14m", block_size=10_485_760).block_size == 10_485_760  # Llama 4 Scout's context


TINY_HF = dict(vocab_size=200, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, head_dim=16,
               num_local_experts=4, num_experts=4, num_experts_per_tok=2, query_pre_attn_scalar=16)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_keys_a_config_json_leaves_out_take_transformers_defaults_of_its_architecture(arch):
    """A config.json that leaves keys out means what transformers' config class of that architecture assumes for
    them, not what Llama's does: a Mixtral config.json without rope_theta and rms_norm_eps converted with 1e4 and
    1e-6 (MixtralConfig: 1e6 and 1e-5), and its logits differed from transformers'. Checked against the config class
    for the bare sizes, and for each key of a full config.json left out alone."""
    import transformers

    from litgpt_clone.checkpoints.arch import get_arch
    from litgpt_clone.checkpoints.convert import config_from_hf

    config_class = type(transformers.AutoConfig.for_model(get_arch(arch).model_type))
    sizes = {k: v for k, v in TINY_HF.items() if k in config_class().to_dict()}

    def as_transformers_reads_it(hf: dict) -> dict:  # every key filled in by the config class
        return {**config_class(**{k: v for k, v in hf.items() if k != "architectures"}).to_dict(), "architectures": [arch]}

    def ours(hf: dict) -> dict:
        return {k: v for k, v in config_from_hf(hf).items() if k != "name"}  # (named after model_type when no path)

    full = as_transformers_reads_it(sizes)
    for leave_out in ["everything", *(k for k in full if k not in ("architectures", "model_type"))]:
        hf = {**sizes, "architectures": [arch]} if leave_out == "everything" else {k: v for k, v in full.items() if k != leave_out}
        try:
            expected = ours(as_transformers_reads_it(hf))
        except Exception:  # a config transformers itself refuses (a validation error), or one we do not support
            continue
        try:
            assert ours(hf) == expected, leave_out
        except ConfigError as err:  # only for a key every config.json has
            assert "which every" in str(err), (leave_out, err)


def test_mixtral_and_qwen3_moe_defaults():
    sizes = {**{k: v for k, v in TINY_HF.items() if k != "query_pre_attn_scalar"}, "num_attention_heads": 8}
    mixtral = Config.from_hf_config({"architectures": ["MixtralForCausalLM"], **sizes})
    assert (mixtral.rope_base, mixtral.norm_eps, mixtral.block_size, mixtral.n_query_groups) == (1e6, 1e-5, 131072, 8)
    qwen3_moe = Config.from_hf_config({"architectures": ["Qwen3MoeForCausalLM"], **sizes})
    assert (qwen3_moe.moe_norm_topk_prob, qwen3_moe.rope_base, qwen3_moe.norm_eps, qwen3_moe.moe_intermediate_size) == (False, 1e4, 1e-6, 768)
    mistral = Config.from_hf_config({"architectures": ["MistralForCausalLM"], **sizes})
    assert (mistral.sliding_window, mistral.rope_base) == (4096, 1e4)
    assert Config.from_hf_config({"architectures": ["MistralForCausalLM"], **sizes, "sliding_window": None}).sliding_window is None


def test_a_config_json_missing_a_size_names_it():
    with pytest.raises(ConfigError, match="config.json has no 'hidden_size', which every LlamaForCausalLM config has"):
        Config.from_hf_config({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 64})
