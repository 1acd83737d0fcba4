"""Messages -> prompt text: the checkpoint's own Jinja ``chat_template``, or a named fallback style.

``render_chat(template, messages)`` renders a checkpoint's template as ``transformers``'
``tokenizer.apply_chat_template(messages, tokenize=False)`` does (checked against transformers 5): a sandboxed,
immutable Jinja environment with ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension
(``{% break %}``, ``{% continue %}``), ``{% generation %}`` blocks (rendered as their content), the
``raise_exception(message)`` and ``strftime_now(format)`` functions, a ``tojson`` filter that writes plain JSON
(non-ASCII kept, no HTML escaping), a ``dict`` that can only build dicts and a ``namespace`` that refuses
underscore names. The template sees ``messages``, ``add_generation_prompt``, ``tools``, ``documents``,
``bos_token``/``eos_token`` (when given) and any extra keyword (``enable_thinking=False``, ``date_string=...``).
Messages are passed as plain data, keys whose value is None are dropped and a reasoning given as ``thinking``,
``reasoning`` or ``reasoning_content`` is offered under the names templates read, as transformers does.

Templates are code from the checkpoint's author: one that reaches for Python internals (``__class__``,
``__globals__``, ``os``) is stopped by the sandbox, and every template failure (``raise_exception``, a syntax
error, a blocked access) is raised as one ``ChatTemplateError`` whose message says what happened.

Fallback styles, for checkpoints without a template (``style=`` picks one; ``"auto"``/None takes the template
when there is one, else ``"plain"``):

- ``alpaca``: the Stanford Alpaca instruction format used for instruction finetuning: the preamble "Below is an
  instruction that describes a task. ..." (or the system message), then for each user turn ``### Instruction:``
  with its text, the ``### Input:`` section when ``input=`` is given (last turn), and ``### Response:``
  followed by the assistant's answer. ``alpaca_prompt(instruction, input)`` gives the single-turn prompt.
- ``chatml``: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message; generation prompt
  ``<|im_start|>assistant\\n`` (Qwen, SmolLM, many finetunes).
- ``llama2``: ``<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s>`` per turn, as the
  Llama 2 chat template writes it (BOS/EOS from ``bos_token``/``eos_token``; left out when not given).
- ``llama3``: ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>`` per message after BOS;
  generation prompt ``<|start_header_id|>assistant<|end_header_id|>\\n\\n``.
- ``plain``: the text of the last user message and nothing else (base models).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any, Callable, Optional

import jinja2
import jinja2.ext
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """A chat template could not render the messages: it raised an error, is malformed, or tried something unsafe."""


# ---------------------------------------------------------------------------------------- the checkpoint's template
class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` marks an assistant's text for training masks; here it renders
    its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)  # the "generation" name
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _tojson(value: Any, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False) -> str:
    """Plain ``json.dumps``: Jinja's own ``tojson`` escapes ``<>&'`` for HTML, which no model was trained on."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _DictMaker:
    """``dict(...)`` and ``dict.fromkeys(...)`` for templates, without handing them the ``dict`` type itself."""

    def __call__(self, *args, **kwargs) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs) -> dict:
        return dict.fromkeys(*args, **kwargs)


def _check_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"a chat template may not set {name!r} on a namespace (underscore name)")


class _Namespace(jinja2.utils.Namespace):
    """Jinja's ``namespace`` that refuses underscore attribute names, the way to CPython's internals."""

    def __init__(*args, **kwargs) -> None:  # no named `self`, so that namespace(self=...) works as in Jinja
        attrs = dict(*args[1:], **kwargs)
        for name in attrs:
            _check_name(name)
        jinja2.utils.Namespace.__init__(args[0], attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_name(name)
        super().__setitem__(name, value)


@lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _GenerationTag]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(
        raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_DictMaker(), namespace=_Namespace
    )
    return env.from_string(template)


MAX_NESTING = 64
"""Levels of lists and dicts that messages and template variables may nest (a tool's JSON schema nests a few):
deeper data is refused with a one-line error, where walking it ran out of Python's recursion limit (a traceback)."""


def plain_data(value: Any, depth: int = 0) -> Any:
    """``value`` rebuilt from JSON types only (subclasses such as enums stripped to their base type), anything else
    as a ``"<TypeName>"`` string, so that a template never gets a method the sandbox does not know to be harmful.
    ``ChatTemplateError`` for lists and dicts nested more than ``MAX_NESTING`` deep."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for kind in (str, int, float):
        if isinstance(value, kind):
            return getattr(kind, f"__{kind.__name__}__")(value)  # e.g. str.__str__(an enum member)
    if depth > MAX_NESTING:  # (the top level, a dict of variables or the list of messages, is level 0)
        raise ChatTemplateError(f"the messages or template variables nest lists and dicts more than {MAX_NESTING} levels deep: flatten them")
    depth += 1
    if isinstance(value, Mapping):
        return {plain_data(k, depth): plain_data(v, depth) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_data(v, depth) for v in value]
    if isinstance(value, tuple):
        return tuple(plain_data(v, depth) for v in value)
    if isinstance(value, np.generic):  # numpy scalars
        return plain_data(value.item(), depth)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_data(getattr(value, f.name), depth) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):  # pydantic models, e.g. the OpenAI SDK's messages
        return plain_data(value.model_dump(), depth)
    return f"<{type(value).__name__}>"


_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


def _prepare(messages: list[dict]) -> list[dict]:
    """Messages as transformers hands them to a template: plain data, no None values, reasoning under the names
    templates read (``reasoning_content``, and ``thinking`` unless the message has it)."""
    if not messages:
        raise ChatTemplateError("no messages to render: pass at least one message")
    prepared = []
    for message in plain_data(list(messages)):
        if not isinstance(message, dict):
            raise ChatTemplateError(f"a message must be a dict with 'role' and 'content', got {message!r}")
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_KEYS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        prepared.append(message)
    return prepared


def _render_template(template: str, messages: list[dict], add_generation_prompt: bool, variables: dict) -> str:
    try:
        compiled = _compile(template)
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)
    except jinja2.exceptions.SecurityError as err:
        raise ChatTemplateError(f"the chat template tried an unsafe operation and was stopped: {err}") from err
    except jinja2.exceptions.TemplateSyntaxError as err:
        raise ChatTemplateError(f"the chat template has a syntax error (line {err.lineno}): {err.message}") from err
    except jinja2.exceptions.TemplateError as err:  # raise_exception(...) and undefined values
        raise ChatTemplateError(f"the chat template refused the messages: {err}") from err
    except (ArithmeticError, LookupError, TypeError, ValueError, RecursionError, MemoryError) as err:
        # the template's own code failed: the sandbox's "range too big", a variable of the wrong type, ...
        raise ChatTemplateError(f"the chat template failed on these messages ({type(err).__name__}: {str(err)[:200]})") from err


# ---------------------------------------------------------------------------------------- fallback styles
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
ALPACA_PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt for one instruction (and its optional input), ending where the response starts."""
    if input:
        return f"{ALPACA_PREAMBLE_INPUT}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    return f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


def _text(message: dict) -> str:
    """A message's text: its string content, or the text parts of a list of content blocks joined with newlines (as
    serve and vLLM join them)."""
    content = message.get("content") or ""
    if isinstance(content, str):
        return content
    return "\n".join(block.get("text", "") for block in content if isinstance(block, dict) and block.get("type", "text") == "text")


def _split_system(messages: list[dict]) -> tuple[Optional[str], list[dict]]:
    if messages and messages[0].get("role") == "system":
        return _text(messages[0]), messages[1:]
    return None, messages


def _alpaca(messages: list[dict], gen: bool, bos: str, eos: str, input: str = "", **_) -> str:
    system, turns = _split_system(messages)
    last_user = max((i for i, m in enumerate(turns) if m.get("role") == "user"), default=-1)
    text = (system if system is not None else ALPACA_PREAMBLE_INPUT if input else ALPACA_PREAMBLE) + "\n\n"
    for i, m in enumerate(turns):
        if m.get("role") == "user":
            text += f"### Instruction:\n{_text(m)}\n\n"
            if input and i == last_user:
                text += f"### Input:\n{input}\n\n"
            text += "### Response:\n"
        elif m.get("role") == "assistant":
            text += f"{_text(m)}\n\n"
    return text if gen or not text.endswith("\n\n") else text[:-2]


def _chatml(messages: list[dict], gen: bool, bos: str, eos: str, **_) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{_text(m)}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if gen else "")


def _llama2(messages: list[dict], gen: bool, bos: str, eos: str, **_) -> str:
    system, turns = _split_system(messages)
    text = ""
    for i, m in enumerate(turns):
        content = _text(m) if i or system is None else f"<<SYS>>\n{system}\n<</SYS>>\n\n{_text(m)}"
        if m.get("role") == "user":
            text += f"{bos}[INST] {content.strip()} [/INST]"
        elif m.get("role") == "assistant":
            text += f" {content.strip()} {eos}"
    return text  # the generation prompt is the "[/INST]" that closes each user turn


def _llama3(messages: list[dict], gen: bool, bos: str, eos: str, **_) -> str:
    turns = (f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{_text(m).strip()}<|eot_id|>" for m in messages)
    text = bos + "".join(turns)
    return text + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if gen else "")


def _plain_style(messages: list[dict], gen: bool, bos: str, eos: str, **_) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        raise ChatTemplateError("the 'plain' chat style needs a user message: add one, or pick another style")
    return _text(users[-1])


STYLE_STOPS = {"chatml": ("<|im_end|>",), "llama3": ("<|eot_id|>",), "llama2": ("[INST]",), "alpaca": ("### Instruction:",)}
"""Text that ends a reply in each fallback style: the end of its assistant turn (or the start of the next user turn),
which a base model's tokenizer does not know as a token, so it comes as text (a reply ran on past it)."""

STYLES: dict[str, Callable[..., str]] = {
    "alpaca": _alpaca, "chatml": _chatml, "llama2": _llama2, "llama3": _llama3, "plain": _plain_style
}


def available_styles() -> list[str]:
    """The names ``render_chat(style=...)`` accepts: "auto" and the fallback styles."""
    return ["auto", *STYLES]


# ---------------------------------------------------------------------------------------- entry points
def render_chat(
    template: Optional[str],
    messages: list[dict],
    bos_token: Optional[str] = None,
    eos_token: Optional[str] = None,
    add_generation_prompt: bool = True,
    style: Optional[str] = None,
    **extra: Any,
) -> str:
    """The prompt text for ``messages`` (``[{"role": "user", "content": "Hi"}, ...]``).

    Args:
        template: The checkpoint's Jinja chat template (``Tokenizer(dir).chat_template``), or None.
        messages: The conversation, oldest first.
        bos_token, eos_token: The tokenizer's BOS/EOS strings, seen by the template as ``bos_token``/``eos_token``;
            None leaves them undefined, as transformers does for a tokenizer without them.
        add_generation_prompt: End with the header that starts the assistant's reply.
        style: "auto"/None uses ``template`` when there is one, else "plain"; a fallback name from
            ``available_styles()`` uses that style even when there is a template.
        extra: More template variables (``tools=[...]`` as JSON schemas, ``documents=[...]``,
            ``enable_thinking=False``); the alpaca style reads ``input``.

    The text already holds the template's special tokens (BOS included when the template writes it): encode it
    with ``Tokenizer.encode(text, bos=False)``.
    """
    style = check_style(style)
    messages = _prepare(messages)
    if style == "auto" and template:
        variables = {"tools": None, "documents": None, **plain_data(extra)}
        variables.update({k: v for k, v in (("bos_token", bos_token), ("eos_token", eos_token)) if v is not None})
        return _render_template(template, messages, add_generation_prompt, variables)
    if any(not isinstance(m.get("role"), str) for m in messages):
        raise ChatTemplateError("every message needs a 'role' (system, user or assistant) for the fallback chat styles")
    render = STYLES["plain" if style == "auto" else style]
    return render(messages, add_generation_prompt, bos_token or "", eos_token or "", **extra)


def check_style(style: Optional[str]) -> str:
    """``style``, "auto" for None; a one-line error for a name that is not a style."""
    style = style or "auto"
    if style not in available_styles():
        raise ChatTemplateError(f"unknown chat style {style!r}: use one of {', '.join(available_styles())}")
    return style


def render_for_tokenizer(
    tokenizer, messages: list[dict], add_generation_prompt: bool = True, style: Optional[str] = None, **extra: Any
) -> str:
    """``render_chat`` with a ``litgpt_clone.tokenizer.Tokenizer``'s template and special-token strings
    (``Tokenizer.template_tokens``: ``bos_token``, ``eos_token``, ``pad_token``, ..., as transformers passes them).
    Encode the text with ``Tokenizer.encode(text, bos=chat_bos(tokenizer, style))``."""
    named = dict(tokenizer.template_tokens)
    bos, eos = named.pop("bos_token", None), named.pop("eos_token", None)
    if not (check_style(style) == "auto" and tokenizer.chat_template):  # a fallback style writes the model's own BOS/EOS
        token = lambda i: None if i is None else tokenizer.decode([i], skip_special_tokens=False)  # noqa: E731
        bos, eos, named = token(tokenizer.bos_id), token(tokenizer.eos_id), {}
    template = tokenizer.chat_template
    if extra.get("tools") is not None and "tool_use" in tokenizer.chat_templates:  # (transformers' choice among named ones)
        template = tokenizer.chat_templates["tool_use"]
    return render_chat(
        template, messages, bos_token=bos, eos_token=eos,
        add_generation_prompt=add_generation_prompt, style=style, **{**named, **extra},
    )


def chat_bos(tokenizer, style: Optional[str] = None) -> Optional[bool]:
    """The ``bos`` to encode ``render_for_tokenizer``'s text with: False where a template or style writes its own
    special tokens; None (the checkpoint's own BOS, as ``generate`` encodes a prompt) for the "plain" style, the
    fallback without a template, whose text is the user's message alone (it went in without the BOS a Llama-2-style
    base model puts first)."""
    plain = style == "plain" or (style in (None, "auto") and tokenizer.chat_template is None)
    return None if plain else False
