"""LoRA adapters in PEFT's format, checked against ``peft`` itself (the library that writes the adapters on the Hub
and whose folders vLLM's ``--lora-modules`` loads):

- ``convert to_peft`` of a ``finetune lora`` checkpoint: ``peft.PeftModel.from_pretrained`` over the transformers
  model gives our adapted model's logits, for families whose HF layers split our fused ones (Llama's q/k/v), fuse
  them differently (GPT-NeoX's per-group ``query_key_value``, Falcon's) or fuse ours (Phi-3's ``gate_up_proj``);
- a PEFT adapter made by ``peft`` (rank_pattern, alpha_pattern, rsLoRA) served over our model, and merged into it
  with ``merge_lora``: its logits are ``PeftModel``'s.
"""

from __future__ import annotations

import json
import re
import shutil

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    FalconConfig, FalconForCausalLM, Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, GPTNeoXConfig,
    GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM, PhiConfig, PhiForCausalLM,
    SiglipVisionConfig,
)

from litgpt_clone.checkpoints.convert import convert_hf_checkpoint
from litgpt_clone.checkpoints.io import CheckpointError
from litgpt_clone.commands.convert import convert_to_peft
from litgpt_clone.commands.finetune import merge_lora
from litgpt_clone.config import ConfigError
from litgpt_clone.lora import LoRAArgs, inject_lora
from litgpt_clone.model import GPT
from litgpt_clone.serve.multi_lora import attach_adapters
from parity import build_hf
from test_serve_lora_eval import write_adapter

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
FAMILIES = {
    # (HF model, config, the LoRA our checkpoint is trained with, the PEFT rank and target modules of block 1)
    "llama": (
        LlamaForCausalLM, LlamaConfig(**TINY, num_key_value_heads=2), LoRAArgs(r=4, alpha=8, dropout=0.0),
        4, ["self_attn.q_proj", "self_attn.v_proj"],
    ),
    "gpt-neox": (  # query and value rows interleaved per head in query_key_value (rank 2r); the MLP too
        # and the head, embed_out in the checkpoint but the module lm_head in transformers 5 (which PEFT names)
        GPTNeoXForCausalLM, GPTNeoXConfig(**TINY), LoRAArgs(r=4, alpha=16, dropout=0.0, mlp=True, head=True),
        8, ["attention.query_key_value", "mlp.dense_4h_to_h", "mlp.dense_h_to_4h"],
    ),
    "falcon": (  # grouped query_key_value (2 groups), keys only, the projection, upper block only
        FalconForCausalLM, FalconConfig(**TINY, new_decoder_architecture=True, num_kv_heads=2, bias=False),
        LoRAArgs(r=2, alpha=2, dropout=0.0, query=False, key=True, value=False, projection=True, layers=(1, 2)),
        2, ["self_attention.dense", "self_attention.query_key_value"],
    ),
    "phi3": (  # qkv_proj (3r), gate_up_proj (our fc_1; fc_2: 2r), the head
        Phi3ForCausalLM, Phi3Config(**TINY, num_key_value_heads=2, pad_token_id=0),
        LoRAArgs(r=4, alpha=8, dropout=0.0, key=True, projection=True, mlp=True, head=True),
        12, ["mlp.down_proj", "mlp.gate_up_proj", "self_attn.o_proj", "self_attn.qkv_proj"],
    ),
}


def ids() -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_exported_adapter_is_the_same_model_in_peft(family, tmp_path):
    model_cls, config, args, rank, modules = FAMILIES[family]
    hf_model = build_hf(model_cls, config, tmp_path / "hf")
    base = convert_hf_checkpoint(tmp_path / "hf", tmp_path / "native")
    lora_dir = write_adapter(base, tmp_path / "lora", args, seed=1)
    ours = inject_lora(GPT.from_checkpoint(base), args)
    ours.load_state_dict(load_file(lora_dir / "lora.safetensors"), strict=False)
    convert_to_peft(lora_dir, tmp_path / "peft", base_model=str(tmp_path / "hf"))
    settings = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert settings["base_model_name_or_path"] == str(tmp_path / "hf") and not settings.get("rank_pattern")
    prefix = hf_model.base_model_prefix + ".layers.1." if family != "falcon" else "transformer.h.1."
    assert settings["r"] == rank and [m.removeprefix(prefix) for m in settings["target_modules"] if m.startswith(prefix)] == modules
    # the scale alpha / r is PEFT's too: a fused module holding q and v has rank 2r and alpha 2 * alpha
    assert settings["lora_alpha"] / settings["r"] == args.alpha / args.r
    with torch.no_grad():
        expected, base_logits = ours.eval()(ids()), hf_model(ids()).logits
        got = peft.PeftModel.from_pretrained(hf_model, tmp_path / "peft").eval()(ids()).logits  # (adapts hf_model in place)
    assert (expected - base_logits).abs().max() > 0.05  # the adapter changes the model (else this could not fail)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    # and back: served from the PEFT folder, our model gives the same logits again
    model = GPT.from_checkpoint(base).eval()
    attach_adapters(model, [("peft", tmp_path / "peft")], max_rows=2).select([1, 0])
    with torch.no_grad():
        served = model(ids())
    torch.testing.assert_close(served[0], expected[0], atol=2e-5, rtol=0)
    torch.testing.assert_close(served[1], base_logits[1], atol=2e-5, rtol=0)  # row 1 asked for the base model


def test_a_peft_made_adapter_serves_with_peft_logits(tmp_path):
    """Written by peft itself, with what Hub adapters use: per-module ranks and alphas, rsLoRA scaling."""
    model_cls, config, *_ = FAMILIES["llama"]
    hf_model = build_hf(model_cls, config, tmp_path / "hf")
    base = convert_hf_checkpoint(tmp_path / "hf", tmp_path / "native")
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "o_proj", "gate_proj", "down_proj", "lm_head"],
        rank_pattern={"o_proj": 2}, alpha_pattern={"down_proj": 3}, use_rslora=True, init_lora_weights=False,
        layers_to_transform=None, task_type="CAUSAL_LM",
    )
    torch.manual_seed(3)
    peft_model = peft.get_peft_model(hf_model, lora).eval()
    peft_model.save_pretrained(tmp_path / "peft")
    with torch.no_grad():
        expected = peft_model(ids()).logits
        with peft_model.disable_adapter():
            plain = peft_model(ids()).logits
    assert (expected - plain).abs().max() > 0.05
    model = GPT.from_checkpoint(base).eval()
    attach_adapters(model, [("peft", tmp_path / "peft")], max_rows=2).select([1, 1])
    with torch.no_grad():
        torch.testing.assert_close(model(ids()), expected, atol=2e-5, rtol=0)
    # merged into the native base: a checkpoint that generate, chat and serve take
    for _ in range(2):  # (the second merge replaces the first, as merge_lora's --help says)
        merge_lora(tmp_path / "peft", base=str(base), out_dir=tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(GPT.from_checkpoint(tmp_path / "merged")(ids()), expected, atol=2e-5, rtol=0)
    with pytest.raises(ConfigError, match="is not empty: give a new or empty folder"):
        merge_lora(tmp_path / "peft", base=str(base), out_dir=tmp_path / "hf")
    # the base: --base, else the one adapter_config.json names (none here: the model was built, not loaded)
    with pytest.raises(ConfigError, match="adapter_config.json names no base model: pass --base <the native checkpoint"):
        merge_lora(tmp_path / "peft", out_dir=tmp_path / "merged2")
    with pytest.raises(ConfigError, match="is a PEFT adapter, which merge_lora leaves as it is: give --out_dir"):
        merge_lora(tmp_path / "peft", base=str(base))


def test_a_multimodal_gemma3_bases_adapters_name_its_text_modules(tmp_path):
    """Gemma 3 4B/12B/27B are Gemma3ForConditionalGeneration: their text half converts to our Gemma3ForCausalLM, and
    PEFT adapters of them name model.language_model.layers.* (transformers' modules in memory; the checkpoint says
    language_model.model.*). Both ways: a peft-made adapter serves, ours exports under those names."""
    text = Gemma3TextConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=16, sliding_window=6)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=95, boi_token_index=93, eoi_token_index=94)
    hf_model = build_hf(Gemma3ForConditionalGeneration, config, tmp_path / "hf")
    base = convert_hf_checkpoint(tmp_path / "hf", tmp_path / "native")
    ours = inject_lora(GPT.from_checkpoint(base), args := LoRAArgs(r=4, alpha=8, dropout=0.0, mlp=True))
    ours.load_state_dict(load_file(write_adapter(base, tmp_path / "lora", args, seed=1) / "lora.safetensors"), strict=False)
    convert_to_peft(tmp_path / "lora", tmp_path / "peft", base_model=str(tmp_path / "hf"))
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["target_modules"][0] == "model.language_model.layers.0.mlp.down_proj"
    with torch.no_grad():
        expected = ours.eval()(ids())
        got = peft.PeftModel.from_pretrained(hf_model, tmp_path / "peft").eval()(input_ids=ids()).logits
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    model = GPT.from_checkpoint(base).eval()  # and its own adapter (names of the model in memory) served back
    attach_adapters(model, [("x", tmp_path / "peft")], max_rows=2).select([1, 1])
    with torch.no_grad():
        torch.testing.assert_close(model(ids()), expected, atol=2e-5, rtol=0)


def test_hub_style_adapters_pickled_weights_and_a_head_with_a_bias(tmp_path):
    """Older Hub adapters are adapter_model.bin (read with weights_only, as vLLM reads them); peft saves a copy of
    the head's weight and bias beside an adapter of a head (Phi-2's has a bias): skipped as copies of the base's."""
    hf_model = build_hf(PhiForCausalLM, PhiConfig(**TINY, partial_rotary_factor=0.5), tmp_path / "hf")
    base = convert_hf_checkpoint(tmp_path / "hf", tmp_path / "native")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False)
    torch.manual_seed(2)
    peft_model = peft.get_peft_model(hf_model, lora).eval()
    peft_model.save_pretrained(tmp_path / "peft", safe_serialization=False)
    assert not (tmp_path / "peft" / "adapter_model.safetensors").exists()
    with torch.no_grad():
        expected = peft_model(ids()).logits
    model = GPT.from_checkpoint(base).eval()
    attach_adapters(model, [("x", tmp_path / "peft")], max_rows=2).select([1, 1])
    with torch.no_grad():
        torch.testing.assert_close(model(ids()), expected, atol=2e-5, rtol=0)


def test_unusable_peft_adapters_are_one_line_errors(tmp_path):
    model_cls, config, args, *_ = FAMILIES["llama"]
    hf_model = build_hf(model_cls, config, tmp_path / "hf")
    base = convert_hf_checkpoint(tmp_path / "hf", tmp_path / "native")
    cases = {
        "dora": (peft.LoraConfig(r=2, target_modules=["q_proj"], use_dora=True), "uses DoRA"),
        "embedding": (peft.LoraConfig(r=2, target_modules=["embed_tokens"]), "adapts the embedding model.embed_tokens, which litgpt-clone's LoRA does not"),
        "saved": (peft.LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]), "uses fully trained modules (modules_to_save)"),
    }
    cases["alora"] = (peft.LoraConfig(r=2, target_modules=["q_proj"], alora_invocation_tokens=[7, 8]), "uses activated LoRA (aLoRA")
    for name, (lora, message) in cases.items():
        peft.get_peft_model(build_hf(model_cls, config, tmp_path / f"hf-{name}"), lora).save_pretrained(tmp_path / name)
        model = GPT.from_checkpoint(base)
        with pytest.raises(CheckpointError, match=f"^adapter 'x': {tmp_path / name} ") as err:
            attach_adapters(model, [("x", tmp_path / name)], max_rows=1)
        assert message in str(err.value) and "\n" not in str(err.value)
    # an adapter of another model (more layers than this one has)
    other = peft.get_peft_model(build_hf(model_cls, LlamaConfig(**{**TINY, "num_hidden_layers": 3}), tmp_path / "hf3"), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointError, match="adapts model.layers.2.self_attn.q_proj, which LlamaForCausalLM has no linear layer for"):
        attach_adapters(GPT.from_checkpoint(base), [("x", tmp_path / "other")], max_rows=1)
    # an adapter of a wider model; one whose config's r is not its weights'; one without weights; a broken config
    wide = peft.get_peft_model(build_hf(model_cls, LlamaConfig(**{**TINY, "hidden_size": 128}), tmp_path / "hf-wide"), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    wide.save_pretrained(tmp_path / "wide")
    peft.get_peft_model(build_hf(model_cls, config, tmp_path / "hf-plain"), peft.LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "rank")
    (tmp_path / "rank" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}))
    shutil.copytree(tmp_path / "rank", tmp_path / "empty")
    save_file({}, tmp_path / "empty" / "adapter_model.safetensors")
    shutil.copytree(tmp_path / "rank", tmp_path / "broken")
    (tmp_path / "broken" / "adapter_config.json").write_text('{"r": 8, ')
    for name, message in (("wide", "maps 128 features to 128, this model's 64 to 64: it is an adapter of another model"),
                          ("rank", "has rank 2, but its adapter_config.json says r 8"), ("empty", "holds no LoRA weights"),
                          ("broken", "adapter_config.json is not readable JSON")):
        with pytest.raises(CheckpointError, match=re.escape(message)):
            attach_adapters(GPT.from_checkpoint(base), [("x", tmp_path / name)], max_rows=1)
        with pytest.raises(CheckpointError, match=re.escape(message)):  # merge_lora says the same
            merge_lora(tmp_path / name, base=str(base), out_dir=tmp_path / f"merged-{name}")
    # export: a folder that is not a LoRA checkpoint, an out_dir holding a checkpoint
    with pytest.raises(CheckpointError, match="is not a LoRA checkpoint of `finetune lora`: it has no lora.safetensors, lora_config.yaml"):
        convert_to_peft(base)
    lora_dir = write_adapter(base, tmp_path / "lora", args, seed=1)
    with pytest.raises(CheckpointError, match="holds a checkpoint: give an --out_dir of its own"):
        convert_to_peft(lora_dir, out_dir=base)
