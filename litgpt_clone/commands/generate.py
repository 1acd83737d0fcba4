"""``litgpt-clone generate``: continue one prompt, streaming the text to stdout and the speed to stderr."""

from __future__ import annotations

import sys
from typing import Optional, Union

from litgpt_clone.generate import GenerationError


def generate(
    checkpoint_dir: str,
    prompt: str = "What food do llamas eat?",
    max_new_tokens: int = 50,
    temperature: float = 0.8,
    top_k: Optional[int] = 50,
    top_p: float = 1.0,
    min_p: float = 0.0,
    stop: Union[str, list[str], None] = None,
    seed: Optional[int] = None,
    num_samples: int = 1,
    precision: Optional[str] = None,
    quantize: Optional[str] = None,
    compile: bool = False,
    draft_model: Optional[str] = None,
    speculative_k: int = 4,
    chat_template: Optional[bool] = None,
    system: Optional[str] = None,
    device: str = "auto",
) -> None:
    """Continue a prompt: the text streams to stdout, time to first token, tokens/s and peak memory go to stderr.

    Args:
        checkpoint_dir: Native checkpoint folder, hub repo id (downloaded and converted on first use) or model name.
        prompt: The text to continue (or, through the chat template, the user's message).
        max_new_tokens: Most tokens to generate; prompt + max_new_tokens must fit the model's context.
        temperature: 0 is greedy; higher values sample more freely.
        top_k: Sample among the k most likely tokens only (None: all).
        top_p: Sample within the smallest set of tokens whose probability adds up to top_p (1.0: off).
        min_p: Drop tokens less likely than min_p times the most likely one (0: off).
        stop: Stop before this text; several: ``--stop "A" --stop "B"`` (or ``--stop '["A", "B"]'``). Generation
            also stops at the tokenizer's EOS and at every eos_token_id of generation_config.json.
        seed: Seed for sampling: the same seed gives the same text (sample i uses seed + i).
        num_samples: How many continuations to generate, one after the other.
        precision: "32-true", "bf16-true" or "16-true"; default bf16 on a GPU that supports it, else fp32.
        quantize: Quantize the weights with bitsandbytes: bnb.nf4, bnb.nf4-dq, bnb.fp4, bnb.fp4-dq or bnb.int8.
        compile: torch.compile the decode step (CUDA graphs on a GPU). Compiling takes a while once. Not with --draft_model.
        draft_model: A smaller checkpoint with the same tokenizer (checked) for speculative decoding.
        speculative_k: Tokens the draft model proposes per step.
        chat_template: Wrap the prompt in the checkpoint's chat template as a user message. Default: when the
            tokenizer has one (instruct checkpoints); ``--chat_template false`` sends the prompt as it is.
        system: System message for the chat template.
        device: "auto" (a GPU if there is one), "cpu" or "cuda[:N]".
    """
    from litgpt_clone.api import LLM

    if not prompt:
        raise GenerationError("the prompt is empty: pass --prompt with some text")
    from litgpt_clone.commands.chat import utf8

    prompt, replaced = utf8(prompt)  # (a traceback from the tokenizer, before)
    if replaced:
        print("note: --prompt was not valid UTF-8: its undecodable bytes became U+FFFD", file=sys.stderr)
    if num_samples < 1:
        raise GenerationError(f"--num_samples {num_samples}: ask for at least 1 sample")
    llm = LLM.load(checkpoint_dir, device=device, precision=precision, quantize=quantize, compile=compile, draft_model=draft_model)
    use_template = bool(llm.tokenizer.chat_template) if chat_template is None else chat_template
    if use_template and not llm.tokenizer.chat_template:
        unused = ", without --system (the plain style keeps the user's message only)" if system else ""
        print(f"note: this checkpoint has no chat template: the prompt goes in as plain text (the 'plain' style){unused}", file=sys.stderr)
    elif system and not use_template:
        print("note: --system is not used: it goes into a chat template, and the prompt is sent as it is here", file=sys.stderr)
    if use_template:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        ids = llm.encode_chat(messages)
    else:
        ids = llm.encode(prompt)
    sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, stop=stop, speculative_k=speculative_k)
    for i in range(num_samples):
        for pieces in llm.stream_ids([ids], seed=None if seed is None else seed + i, **sampling):
            sys.stdout.write(pieces[0])
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        print(format_stats(llm.last_stats, llm.device), file=sys.stderr, flush=True)


def format_stats(stats: dict, device) -> str:
    """One line: time to first token, tokens and tokens/s, peak memory."""
    rate = "-" if stats["tokens_per_s"] is None else f"{stats['tokens_per_s']:.1f}"
    memory = "peak allocated" if device.type == "cuda" else "peak RSS"
    return (
        f"Time to first token: {stats['time_to_first_token_s']:.3f} s; {stats['new_tokens']} tokens in {stats['total_s']:.2f} s,"
        f" {rate} tokens/s after the first; {memory} {stats['peak_memory_bytes'] / 1e9:.2f} GB"
    )
