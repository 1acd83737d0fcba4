"""``LLM``: a checkpoint ready to generate text, for Python users and for the ``generate``/``chat`` commands.

    from litgpt_clone import LLM

    llm = LLM.load("checkpoints/Qwen/Qwen3-0.6B")         # a folder, a hub repo id or a registry name
    llm.generate("The capital of France is", max_new_tokens=20)
    for piece in llm.stream("Once upon a time"):
        print(piece, end="", flush=True)
    llm.chat([{"role": "user", "content": "Hi!"}])         # through the checkpoint's chat template
    llm.benchmark(max_new_tokens=64)                        # time to first token, tokens/s, peak memory
"""

from __future__ import annotations

import re
import resource
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch

from litgpt_clone.generate import GenerationError, TextStream, check_sampling, check_seed, stream
from litgpt_clone.model import GPT
from litgpt_clone.tokenizer import Tokenizer

PRECISIONS = {"32-true": torch.float32, "bf16-true": torch.bfloat16, "16-true": torch.float16}
"""The ``precision`` names (Lightning's) and the dtype the weights are loaded in."""


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise GenerationError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GenerationError(f"device {device!r} asked for but no CUDA GPU is visible: use cpu (--device cpu; LLM.load(..., device='cpu'))")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise GenerationError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    return torch.device(device)


def resolve_precision(precision: Optional[str], device: torch.device) -> torch.dtype:
    """The weights' dtype: ``precision`` if given, else bf16 on a GPU that has it, else fp32."""
    if precision is None:
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    if precision not in PRECISIONS:
        raise GenerationError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def find_checkpoint(model: Union[str, Path]) -> Path:
    """A native checkpoint folder for a folder, a hub repo id or a registry name (downloaded on first use)."""
    from litgpt_clone.checkpoints.io import REPO_ID, resolve_checkpoint

    path = Path(model)
    text = str(model)
    folder = path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1 or text.endswith("/")  # not a name
    if path.exists() or REPO_ID.match(text) or folder:
        return resolve_checkpoint(model)  # (a folder that is not there: an error naming what it should hold)
    from litgpt_clone.config import ConfigError, find_config

    try:
        hf = find_config(text).get("hf_config") or {}
    except ConfigError as err:  # (a mistyped folder name reads as a model name)
        raise ConfigError(f"{err} (nor is there a folder {text!r} in {Path.cwd()})") from None
    if not hf:
        raise GenerationError(f"{model!r} is a registry name without hub weights: pass a checkpoint folder")
    return resolve_checkpoint(f"{hf['org']}/{hf['name']}")


def check_quantize(quantize: Optional[str]) -> None:
    from litgpt_clone.quantize import QUANTIZE_MODES

    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise GenerationError(f"unknown quantize mode {quantize!r}: use one of {', '.join(QUANTIZE_MODES)}")


def load_model(checkpoint_dir: Path, device: torch.device, dtype: torch.dtype, quantize: Optional[str]) -> GPT:
    """The checkpoint's model on ``device`` in ``dtype``, its Linear layers quantized if ``quantize`` names a mode.

    A quantized model is loaded on the CPU and each Linear is quantized as it moves to ``device``: the device never
    holds the whole full-precision model (an 8B model in bf16 is 16 GB; in nf4 about 5 GB)."""
    check_quantize(quantize)
    if quantize is None:
        return GPT.from_checkpoint(checkpoint_dir, device=device, dtype=dtype).eval()
    from litgpt_clone.quantize import quantize as quantize_model

    model = GPT.from_checkpoint(checkpoint_dir, device="cpu", dtype=dtype).eval()
    quantize_model(model, quantize, compute_dtype=dtype, device=device)  # 4-bit matmuls in the model's dtype, not fp32
    model.reset_rope(device)  # the tables built where they are used, as GPT.from_checkpoint(device=...) builds them
    return model.to(device)  # the rest: embeddings, norms, biases, the head


GENERATION_ARGS = ("max_new_tokens", "temperature", "top_k", "top_p", "min_p", "stop", "seed", "speculative_k")
LITGPT_ARGS = {
    "stream": "use llm.stream(prompt), which yields the text piece by piece",
    "sys_prompt": 'use llm.chat([{"role": "system", "content": ...}, {"role": "user", "content": prompt}])',
    "return_as_token_ids": "it returns text; litgpt_clone.generate.generate(llm.model, [llm.encode(prompt)], max_new_tokens, "
                           "stop_ids=llm.tokenizer.stop_ids) returns the new ids",
}
"""LitGPT's ``LLM.generate`` arguments and what does their work here."""

LITGPT_LOAD_ARGS = {
    "distribute": "LLM.load puts the model on one device itself (device=, precision=, quantize=); there is no llm.distribute()",
    "init": "LLM.load always loads the checkpoint's weights (LitGPT's init='pretrained'); for random ones use "
            "LLM(GPT.from_name(name), Tokenizer(checkpoint_dir))",
    "tokenizer_dir": "the tokenizer is read from the checkpoint folder: copy the tokenizer files (tokenizer.json, "
                     "tokenizer_config.json, ...) into it",
}
"""LitGPT's ``LLM.load`` arguments that have no counterpart here, and what to do instead."""

GREEDY_IGNORES = {"top_k": None, "top_p": 1.0, "min_p": 0.0, "seed": None}
"""The settings greedy decoding (temperature 0) does not use, with the values that would change nothing anyway."""


def check_generation_args(method: str, kwargs: dict) -> None:
    """A ``TypeError`` naming ``LLM.<method>`` (not the internal ``stream_ids``) for an argument it does not take."""
    for name in kwargs:
        if name not in GENERATION_ARGS:
            fix = LITGPT_ARGS.get(name, f"it takes {', '.join(GENERATION_ARGS)}")
            raise TypeError(f"LLM.{method}() got an unexpected keyword argument {name!r}: {fix}")


def warn_ignored_sampling(settings: dict) -> None:
    """One warning for sampling settings given with temperature 0: greedy decoding takes the most likely token and
    never looks at them (LitGPT's ``LLM.generate`` samples by default, so its users expect them to work; transformers
    warns the same way when ``do_sample`` is off). Settings that cannot work are one-line errors first."""
    given = {"temperature": 0.0, **GREEDY_IGNORES, **settings}
    check_sampling(given["temperature"], given["top_k"], given["top_p"], given["min_p"])
    check_seed(given["seed"])
    if given["temperature"] != 0:
        return
    ignored = [f"{name}={given[name]!r}" for name, off in GREEDY_IGNORES.items() if given[name] != off]
    if ignored:
        warnings.warn(
            f"{', '.join(ignored)} ignored: temperature 0 (the default) is greedy; pass temperature > 0 to sample", stacklevel=3
        )


def stop_list(stop) -> list[str]:
    """``stop`` (a string, a list of strings or None) as a list; a one-line error for anything else."""
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise GenerationError(f"stop is {stop!r}: give a string or a list of strings")


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: the most memory tensors held since the last reset; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class LLM:
    """A model, its tokenizer and its chat template on one device. Build it with ``LLM.load``.

    After every call, ``last_stats`` holds ``time_to_first_token_s``, ``new_tokens``, ``total_s``,
    ``tokens_per_s`` (tokens after the first one, over the time after the first one: the decode rate) and
    ``peak_memory_bytes`` (CUDA: peak allocated during the call; CPU: the process's peak RSS).
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, checkpoint_dir: Optional[Path] = None, compile: bool = False, draft_model: Optional[GPT] = None) -> None:
        self.model, self.tokenizer, self.checkpoint_dir = model, tokenizer, checkpoint_dir
        self.compile, self.draft_model = compile, draft_model
        self.device = model.transformer.wte.weight.device
        self.last_stats: dict = {}
        self.busy = threading.Lock()  # the model has one KV cache: one generation at a time
        self.generating_in: Optional[int] = None  # the thread whose generation holds it

    @classmethod
    def load(
        cls, model: Union[str, Path], device: str = "auto", precision: Optional[str] = None, quantize: Optional[str] = None,
        compile: bool = False, draft_model: Union[str, Path, None] = None, **kwargs,
    ) -> "LLM":
        """Load a checkpoint folder, hub repo id (downloaded and converted on first use) or registry name.

        Args:
            device: "auto" (a GPU if there is one), "cpu", "cuda", "cuda:1", ...
            precision: "32-true", "bf16-true" or "16-true"; default bf16 on a GPU that supports it, else fp32.
            quantize: bitsandbytes weight quantization: "bnb.nf4", "bnb.nf4-dq", "bnb.fp4", "bnb.fp4-dq", "bnb.int8".
            compile: ``torch.compile`` the decode step (CUDA graphs on GPU).
            draft_model: a smaller checkpoint with the same tokenizer for speculative decoding (one prompt at a time).
        """
        for name in kwargs:  # (LitGPT's distribute=, init=, tokenizer_dir=: say what does their work here)
            fix = LITGPT_LOAD_ARGS.get(name, "it takes model, device, precision, quantize, compile, draft_model")
            raise TypeError(f"LLM.load() got an unexpected keyword argument {name!r}: {fix}")
        dev = resolve_device(device)
        dtype = resolve_precision(precision, dev)
        checkpoint_dir = find_checkpoint(model)
        tokenizer = Tokenizer(checkpoint_dir)
        draft = None
        if draft_model is not None:
            if compile:
                raise GenerationError("speculative decoding (draft_model) runs uncompiled: leave out compile, or the draft model")
            draft_dir = find_checkpoint(draft_model)
            if Tokenizer(draft_dir).vocabulary_digest() != tokenizer.vocabulary_digest():  # (ids would mean other tokens)
                raise GenerationError(f"the draft model {draft_dir} has another tokenizer than {checkpoint_dir}: use a draft of the same family")
            draft = load_model(draft_dir, dev, dtype, quantize)
        return cls(load_model(checkpoint_dir, dev, dtype, quantize), tokenizer, checkpoint_dir, compile, draft)

    # ------------------------------------------------------------------ prompts
    def encode(self, prompt: str) -> torch.Tensor:
        """The prompt's token ids (BOS as the checkpoint adds it); an empty prompt is an error."""
        if not isinstance(prompt, str):
            raise GenerationError(f"a prompt is a string, not {type(prompt).__name__}: generate() takes a string or a list of strings")
        if not prompt:
            raise GenerationError("the prompt is empty: give some text to continue")
        return self.tokenizer.encode(prompt)

    def encode_chat(self, messages: Sequence[dict], style: Optional[str] = None, template_kwargs: Optional[dict] = None) -> torch.Tensor:
        """``messages`` through the checkpoint's chat template (or a fallback ``style``), ending with the header of
        the assistant's reply, as token ids; ``template_kwargs``: more template variables (``{"enable_thinking": False}``)."""
        from litgpt_clone.chat_template import chat_bos, render_for_tokenizer

        if isinstance(messages, (str, bytes)) or not all(isinstance(m, dict) for m in messages):
            raise GenerationError('messages must be a list of {"role": ..., "content": ...} dicts: for a plain prompt use generate()')
        if not messages or not any(m.get("content") for m in messages):
            raise GenerationError("the conversation is empty: give a message with some text")
        text = render_for_tokenizer(self.tokenizer, list(messages), style=style, **(template_kwargs or {}))
        return self.tokenizer.encode(text, bos=chat_bos(self.tokenizer, style))

    # ------------------------------------------------------------------ generation
    def stream_ids(
        self, prompts: Sequence[torch.Tensor], max_new_tokens: int = 50, temperature: float = 0.0, top_k: Optional[int] = None,
        top_p: float = 1.0, min_p: float = 0.0, stop: Union[str, Sequence[str], None] = None, seed: Optional[int] = None,
        speculative_k: int = 4,
    ) -> Iterator[list[str]]:
        """The core of every method: token-id prompts in, each row's new text piece per step out (stop ids and
        stop strings end a row; the last item holds what was held back). Sets ``last_stats``.

        One generation runs at a time (the model has one KV cache): another thread's call waits for it; in the same
        thread, a second one while a stream is unfinished is an error (it would read the other's cache)."""
        if self.generating_in == threading.get_ident():
            raise GenerationError(
                "this LLM is already generating in this thread (an unfinished stream): finish or close() it first, "
                "generate a batch with generate([...]), or load a second LLM"
            )
        with self.busy:
            self.generating_in = threading.get_ident()
            try:
                yield from self._stream_ids(prompts, max_new_tokens, temperature, top_k, top_p, min_p, stop, seed, speculative_k)
            finally:
                self.generating_in = None

    def _stream_ids(self, prompts, max_new_tokens, temperature, top_k, top_p, min_p, stop, seed, speculative_k) -> Iterator[list[str]]:
        stops = stop_list(stop)
        texts = [TextStream(self.tokenizer, stops) for _ in prompts]
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start, first, count = time.perf_counter(), None, 0
        steps = stream(
            self.model, prompts, max_new_tokens, temperature, top_k, top_p, min_p, stop_ids=self.tokenizer.stop_ids, seed=seed,
            compile=self.compile, draft_model=self.draft_model, speculative_k=speculative_k,
        )
        for step in steps:
            if first is None:
                first = time.perf_counter()
            pieces = []
            for new, text in zip(step, texts):
                if text.stopped:
                    pieces.append("")
                elif len(new) > 1 and text.stop_strings:  # a speculative chunk: its tokens after a stop string
                    piece = ""  # do not count (a token at a time, as plain decoding gives them)
                    for token in new:
                        piece, count = piece + text.add([token]), count + 1
                        if text.stopped:
                            break
                    pieces.append(piece)
                else:
                    pieces.append(text.add(new))
                    count += len(new)
            yield pieces
            if all(not new or text.stopped for new, text in zip(step, texts)):
                steps.close()
                break
        end = time.perf_counter()
        yield [text.flush() for text in texts]
        after_first = count - len(prompts)
        self.last_stats = dict(
            time_to_first_token_s=(first or end) - start, new_tokens=count, total_s=end - start,
            tokens_per_s=after_first / (end - first) if first is not None and after_first > 0 and end > first else None,
            peak_memory_bytes=peak_memory_bytes(self.device),
        )

    def stream(self, prompt: str, **kwargs) -> Iterator[str]:
        """Yield the continuation of ``prompt`` piece by piece as it is generated (keyword arguments as in
        ``generate``)."""
        if not isinstance(prompt, str):
            raise GenerationError(f"stream takes one prompt (a string), not a {type(prompt).__name__}: generate() takes a list")
        check_generation_args("stream", kwargs)
        warn_ignored_sampling(kwargs)
        for pieces in self.stream_ids([self.encode(prompt)], **kwargs):
            if pieces[0]:
                yield pieces[0]

    def generate(
        self, prompt: Union[str, Sequence[str]], max_new_tokens: int = 50, temperature: float = 0.0, top_k: Optional[int] = None,
        top_p: float = 1.0, **kwargs,
    ) -> Union[str, list[str]]:
        """The continuation of ``prompt`` (a string), or of each prompt of a list (generated as one batch).

        ``temperature`` (0: greedy, the default), ``top_k``, ``top_p`` (positional in this order, as in LitGPT's
        ``LLM.generate``); keyword arguments: ``min_p``, ``stop`` (a string or a list: the text ends just before the
        first one), ``seed`` (same seed, same text). The prompt is used as it is; ``chat`` applies the chat template.
        """
        check_generation_args("generate", kwargs)
        kwargs = dict(temperature=temperature, top_k=top_k, top_p=top_p, **kwargs)
        warn_ignored_sampling(kwargs)
        return self._complete(prompt, max_new_tokens, kwargs)

    def _complete(self, prompt: Union[str, Sequence[str]], max_new_tokens: int, kwargs: dict) -> Union[str, list[str]]:
        if not isinstance(prompt, (str, list, tuple)):
            raise GenerationError(f"prompt is {type(prompt).__name__}: give a string, or a list of strings for a batch")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        outputs = ["" for _ in prompts]
        for pieces in self.stream_ids([self.encode(p) for p in prompts], max_new_tokens, **kwargs):
            outputs = [o + p for o, p in zip(outputs, pieces)]
        return outputs[0] if isinstance(prompt, str) else outputs

    def chat(
        self, messages: Sequence[dict], stream: bool = False, style: Optional[str] = None, template_kwargs: Optional[dict] = None, **kwargs,
    ) -> Union[str, Iterator[str]]:
        """The assistant's reply to ``messages`` (``[{"role": "user", "content": "Hi"}, ...]``), rendered with the
        checkpoint's chat template (or ``style``, a fallback such as "chatml" or "alpaca"; ``template_kwargs``: more
        template variables, e.g. ``{"enable_thinking": False}`` for Qwen 3). ``stream=True`` gives an iterator of
        pieces instead of the whole reply. Keyword arguments as in ``generate``.

        A checkpoint without a chat template gets the "plain" style, which keeps only the last user message: a
        warning says so when other messages are left out (pass ``style`` to keep them)."""
        check_generation_args("chat", kwargs)
        ids = self.encode_chat(messages, style, template_kwargs)
        warn_ignored_sampling(kwargs)
        if self.tokenizer.chat_template is None and style in (None, "auto"):
            last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
            if dropped := sum(1 for m in messages if m is not last_user and m.get("content")):
                warnings.warn(
                    "this checkpoint has no chat template: the messages go in as plain text (the 'plain' style), which keeps the"
                    f" last user message only ({dropped} other message(s) left out): pass style= (chatml, llama3, alpaca, ...) to"
                    " keep them", stacklevel=2,
                )
        pieces = (p[0] for p in self.stream_ids([ids], **kwargs))
        if stream:
            return (p for p in pieces if p)
        return "".join(pieces)

    def benchmark(self, prompt: str = "A long time ago, in a galaxy far, far away,", max_new_tokens: int = 64, num_iterations: int = 3, **kwargs) -> dict:
        """Generate ``num_iterations`` times (after one warm-up) and report the medians of time to first token
        (s), decode tokens/s and total time, the new tokens of the last run and peak memory (bytes)."""
        check_generation_args("benchmark", kwargs)
        warn_ignored_sampling(kwargs)
        if num_iterations < 1:
            raise GenerationError(f"num_iterations is {num_iterations}: time at least 1 run")
        runs = []
        for i in range(num_iterations + 1):
            text = self._complete(prompt, max_new_tokens, kwargs)
            if i:
                runs.append(self.last_stats)
        median = lambda key: sorted(r[key] for r in runs)[len(runs) // 2] if all(r[key] is not None for r in runs) else None  # noqa: E731
        return dict(
            time_to_first_token_s=median("time_to_first_token_s"), tokens_per_s=median("tokens_per_s"), total_s=median("total_s"),
            new_tokens=runs[-1]["new_tokens"], peak_memory_bytes=max(r["peak_memory_bytes"] for r in runs), text=text,
        )

    def __repr__(self) -> str:
        return f"LLM({self.checkpoint_dir or self.model.config.name!r}, device={self.device}, dtype={self.model.transformer.wte.weight.dtype})"
