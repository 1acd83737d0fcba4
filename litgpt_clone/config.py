"""The model ``Config``: one dataclass that says everything ``model.py`` needs to build a network.

Named configs live in ``litgpt_clone/configs/<family>.py`` as short ``dict`` entries; ``Config.from_name`` looks
them up by our name or by the Hugging Face repo id, ``Config.from_file`` reads a ``model_config.yaml`` and
``Config.from_hf_config`` maps a ``config.json`` of any architecture we implement.

Every behaviour of the model comes from an explicit field here, never from the model's name.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import os
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A config that cannot be built; the message names the problem and the fix."""


def at_least(low: float, group: str, above: bool = False, **values: Optional[float]) -> None:
    """``ConfigError`` naming the first of ``values`` (those set, not None) below ``low`` (with ``above``: not above
    it), as the flag ``--{group}.{name}``."""
    for name, value in values.items():
        if value is not None and (value <= low if above else value < low):
            raise ConfigError(f"--{group}.{name} is {value}: it must be {f'above {low}' if above else f'{low} or more'}")


def check_out_dir(out_dir, flag: str = "--out_dir") -> None:
    """``ConfigError`` when the folder a command writes into is a file (it is created when missing), or when it, or
    the folder it would be created in, is not writable: said before any work that would then be lost."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {out_dir} is a file: give a folder (it is created when missing)")
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{flag} {out_dir} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {out_dir} is not writable ({existing} denies it): give a folder you can write to")
    # the kernel may refuse what the permission bits allow (root in /proc or /sys): create the missing folders to
    # find out, then remove them again (the command creates them when it writes)
    missing = [p for p in (path.absolute(), *path.absolute().parents) if not p.exists()]
    try:
        for folder in reversed(missing):
            folder.mkdir()
    except OSError as err:
        raise ConfigError(f"{flag} {out_dir} cannot be created ({err.strerror}): give a folder you can write to") from None
    finally:
        for folder in missing:
            with contextlib.suppress(OSError):
                folder.rmdir()


ROPE_TYPES = ("default", "linear", "llama3", "yarn", "longrope")
POSITIVE = ("block_size", "vocab_size", "n_layer", "n_embd", "n_head", "n_query_groups", "head_size", "intermediate_size",
            "sliding_window", "sliding_window_pattern", "moe_intermediate_size")
"""Fields that count something: 1 or more (or unset, where None is allowed)."""
MAX_BLOCK_SIZE = 2**24
"""The longest context a config may have, 16,777,216 tokens (the longest of any released model, Llama 4 Scout's, is
10,485,760). The RoPE tables are built for ``block_size`` when a model loads, and no weight's shape depends on it:
a crafted model_config.yaml's ``block_size: 1000000000000`` was an allocator traceback, and 2**28 asked for 128 GB
(SmolLM2-135M's tables; at this bound they take 8 GB)."""


@functools.lru_cache(maxsize=None)
def field_types() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def check_values(config: "Config") -> None:
    """``ConfigError`` naming the field for a value no model can have: a name outside a field's choices (a typo of
    ``RMSNorm`` built a LayerNorm), a count below 1, a word where a number belongs, an unknown RoPE type. A number
    written as text (YAML reads ``1e-5`` as a string) becomes the number."""
    for name, hint in field_types().items():
        value = getattr(config, name)
        kinds = {t for t in typing.get_args(hint) if t is not type(None)} if typing.get_origin(hint) is typing.Union else {hint}
        if value is None and type(None) in typing.get_args(hint):
            continue
        if typing.get_origin(hint) is Literal:
            if value not in typing.get_args(hint):
                raise ConfigError(f"{name} is {value!r}: use one of {', '.join(map(repr, typing.get_args(hint)))}")
        elif float in kinds and isinstance(value, str):
            try:
                setattr(config, name, value := float(value))
            except ValueError:
                raise ConfigError(f"{name} is {value!r}: expected a number") from None
        if (int in kinds or float in kinds) and (isinstance(value, bool) or not isinstance(value, (int, float)) or (float not in kinds and not isinstance(value, int))):
            raise ConfigError(f"{name} is {value!r}: expected {'an integer' if float not in kinds else 'a number'}")
        if name in POSITIVE and value < 1:
            raise ConfigError(f"{name} is {value}: it must be 1 or more")
    if config.block_size > MAX_BLOCK_SIZE:
        raise ConfigError(f"block_size is {config.block_size}: it must be at most {MAX_BLOCK_SIZE} (2**24 tokens, more than any model's context)")
    if not 0 <= config.rotary_percentage <= 1:
        raise ConfigError(f"rotary_percentage is {config.rotary_percentage}: use a fraction of each head in [0, 1]")
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ConfigError(f"rope_scaling type {kind!r} is not supported: use one of {', '.join(ROPE_TYPES)} (or none)")


@dataclass
class Config:
    name: str = ""
    """Our name for the model (``Llama-3.2-1B``)."""
    hf_config: dict = field(default_factory=dict)
    """Where the weights live on the Hugging Face hub: ``dict(org=..., name=...)``."""
    architecture: str = "LlamaForCausalLM"
    """The ``transformers`` class whose checkpoints these weights convert from and to (``convert``)."""

    # --- sizes
    block_size: int = 4096
    """Longest sequence the model is built for (the KV cache and RoPE tables are this long)."""
    vocab_size: int = 50304
    """Rows of the embedding and columns of the output head (the checkpoint's ``vocab_size``)."""
    n_layer: int = 16
    n_embd: int = 4096
    n_head: int = 32
    """Query heads."""
    n_query_groups: Optional[int] = None
    """Key/value heads (GQA); ``None`` means one per query head, 1 means multi-query attention."""
    head_size: Optional[int] = None
    """Width of one head; ``None`` means ``n_embd // n_head``."""
    intermediate_size: Optional[int] = None
    """Hidden width of the MLP; ``None`` means ``4 * n_embd``."""

    # --- normalization
    norm_class_name: Literal["LayerNorm", "RMSNorm"] = "LayerNorm"
    norm_eps: float = 1e-5
    norm_affine: bool = True
    """Whether the norms carry a learned scale (and, for LayerNorm, a bias). OLMo-1 has none."""
    norm_unit_offset: bool = False
    """RMSNorm multiplies by ``1 + weight`` (Gemma) instead of ``weight``."""
    pre_norm: bool = True
    """Normalize the input of attention and MLP. OLMo-2 normalizes only their outputs (``post_*_norm``)."""
    post_attention_norm: bool = False
    """Normalize the attention output before the residual add (Gemma 2/3, OLMo-2)."""
    post_mlp_norm: bool = False
    """Normalize the MLP output before the residual add (Gemma 2/3, OLMo-2)."""
    norm_qk: bool = False
    """Normalize queries and keys before RoPE (Qwen3, Gemma 3, OLMo-2)."""
    norm_qk_per_head: bool = True
    """``True``: one norm of width ``head_size`` shared by all heads; ``False``: one norm over all heads (OLMo-2)."""

    # --- residual layout
    parallel_residual: bool = False
    """``x + attn(norm_1(x)) + mlp(norm_2(x))`` instead of the sequential block (GPT-NeoX, Phi-2, Falcon)."""
    shared_attention_norm: bool = False
    """With ``parallel_residual``: attention and MLP read the same ``norm_1(x)`` (Phi-2, Falcon-7B)."""

    # --- linear layers
    bias: bool = False
    """Bias on every linear layer of the blocks."""
    attn_bias: bool = False
    """Bias on the query/key/value projection only (Qwen2, StableLM-2)."""
    lm_head_bias: bool = False
    tie_embeddings: bool = False
    """The output head shares the embedding matrix."""
    scale_embeddings: bool = False
    """Multiply embeddings by ``sqrt(n_embd)`` (Gemma)."""

    # --- attention
    attention_scores_scalar: Optional[int] = None
    """Scores are scaled by ``attention_scores_scalar ** -0.5`` instead of ``head_size ** -0.5`` (Gemma 2/3)."""
    attention_logit_softcapping: Optional[float] = None
    """``cap * tanh(scores / cap)`` on attention scores (Gemma 2)."""
    final_logit_softcapping: Optional[float] = None
    """``cap * tanh(logits / cap)`` on the output logits (Gemma 2)."""
    sliding_window: Optional[int] = None
    """Each query sees at most this many most recent positions (itself included) on sliding layers."""
    sliding_window_pattern: int = 1
    """With ``sliding_window``: 1 means every layer slides; k means every k-th layer (k-1, 2k-1, ...) is global."""
    clip_qkv: Optional[float] = None
    """Clamp the query/key/value projections to ``[-clip_qkv, clip_qkv]`` (OLMo)."""

    # --- rotary position embedding
    rotary_percentage: float = 1.0
    """Fraction of each head that is rotated (0.25 for GPT-NeoX, 0.4 for Phi-2)."""
    rope_base: float = 10000.0
    rope_scaling: Optional[dict] = None
    """Hugging Face style: ``{"rope_type": "linear"|"llama3"|"yarn"|"longrope", ...}``; on global layers only."""
    rope_local_base: Optional[float] = None
    """RoPE base of the sliding-window layers when it differs from ``rope_base`` (Gemma 3)."""
    rope_recompute_at_switch: bool = False
    """With longrope: generation recomputes the whole sequence's keys with the long factors at the first step past
    ``original_max_position_embeddings``, as transformers' Phi-3 does (else cached keys keep the short factors and only
    new positions rotate with the long ones, as transformers' Llama does)."""

    # --- MLP
    mlp_class_name: Literal["GeluMLP", "GatedMLP", "MoE"] = "GeluMLP"
    """``GeluMLP``: proj(act(fc(x))); ``GatedMLP``: proj(act(fc_1(x)) * fc_2(x)); ``MoE``: routed GatedMLP experts."""
    mlp_activation: Literal["gelu", "gelu_tanh", "silu"] = "gelu"
    n_expert: int = 0
    n_expert_per_token: int = 0
    moe_intermediate_size: Optional[int] = None
    """Hidden width of one expert; ``None`` means ``intermediate_size``."""
    moe_norm_topk_prob: bool = True
    """Renormalize the selected experts' routing weights to sum to 1 (Mixtral; Qwen3-MoE's ``norm_topk_prob``)."""

    def __post_init__(self) -> None:
        check_values(self)
        if not self.name:
            self.name = self.hf_config.get("name", "")
        if self.n_query_groups is None:
            self.n_query_groups = self.n_head
        if self.head_size is None:
            if self.n_embd % self.n_head:
                raise ConfigError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: set head_size")
            self.head_size = self.n_embd // self.n_head
        if self.n_head % self.n_query_groups:
            raise ConfigError(f"n_head={self.n_head} is not a multiple of n_query_groups={self.n_query_groups}")
        if self.intermediate_size is None:
            if self.mlp_class_name != "GeluMLP":
                raise ConfigError(f"{self.mlp_class_name} needs intermediate_size")
            self.intermediate_size = 4 * self.n_embd
        if self.mlp_class_name == "MoE":
            if not 0 < self.n_expert_per_token <= self.n_expert:
                raise ConfigError(f"MoE needs 0 < n_expert_per_token <= n_expert, got {self.n_expert_per_token}, {self.n_expert}")
            if self.moe_intermediate_size is None:
                self.moe_intermediate_size = self.intermediate_size
        if self.parallel_residual and not self.pre_norm:
            raise ConfigError("parallel_residual needs pre_norm")

    # ------------------------------------------------------------------ derived
    @property
    def rope_n_elem(self) -> int:
        """How many channels of each head RoPE rotates."""
        return int(self.rotary_percentage * self.head_size)

    @property
    def qkv_size(self) -> int:
        return (self.n_head + 2 * self.n_query_groups) * self.head_size

    def is_sliding(self, layer: int) -> bool:
        """Whether ``layer`` (0-based) uses the sliding window."""
        if self.sliding_window is None:
            return False
        return self.sliding_window_pattern == 1 or (layer + 1) % self.sliding_window_pattern != 0

    # ------------------------------------------------------------------ lookup
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "Config":
        """Our registry name or a Hugging Face repo id (``meta-llama/Llama-3.2-1B``)."""
        entry = find_config(name)
        return cls.from_dict({**entry, **overrides})

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "Config":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no model config at {path}: expected a model_config.yaml written by convert or pretrain")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
            reason = f"line {mark.line + 1}: {problem}" if mark is not None and problem else " ".join(str(err).split())
            raise ConfigError(f"{path} is not valid YAML ({reason}): convert or download the checkpoint again") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} holds a {type(data).__name__}, not the fields of a model config: convert or download the checkpoint again")
        return cls.from_dict({**data, **overrides})

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            close = [m for key in unknown for m in difflib.get_close_matches(key, known, n=1)]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown model config keys {unknown}{hint}; valid keys are the fields of litgpt_clone.Config")
        return cls(**data)

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str | Path, **overrides: Any) -> "Config":
        return cls.from_file(Path(checkpoint_dir) / "model_config.yaml", **overrides)

    @classmethod
    def from_hf_config(cls, path_or_dict: str | Path | dict, **overrides: Any) -> "Config":
        """Map a Hugging Face ``config.json`` (path, folder or dict) of an architecture we implement."""
        from litgpt_clone.checkpoints.convert import config_from_hf

        if isinstance(path_or_dict, dict):
            hf = path_or_dict
        else:
            path = Path(path_or_dict)
            if path.is_dir():
                path = path / "config.json"
            if not path.is_file():
                raise ConfigError(f"no config.json at {path}: point at a Hugging Face checkpoint folder")
            from litgpt_clone.checkpoints.io import fetch_again

            try:
                hf = json.loads(path.read_text())
            except ValueError as err:  # (UnicodeDecodeError too)
                raise ConfigError(f"{path} is not valid JSON ({err}): {fetch_again(path, 'download the checkpoint again')}") from None
            if not isinstance(hf, dict):
                raise ConfigError(f"{path} holds a JSON {type(hf).__name__}, not settings: {fetch_again(path, 'download the checkpoint again')}")
        return cls.from_dict({**config_from_hf(hf), **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------- registry
def all_configs() -> list[dict]:
    """Every named config, in family order."""
    from litgpt_clone.configs import FAMILIES

    return [entry for family in FAMILIES for entry in family.configs]


def name_to_config() -> dict[str, dict]:
    return {c["name"]: c for c in all_configs()}


def find_config(name: str) -> dict:
    """The registry entry for our name or an HF repo id; unknown names list the closest matches."""
    by_name = name_to_config()
    if name in by_name:
        return dict(by_name[name])
    by_repo = {f"{c['hf_config']['org']}/{c['hf_config']['name']}": c for c in by_name.values() if c.get("hf_config")}
    lowered = {k.lower(): v for k, v in {**by_name, **by_repo}.items()}
    if name.lower() in lowered:
        return dict(lowered[name.lower()])
    tail = name.split("/")[-1]
    if tail in by_name:
        return dict(by_name[tail])
    close = difflib.get_close_matches(tail, list(by_name), n=5, cutoff=0.5)
    hint = f" Closest: {', '.join(close)}." if close else ""
    raise ConfigError(f"unknown model {name!r}.{hint} Run `litgpt-clone models` to list all names.")
