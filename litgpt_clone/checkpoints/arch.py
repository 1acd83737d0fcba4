"""How one ``transformers`` architecture maps to ours: its config.json keys and its weight names.

Each family module in ``litgpt_clone/checkpoints/families/`` declares ``Arch`` objects; ``ARCHS`` collects them by
the ``architectures`` name found in config.json. Weight names are templates: ``{l}`` is a layer index, ``{e}`` an
expert index. A map entry pairs native module names with HF module names; when either side lists several modules
their weights are concatenated along dim 0 (``qkv`` = ``q_proj; k_proj; v_proj``), so one table serves both
directions. ``.weight`` and ``.bias`` suffixes are appended automatically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from litgpt_clone.config import Config, ConfigError


@dataclass
class Arch:
    name: str
    """The class name in config.json ``architectures`` (``LlamaForCausalLM``)."""
    model_type: str
    """config.json ``model_type`` written on export."""
    config_from_hf: Callable[[dict], dict]
    """config.json dict -> ``Config`` keyword arguments."""
    config_to_hf: Callable[[Config], dict]
    """``Config`` -> config.json dict (without ``architectures``/``model_type``, added by the exporter)."""
    top: dict[str, str]
    """Native name -> HF name for the modules outside the blocks (embedding, final norm, head)."""
    layer_prefix: str
    """HF prefix of block ``{l}`` (``model.layers.{l}.``); ours is ``transformer.h.{l}.``."""
    layer: list[tuple[tuple[str, ...], tuple[str, ...]]] | Callable[[Config], list[tuple[tuple[str, ...], tuple[str, ...]]]]
    """(native modules, HF modules) pairs inside a block, relative to the prefixes; a function of the config where
    the HF names depend on it (Falcon's one shared norm or two)."""
    grouped_qkv: bool = False
    """HF stores the fused qkv interleaved per key/value group: (n_query_groups, q_per_kv + 2, head_size) rows."""
    ignore: tuple[str, ...] = ()
    """Regexes of HF tensors that carry no weights of ours (cached rotary tables, masks)."""
    hf_defaults: dict = field(default_factory=dict)
    """What transformers' config class of this architecture assumes for keys a config.json leaves out, where that
    differs from the fallbacks of ``config_from_hf`` (shared by several architectures): MixtralConfig's rope_theta is
    1e6, not Llama's 1e4."""
    check: Optional[Callable[[dict], None]] = None
    """Raises ``ConfigError`` for config.json features we do not implement."""
    extra_hf: dict = field(default_factory=dict)
    """Constant config.json keys written on export."""
    module_names: dict[str, str] = field(default_factory=dict)
    """Where the transformers model in memory names a module otherwise than the checkpoint's tensors do (its
    conversion mapping renames them at load), checkpoint name prefix -> module name prefix: GPT-NeoX's ``embed_out``
    is the module ``lm_head``. PEFT adapters name modules (``peft_format``)."""
    native_architecture: Optional[str] = None
    """The architecture a converted checkpoint records, where it differs: the text half of a multimodal checkpoint
    (``Gemma3ForConditionalGeneration``) is a ``Gemma3ForCausalLM`` and exports as one."""


ARCHS: dict[str, Arch] = {}


def register(*archs: Arch) -> None:
    for arch in archs:
        ARCHS[arch.name] = arch


def get_arch(name: str) -> Arch:
    from litgpt_clone.checkpoints import families  # noqa: F401  (registers every family)

    if name not in ARCHS:
        raise ConfigError(f"architecture {name!r} is not supported; supported: {', '.join(sorted(ARCHS))}")
    return ARCHS[name]


# --------------------------------------------------------------------------- config.json helpers shared by families
def rope_from_hf(hf: dict) -> tuple[float, Optional[dict]]:
    """(rope_base, rope_scaling) from either the classic keys (``rope_theta``, ``rope_scaling``) or the
    ``rope_parameters`` dict that transformers 5 writes."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:  # per layer type (Gemma 3)
        params = params["full_attention"]
    if isinstance(params, dict):
        base = params.get("rope_theta", hf.get("rope_theta", 10000.0))
        scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
    else:
        base = hf.get("rope_theta", 10000.0)
        scaling = dict(hf.get("rope_scaling") or {})
    kind = scaling.pop("type", None) or scaling.get("rope_type") or "default"
    if kind == "default":
        return float(base), None
    scaling["rope_type"] = kind
    return float(base), scaling


def sizes_from_hf(hf: dict) -> dict:
    """The ``Config`` sizes every Llama-style config.json spells the same way (``sizes_to_hf`` is the inverse)."""
    return dict(
        vocab_size=hf["vocab_size"],
        n_layer=hf["num_hidden_layers"],
        n_embd=hf["hidden_size"],
        n_head=hf["num_attention_heads"],
        n_query_groups=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_size=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
    )


def sizes_to_hf(c: Config) -> dict:
    """The config.json size keys every Llama-style family shares."""
    return dict(
        vocab_size=c.vocab_size,
        hidden_size=c.n_embd,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        num_key_value_heads=c.n_query_groups,
    )


def rope_to_hf(config: Config) -> dict:
    """The classic keys, which every transformers version reads."""
    out = {"rope_theta": config.rope_base}
    if config.rope_scaling:
        out["rope_scaling"] = dict(config.rope_scaling)
    return out


def sliding_from_layer_types(hf: dict, n_layer: int) -> Optional[int]:
    """The ``sliding_window_pattern`` that reproduces config.json ``layer_types``; None when no layer slides."""
    types = hf.get("layer_types")
    if not types:
        return None
    sliding = [t == "sliding_attention" for t in types]
    if not any(sliding):
        return None
    if all(sliding):
        return 1
    period = sliding.index(False) + 1
    if sliding != [(i + 1) % period != 0 for i in range(n_layer)]:
        raise ConfigError(f"layer_types {types} is not a repeating sliding/global pattern, which litgpt_clone needs")
    return period


def layer_types(config: Config) -> list[str]:
    return ["sliding_attention" if config.is_sliding(i) else "full_attention" for i in range(config.n_layer)]
