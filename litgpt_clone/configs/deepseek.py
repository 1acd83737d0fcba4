"""DeepSeek-R1 distilled into Llama 3.1 / 3.3 (``LlamaForCausalLM``) and Qwen2.5 (``Qwen2ForCausalLM``) models."""

from litgpt_clone.configs.llama import LLAMA, LLAMA_3_1_8B, LLAMA_3_1_70B
from litgpt_clone.configs.qwen import QWEN_2, SIZES as QWEN_SIZES


def entry(base: dict, name: str, **changes) -> dict:
    return dict(base, name=name, hf_config=dict(org="deepseek-ai", name=name), **changes)


configs: list[dict] = [
    entry(dict(LLAMA, **LLAMA_3_1_8B), "DeepSeek-R1-Distill-Llama-8B"),
    entry(dict(LLAMA, **LLAMA_3_1_70B), "DeepSeek-R1-Distill-Llama-70B"),
    # From Qwen2.5-Math-1.5B/7B (rope_theta 10000) and Qwen2.5-14B/32B (1e6); all 131072 context, none tied.
    entry(dict(QWEN_2, **QWEN_SIZES["1.5B"]), "DeepSeek-R1-Distill-Qwen-1.5B", block_size=131072, rope_base=10000.0,
          tie_embeddings=False),
    entry(dict(QWEN_2, **QWEN_SIZES["7B"]), "DeepSeek-R1-Distill-Qwen-7B", block_size=131072, rope_base=10000.0),
    entry(dict(QWEN_2, **QWEN_SIZES["14B"]), "DeepSeek-R1-Distill-Qwen-14B", block_size=131072, norm_eps=1e-5),
    entry(dict(QWEN_2, **QWEN_SIZES["32B"]), "DeepSeek-R1-Distill-Qwen-32B", block_size=131072, norm_eps=1e-5),
]
