"""``litgpt-clone chat``: a multi-turn conversation in the terminal, through the checkpoint's chat template."""

from __future__ import annotations

import sys
from typing import Optional, Union

from litgpt_clone.generate import GenerationError

HELP = '/reset starts a new conversation, /exit or Ctrl-D quits, """ opens and closes a message of several lines.'
BLOCK = '"""'


def chat(
    checkpoint_dir: str,
    system: Optional[str] = None,
    max_new_tokens: int = 256,
    temperature: float = 0.8,
    top_k: Optional[int] = 50,
    top_p: float = 1.0,
    min_p: float = 0.0,
    stop: Union[str, list[str], None] = None,
    seed: Optional[int] = None,
    style: Optional[str] = None,
    precision: Optional[str] = None,
    quantize: Optional[str] = None,
    compile: bool = False,
    device: str = "auto",
) -> None:
    """Chat with a model: type a message, the reply streams back. /reset starts over, /exit or Ctrl-D quits; a
    message of several lines goes between \"\"\" (on its first and last line, as in ollama).

    The whole conversation goes through the checkpoint's chat template every turn; when it no longer fits the
    model's context (with room for max_new_tokens), the oldest turns are dropped and a note says so.

    Args:
        checkpoint_dir: Native checkpoint folder, hub repo id (downloaded and converted on first use) or model name.
        system: System message that opens the conversation (kept when old turns are dropped).
        max_new_tokens: Most tokens per reply.
        temperature: 0 is greedy; higher values sample more freely.
        top_k: Sample among the k most likely tokens only (None: all).
        top_p: Sample within the smallest set of tokens whose probability adds up to top_p (1.0: off).
        min_p: Drop tokens less likely than min_p times the most likely one (0: off).
        stop: Extra text that ends a reply (EOS and generation_config.json's eos ids always do).
        seed: Seed for sampling (turn i uses seed + i): the same conversation gives the same replies.
        style: Fallback prompt format when the checkpoint has no chat template (or to override it): chatml,
            llama2, llama3, alpaca or plain (auto, the default: the template, else plain). A style's end of turn
            (``<|im_end|>``, ``<|eot_id|>``, ...) also ends a reply.
        precision: "32-true", "bf16-true" or "16-true"; default bf16 on a GPU that supports it, else fp32.
        quantize: Quantize the weights with bitsandbytes: bnb.nf4, bnb.nf4-dq, bnb.fp4, bnb.fp4-dq or bnb.int8.
        compile: torch.compile the decode step (CUDA graphs on a GPU).
        device: "auto" (a GPU if there is one), "cpu" or "cuda[:N]".
    """
    from litgpt_clone.api import LLM
    from litgpt_clone.chat_template import ChatTemplateError, check_style
    from litgpt_clone.commands.generate import format_stats
    from litgpt_clone.generate import check_sampling

    check_style(style)  # the settings are checked before the first turn, not after it
    check_sampling(temperature, top_k, top_p, min_p)
    if max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens is {max_new_tokens}: ask for at least 1 new token")
    llm = LLM.load(checkpoint_dir, device=device, precision=precision, quantize=quantize, compile=compile)
    if max_new_tokens >= llm.model.max_seq_length:
        raise GenerationError(
            f"--max_new_tokens {max_new_tokens} leaves no room for a message in the model's context of {llm.model.max_seq_length} tokens: use less"
        )
    if system:  # a template that refuses system messages says so now, once, not on every turn
        try:
            llm.encode_chat([{"role": "system", "content": system}, {"role": "user", "content": "Hi"}], style)
        except ChatTemplateError as err:
            raise ChatTemplateError(f"--system cannot be used with this checkpoint's chat template ({err}): leave it out") from None
    if llm.tokenizer.chat_template is None and style in (None, "auto"):
        print("note: this checkpoint has no chat template: only your latest message goes in, as plain text"
              f"{' (--system is not used)' if system else ''}; pick a format with --style", file=sys.stderr)
    print(f"Chatting with {llm.checkpoint_dir}. {HELP}", file=sys.stderr, flush=True)
    sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, stop=reply_stops(stop, style))
    if sys.stdin.isatty():
        try:  # line editing and history; and a line longer than the terminal's 4,095-byte limit is read whole
            import readline  # noqa: F401
        except ImportError:  # (Windows)
            pass
    history: list[dict] = []
    turn = 0
    while True:
        try:
            line = input(">> You: ")
            block = line.lstrip().startswith(BLOCK)  # (its text is a message, never a command: `// a comment`)
            if block:
                line = read_block(line.lstrip()[len(BLOCK):])
        except (EOFError, KeyboardInterrupt):
            print()
            return
        text, replaced = utf8(line.strip())
        if not text:
            continue
        if replaced:
            print("note: your message was not valid UTF-8: its undecodable bytes became U+FFFD", file=sys.stderr, flush=True)
        if text == "/exit" and not block:
            return
        if text == "/reset" and not block:  # the same conversation again gives the same replies (turn i samples with seed + i)
            history, turn = [], 0
            print("(new conversation)", file=sys.stderr, flush=True)
            continue
        if text.startswith("/") and not block:
            print(f"unknown command {text.split()[0]}: {HELP}", file=sys.stderr, flush=True)
            continue
        try:
            ids, dropped = fit_history(llm, system, history + [{"role": "user", "content": text}], max_new_tokens, style)
        except (GenerationError, ChatTemplateError) as err:  # say why, and keep the conversation as it was
            print(f"error: {err}", file=sys.stderr, flush=True)
            continue
        history = history[dropped:] + [{"role": "user", "content": text}]
        if dropped:
            print(f"(dropped the oldest {dropped} message(s): the conversation outgrew the context of {llm.model.max_seq_length} tokens)", file=sys.stderr, flush=True)
        print(">> Assistant: ", end="", flush=True)
        reply, llm.last_stats = "", None  # (a reply cut short by Ctrl-C has no stats: the previous reply's were printed)
        try:
            for pieces in llm.stream_ids([ids], seed=None if seed is None else seed + turn, **sampling):
                reply += pieces[0]
                print(pieces[0], end="", flush=True)
        except KeyboardInterrupt:  # Ctrl-C ends the reply, not the chat
            print(" (interrupted)", end="")
        print(flush=True)
        if llm.last_stats:
            print(format_stats(llm.last_stats, llm.device), file=sys.stderr, flush=True)
        history.append({"role": "assistant", "content": reply})
        turn += 1


def read_block(first: str) -> str:
    """A message of several lines, as ollama's REPL takes one: from the text after an opening \"\"\" to the line that
    ends with \"\"\" (the same line for \"\"\"one line\"\"\"), newlines kept. Ctrl-D or Ctrl-C inside it ends the chat, and
    the unfinished message is not sent."""
    lines = [first]
    while not lines[-1].rstrip().endswith(BLOCK) or (len(lines) == 1 and not first.strip()):
        lines.append(input("... "))
    lines[-1] = lines[-1].rstrip()[: -len(BLOCK)]
    return "\n".join(lines)


def reply_stops(stop: Union[str, list[str], None], style: Optional[str]) -> Optional[list[str]]:
    """The stop strings of a reply: ``--stop``'s, and a fallback style's end of turn (``STYLE_STOPS``), which a base
    model's tokenizer has as text only: a reply ran on past it into made-up turns, kept in the history."""
    from litgpt_clone.chat_template import STYLE_STOPS

    stops = [*([stop] if isinstance(stop, str) else stop or []), *STYLE_STOPS.get(style or "", ())]
    return stops or None


def utf8(text: str) -> tuple[str, bool]:
    """``text`` with what was not UTF-8 on the way in (bytes Python keeps as lone surrogates) as U+FFFD, and whether
    there was any: the tokenizer refuses such text (a traceback that ended the chat)."""
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").encode("utf-8", "replace").decode("utf-8"), True


def fit_history(llm, system: Optional[str], history: list[dict], max_new_tokens: int, style: Optional[str]):
    """The token ids of the conversation without its oldest messages, as few dropped as it takes to fit the context
    with ``max_new_tokens`` to spare (``history`` itself is not changed). Returns (ids, how many were dropped)."""
    context = llm.model.max_seq_length
    head = [{"role": "system", "content": system}] if system else []
    dropped = 0
    while True:
        ids = llm.encode_chat(head + history[dropped:], style)
        if len(ids) + max_new_tokens <= context:
            return ids, dropped
        if len(history) - dropped == 1:
            raise GenerationError(
                f"the message makes a prompt of {len(ids)} tokens; with max_new_tokens {max_new_tokens} that is more than the"
                f" context of {context} tokens: shorten it (or lower --max_new_tokens)"
            )
        # drop the oldest exchange: a user message and the reply to it
        dropped += 2 if len(history) - dropped > 2 and history[dropped + 1]["role"] == "assistant" else 1
