"""``litgpt_clone.chat_template`` against ``transformers``' ``apply_chat_template(..., tokenize=False)``.

Each template below is the Jinja source a published checkpoint ships in its tokenizer_config.json (written out
here, since nothing can come from the hub). For each one a tokenizer folder is made (a tiny ``tokenizers``
tokenizer.json + tokenizer_config.json with the template and the model's BOS/EOS strings), and
``AutoTokenizer.from_pretrained(folder).apply_chat_template`` is the reference for ``render_chat`` and
``render_for_tokenizer``.
"""

from __future__ import annotations

import enum
import json
from datetime import datetime
from pathlib import Path

import jinja2
import pytest
from transformers import AutoTokenizer

from litgpt_clone.chat_template import (
    ChatTemplateError,
    alpaca_prompt,
    available_styles,
    chat_bos,
    render_chat,
    render_for_tokenizer,
)
from litgpt_clone.tokenizer import Tokenizer

# --------------------------------------------------------------------------------------------- published templates
LLAMA_3 = r"""{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>

'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>

' }}{% endif %}"""
"""meta-llama/Meta-Llama-3-8B-Instruct"""

LLAMA_2 = r"""{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"""
"""meta-llama/Llama-2-7b-chat-hf"""

MISTRAL = r"""{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"""
"""mistralai/Mistral-7B-Instruct-v0.2"""

QWEN_2_5 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
"""Qwen/Qwen2.5-7B-Instruct: ChatML with a default system prompt and tools"""

QWEN_3 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""
"""Qwen/Qwen3-8B: namespace, reversed loops, string methods, reasoning_content, enable_thinking"""

GEMMA = r"""{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"""
"""google/gemma-7b-it"""

PHI_3 = r"""{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>
' + message['content'] + '<|end|>
'}}{% elif message['role'] == 'user' %}{{'<|user|>
' + message['content'] + '<|end|>
'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>
' + message['content'] + '<|end|>
'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>
' }}{% else %}{{ eos_token }}{% endif %}"""
"""microsoft/Phi-3-mini-4k-instruct"""

ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>
'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""
"""HuggingFaceH4/zephyr-7b-beta: relies on trim_blocks/lstrip_blocks for its newlines"""

TEMPLATES = {  # name: (template, bos, eos)
    "llama3": (LLAMA_3, "<|begin_of_text|>", "<|eot_id|>"),
    "llama2": (LLAMA_2, "<s>", "</s>"),
    "mistral": (MISTRAL, "<s>", "</s>"),
    "qwen2.5": (QWEN_2_5, None, "<|im_end|>"),
    "qwen3": (QWEN_3, None, "<|im_end|>"),
    "gemma": (GEMMA, "<bos>", "<eos>"),
    "phi3": (PHI_3, "<s>", "<|endoftext|>"),
    "zephyr": (ZEPHYR, "<s>", "</s>"),
}

# --------------------------------------------------------------------------------------------- conversations
SYSTEM = {"role": "system", "content": "You are a terse assistant. Answer in one line."}
CONVERSATIONS = {
    "single": [{"role": "user", "content": "What is the capital of France?"}],
    "multi_turn": [
        {"role": "user", "content": "  Hi there!  "},  # whitespace that some templates trim
        {"role": "assistant", "content": "Hello! How can I help?\n"},
        {"role": "user", "content": "Name three prime numbers.\nJust the numbers."},
    ],
    "system_multi_turn": [
        SYSTEM,
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3? Ünïcödé, 日本語, <tags> & \"quotes\""},
    ],
    "ends_with_answer": [
        SYSTEM,
        {"role": "user", "content": "Say yes."},
        {"role": "assistant", "content": "Yes.", "tool_calls": None},  # None values are dropped, as transformers does
    ],
}


def _tokenizer_folder(path: Path, template: str, bos: str | None, eos: str | None) -> Path:
    """A loadable tokenizer folder: a word-level tokenizer.json and a tokenizer_config.json with the template."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    path.mkdir(parents=True)
    tok = HFTokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([t for t in (bos, eos) if t])
    tok.save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template, "unk_token": "[UNK]"}
    config.update({k: v for k, v in (("bos_token", bos), ("eos_token", eos)) if v})
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat_templates")
    return {name: _tokenizer_folder(root / name, *spec) for name, spec in TEMPLATES.items()}


@pytest.fixture(scope="module")
def hf_tokenizers(folders) -> dict:
    return {name: AutoTokenizer.from_pretrained(path) for name, path in folders.items()}


def _reference(hf_tokenizer, messages, **kwargs):
    """transformers' rendering, or the TemplateError it raises."""
    try:
        return hf_tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except jinja2.exceptions.TemplateError as err:
        return err


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("name", list(TEMPLATES))
def test_published_templates_match_transformers(name, conversation, add_generation_prompt, folders, hf_tokenizers):
    template, bos, eos = TEMPLATES[name]
    messages = CONVERSATIONS[conversation]
    expected = _reference(hf_tokenizers[name], messages, add_generation_prompt=add_generation_prompt)
    if isinstance(expected, Exception):  # Mistral and Gemma refuse a system message
        assert name in ("mistral", "gemma") and messages[0]["role"] == "system"
        with pytest.raises(ChatTemplateError, match=str(expected).replace(".", r"\.")):
            render_chat(template, messages, bos, eos, add_generation_prompt=add_generation_prompt)
        return
    got = render_chat(template, messages, bos_token=bos, eos_token=eos, add_generation_prompt=add_generation_prompt)
    assert got == expected
    # the same through the project's Tokenizer, which finds template and BOS/EOS strings in the folder
    assert render_for_tokenizer(Tokenizer(folders[name]), messages, add_generation_prompt=add_generation_prompt) == expected


def test_templates_differ_where_they_should(hf_tokenizers):
    """The rendering is not trivially equal across templates (the comparison above could not pass by accident)."""
    messages = CONVERSATIONS["multi_turn"]
    renderings = {render_chat(TEMPLATES[n][0], messages, *TEMPLATES[n][1:]) for n in TEMPLATES}
    assert len(renderings) == len(TEMPLATES)
    zephyr = render_chat(ZEPHYR, messages, "<s>", "</s>")
    assert zephyr.startswith("<|user|>\n  Hi there!  </s>\n<|assistant|>\nHello!")  # trim_blocks at work
    assert zephyr.endswith("Just the numbers.</s>\n<|assistant|>\n")


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city <b>now</b> & tomorrow, in °C — e.g. München",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
TOOL_CHAT = [
    {"role": "user", "content": "Weather in Zürich?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}],
    },
    {"role": "tool", "content": '{"temp": 21, "sky": "<clear>"}'},
]


@pytest.mark.parametrize("name", ["qwen2.5", "qwen3"])
def test_tools_and_tojson_match_transformers(name, hf_tokenizers):
    template, bos, eos = TEMPLATES[name]
    expected = hf_tokenizers[name].apply_chat_template(TOOL_CHAT, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    got = render_chat(template, TOOL_CHAT, bos, eos, tools=TOOLS)
    assert got == expected
    # plain JSON: Jinja's own tojson would write "\u003cb\u003e" and "\u00b0C"
    assert '"description": "Weather for a city <b>now</b> & tomorrow, in °C — e.g. München"' in got
    assert '{"city": "Zürich"}' in got


@pytest.mark.parametrize("enable_thinking", [True, False])
def test_qwen3_thinking_and_reasoning_fields(enable_thinking, hf_tokenizers):
    """Extra template variables reach the template; reasoning given under any of its names is seen as
    ``reasoning_content``, as in transformers."""
    messages = [
        {"role": "user", "content": "Is 91 prime?"},
        {"role": "assistant", "content": "No, 91 = 7 × 13.", "reasoning": "Try 7: 7 × 13 = 91."},
        {"role": "user", "content": "And 97?"},
        {"role": "assistant", "content": "Yes.", "thinking": "No divisor up to 9."},
    ]
    for gen, msgs in ((True, messages[:3]), (False, messages)):
        kwargs = dict(add_generation_prompt=gen, enable_thinking=enable_thinking)
        expected = hf_tokenizers["qwen3"].apply_chat_template(msgs, tokenize=False, **kwargs)
        assert render_chat(QWEN_3, msgs, None, "<|im_end|>", **kwargs) == expected
    assert "<think>\nNo divisor up to 9.\n</think>" in expected
    assert ("<think>\n\n</think>" in render_chat(QWEN_3, messages[:3], enable_thinking=enable_thinking)) is not enable_thinking


@pytest.mark.parametrize(
    "template",
    [
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}",  # loopcontrols
        "{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}{% endfor %}",  # training masks
        "{{ dict(a=1, b=messages|length) | tojson(indent=2) }}{{ dict.fromkeys(['x', 'y'], 0) | tojson(sort_keys=True) }}",
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}",
        "{{ strftime_now('%Y-%m-%d') }}|{{ bos_token is defined }}|{{ tools is none }}|{{ custom }}",
    ],
)
def test_environment_features_match_transformers(template, tmp_path):
    messages = CONVERSATIONS["multi_turn"]
    hf = AutoTokenizer.from_pretrained(_tokenizer_folder(tmp_path / "tok", template, None, "</s>"))
    expected = hf.apply_chat_template(messages, tokenize=False, custom="x")
    assert render_chat(template, messages, eos_token="</s>", add_generation_prompt=False, custom="x") == expected


class Role(str, enum.Enum):
    USER = "user"
    ASSISTANT = "assistant"


def test_messages_are_passed_as_plain_data(tmp_path):
    """As in transformers: keys whose value is None are dropped (``is defined`` is false), enum members become
    their plain value (``str()`` of a str-Enum member would be "Role.USER")."""
    template = "{% for m in messages %}{{ m.role }}{% if m.name is defined %}({{ m.name }}){% endif %}: {{ m.content }}\n{% endfor %}"
    messages = [
        {"role": Role.USER, "content": "hi", "name": None},
        {"role": Role.ASSISTANT, "content": "hello", "name": "bot"},
    ]
    hf = AutoTokenizer.from_pretrained(_tokenizer_folder(tmp_path / "tok", template, None, None))
    expected = hf.apply_chat_template(messages, tokenize=False)
    assert render_chat(template, messages) == expected == "user: hi\nassistant(bot): hello\n"


def test_data_nested_past_the_limit_is_one_error():
    """Template variables or messages nested hundreds deep (``{"x": [[[...]]]}`` from a server's client) ran out of
    Python's recursion limit while they were copied as plain data: a RecursionError, outside the template's errors.
    Now a one-line ChatTemplateError past MAX_NESTING levels; up to it they render."""
    from litgpt_clone.chat_template import MAX_NESTING

    def nested(depth: int) -> list:
        value: list = []
        for _ in range(depth - 1):
            value = [value]
        return value

    template, messages = "{{ x | length }}{{ messages[0].content }}", [{"role": "user", "content": "hi"}]
    assert render_chat(template, messages, x=nested(MAX_NESTING)) == "1hi"
    for depth in (MAX_NESTING + 1, 600, 5000):
        with pytest.raises(ChatTemplateError, match=f"nest lists and dicts more than {MAX_NESTING} levels deep: flatten them"):
            render_chat(template, messages, x=nested(depth))
    with pytest.raises(ChatTemplateError, match="more than 64 levels"):
        render_chat(template, [{"role": "user", "content": "hi", "parts": nested(600)}])


def test_strftime_now_is_today():
    today = datetime.now().strftime("%d %b %Y")  # (a run across midnight is the only way this can miss)
    assert render_chat("{{ strftime_now('%d %b %Y') }}", [{"role": "user", "content": "x"}]) == today


def test_raise_exception_carries_the_templates_message():
    bad_order = [{"role": "assistant", "content": "I speak first"}, {"role": "user", "content": "hi"}]
    with pytest.raises(ChatTemplateError, match=r"Conversation roles must alternate user/assistant/user/assistant/\.\.\."):
        render_chat(LLAMA_2, bad_order, "<s>", "</s>")
    with pytest.raises(ChatTemplateError, match="System role not supported"):
        render_chat(GEMMA, CONVERSATIONS["system_multi_turn"], "<bos>", "<eos>")
    with pytest.raises(ChatTemplateError, match="syntax error"):
        render_chat("{% for m in messages %}{{ m.content }}", bad_order)


ESCAPES = [
    "{{ messages.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch {marker}') }}",
    "{% set x = messages.append({'role': 'user', 'content': 'injected'}) %}{{ messages }}",  # immutable sandbox
    "{% set ns = namespace() %}{% set ns.__dict__ = 1 %}",
    "{{ namespace(_private=1) }}",
    "{{ dict.__call__.__globals__ }}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_sandbox_stops_escapes(template, tmp_path):
    marker = tmp_path / "escaped"
    template = template.replace("{marker}", str(marker))
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(ChatTemplateError, match="unsafe operation") as info:
        render_chat(template, messages)
    assert isinstance(info.value.__cause__, jinja2.exceptions.SecurityError)
    assert not marker.exists()
    assert messages == [{"role": "user", "content": "hi"}]  # the caller's list is never touched


@pytest.mark.parametrize("template, variables, cause", [
    ("{% for i in range(10**9) %}{% endfor %}", {}, OverflowError),  # the sandbox's cap on ranges
    ("{% for t in tools %}{{ t }}{% endfor %}", {"tools": 5}, TypeError),  # a variable of the wrong type
    ("{{ messages[0].content / 2 }}", {}, TypeError),
])
def test_a_template_that_fails_in_its_own_code_is_one_error(template, variables, cause):
    with pytest.raises(ChatTemplateError, match=f"failed on these messages \\({cause.__name__}") as info:
        render_chat(template, [{"role": "user", "content": "hi"}], **variables)
    assert isinstance(info.value.__cause__, cause)


# --------------------------------------------------------------------------------------------- fallback styles
def test_alpaca_style_exact():
    instruction = [{"role": "user", "content": "Give three tips for staying healthy."}]
    assert render_chat(None, instruction, style="alpaca") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nGive three tips for staying healthy.\n\n### Response:\n"
    )
    with_input = [{"role": "user", "content": "Translate to French."}]
    assert render_chat(None, with_input, style="alpaca", input="Good morning") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
        "response that appropriately completes the request.\n\n### Instruction:\nTranslate to French.\n\n"
        "### Input:\nGood morning\n\n### Response:\n"
    )
    assert alpaca_prompt("Translate to French.", "Good morning") == render_chat(None, with_input, style="alpaca", input="Good morning")
    # a template in the checkpoint does not matter once a style is named
    assert render_chat(LLAMA_3, instruction, style="alpaca") == alpaca_prompt("Give three tips for staying healthy.")
    history = [*instruction, {"role": "assistant", "content": "Sleep, eat, move."}, {"role": "user", "content": "More?"}]
    assert render_chat(None, history, style="alpaca").endswith(
        "### Response:\nSleep, eat, move.\n\n### Instruction:\nMore?\n\n### Response:\n"
    )


@pytest.mark.parametrize("conversation", ["single", "multi_turn", "system_multi_turn", "ends_with_answer"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_styles_equal_the_published_templates(conversation, add_generation_prompt, hf_tokenizers):
    """llama2/llama3 styles render as Meta's templates do; chatml as Qwen2.5's when a system message is given."""
    messages = CONVERSATIONS[conversation]
    gen = dict(add_generation_prompt=add_generation_prompt)
    for style, name in (("llama2", "llama2"), ("llama3", "llama3"), ("chatml", "qwen2.5")):
        if style == "chatml" and messages[0]["role"] != "system":
            continue  # Qwen2.5 adds its default system prompt
        _, bos, eos = TEMPLATES[name]
        expected = hf_tokenizers[name].apply_chat_template(messages, tokenize=False, **gen)
        assert render_chat(None, messages, bos, eos, style=style, **gen) == expected, style


def test_auto_plain_and_errors():
    messages = CONVERSATIONS["multi_turn"]
    assert available_styles() == ["auto", "alpaca", "chatml", "llama2", "llama3", "plain"]
    assert render_chat(None, messages) == "Name three prime numbers.\nJust the numbers."  # no template -> plain
    assert render_chat("", messages, style="auto") == render_chat(None, messages, style="plain")
    assert render_chat(MISTRAL, messages, "<s>", "</s>").startswith("<s>[INST]   Hi there!   [/INST]Hello!")
    with pytest.raises(ChatTemplateError, match="unknown chat style 'vicuna': use one of auto, alpaca, chatml"):
        render_chat(None, messages, style="vicuna")
    with pytest.raises(ChatTemplateError, match="at least one message"):
        render_chat(LLAMA_3, [])
    with pytest.raises(ChatTemplateError, match="needs a user message"):
        render_chat(None, [SYSTEM], style="plain")


def test_render_for_sentencepiece_tokenizer(tmp_path):
    """A tokenizer.model checkpoint (Llama 2 style): BOS/EOS strings come from the SentencePiece model."""
    import sentencepiece

    words = "hello world this is a tiny corpus for a tiny sentencepiece model with some words".split()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(words * 20), model_prefix=str(tmp_path / "tokenizer"), model_type="bpe",
        vocab_size=300, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, minloglevel=2, character_coverage=1.0,
    )
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "chat_template": LLAMA_2}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tokenizer, hf = Tokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.backend == "sentencepiece"
    for messages in CONVERSATIONS.values():
        for gen in (True, False):
            expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert render_for_tokenizer(tokenizer, messages, add_generation_prompt=gen) == expected
    assert expected.startswith("<s>[INST] <<SYS>>\n") and expected.endswith(" Yes. </s>")


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> Path:
    """A Llama-style SentencePiece model (identity normalization, dummy prefix, byte fallback; <unk> <s> </s> first)
    trained on the conversations' text, for checkpoints that ship only tokenizer.model."""
    import sentencepiece

    out = tmp_path_factory.mktemp("sp_chat")
    text = [m["content"] for conversation in CONVERSATIONS.values() for m in conversation] + ["[INST] <<SYS>> <</SYS>> [/INST]"]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(text * 20), model_prefix=str(out / "tokenizer"), model_type="bpe", vocab_size=320,
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, minloglevel=2, character_coverage=1.0,
        normalization_rule_name="identity", remove_extra_whitespaces=False, num_threads=1,
    )
    return out / "tokenizer.model"


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("template", ["llama2", "mistral", "llama2 style"])
def test_encode_chat_for_sentencepiece_checkpoint_matches_transformers(template, legacy, sp_model, tmp_path):
    """The chat path's ids (``LLM.encode_chat``: the rendered template, encoded without an added BOS) for a checkpoint
    with only tokenizer.model are transformers' ``apply_chat_template(tokenize=True)``: the ``<s>``/``</s>`` the
    template writes are BOS/EOS ids (they were encoded as the letters "<", "s", ">"), and the text after them gets
    the "▁" transformers gives it (none, or one with ``"legacy": true``)."""
    import shutil
    from types import SimpleNamespace

    from litgpt_clone import LLM

    shutil.copy(sp_model, tmp_path / "tokenizer.model")
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True, "legacy": legacy}
    if template != "llama2 style":  # else no template: the fallback style renders as Llama 2's
        config["chat_template"] = {"llama2": LLAMA_2, "mistral": MISTRAL}[template]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tokenizer, hf = Tokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.backend == "sentencepiece"
    style = "llama2" if template == "llama2 style" else None
    for name, messages in CONVERSATIONS.items():
        if template == "mistral" and messages[0]["role"] == "system":
            continue  # the template raises
        ids = LLM.encode_chat(SimpleNamespace(tokenizer=tokenizer), messages, style=style).tolist()
        extra = {"chat_template": LLAMA_2} if style else {}
        expected = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True, **extra)["input_ids"]
        assert ids == expected, name
        users, answers = (sum(m["role"] == role for m in messages) for role in ("user", "assistant"))
        assert ids[0] == 1 and ids.count(1) == (1 if template == "mistral" else users) and ids.count(2) == answers, name


def test_plain_style_encodes_the_prompt_as_generate_does(sp_model, tmp_path):
    """Without a chat template the "plain" style's prompt (the last user message) is encoded with the checkpoint's
    BOS, as ``generate`` and transformers' ``tokenizer(text)`` encode a prompt: it went in without one (LLM.chat, the
    server's chat route and LitGPT's /predict), so a Llama-2-style base model answered from another input."""
    import shutil
    from types import SimpleNamespace

    from litgpt_clone import LLM

    shutil.copy(sp_model, tmp_path / "tokenizer.model")
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tokenizer, hf = Tokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    messages = CONVERSATIONS["multi_turn"]
    ids = LLM.encode_chat(SimpleNamespace(tokenizer=tokenizer), messages).tolist()
    assert ids == tokenizer.encode(messages[-1]["content"]).tolist() == hf(messages[-1]["content"])["input_ids"]
    assert ids[0] == 1 and ids.count(1) == 1


def test_add_special_tokens_of_a_request_encodes_as_vllm_encodes(sp_model, tmp_path):
    """vLLM's ``add_special_tokens``: /v1/completions encodes the prompt with the tokenizer's special tokens (its BOS)
    unless it is false; /v1/chat/completions encodes the rendered template without them unless it is true (then a
    template that writes its own BOS gets a second one, as in vLLM). The field was ignored."""
    import shutil

    from litgpt_clone.serve.openai import request_bos

    shutil.copy(sp_model, tmp_path / "tokenizer.model")
    template = "{{ bos_token }}{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "add_bos_token": True, "chat_template": template}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    ours, hf = Tokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": "Hello world"}]
    rendered = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render_for_tokenizer(ours, messages) == rendered
    for value in (None, True, False):  # None: left out
        body = {} if value is None else {"add_special_tokens": value}
        completion = ours.encode("Hello world", request_bos(ours, body, chat=False)).tolist()
        assert completion == hf("Hello world", add_special_tokens=value is not False)["input_ids"]
        chat = ours.encode(rendered, request_bos(ours, body, chat=True)).tolist()
        assert chat == hf(rendered, add_special_tokens=value is True)["input_ids"]
    assert ours.encode(rendered, request_bos(ours, {"add_special_tokens": True}, chat=True)).tolist()[:2] == [1, 1]


def test_templates_see_the_special_tokens_transformers_passes(sp_model, tmp_path):
    """transformers renders a template with its ``special_tokens_map`` (bos, eos, unk, pad, sep, cls, mask as named by
    tokenizer_config.json, else special_tokens_map.json, else a SentencePiece model's own); we passed only bos/eos,
    and took bos from config.json's bos_token_id where the tokenizer names none, which put a BOS id in front of the
    prompt that transformers does not."""
    import shutil

    template = ("[{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ unk_token }}|{{ bos_token is defined }}]"
                "{% for m in messages %}{{ m.content }}{% endfor %}")
    cases = {  # folder -> (tokenizer_config.json, special_tokens_map.json, config.json), for a tokenizer.json or tokenizer.model
        "named": ({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "hello", "unk_token": "[UNK]"}, None, None),
        "config_json_bos": ({"eos_token": "</s>"}, None, {"model_type": "llama", "bos_token_id": 3, "eos_token_id": 4}),
        "map_only": (None, {"bos_token": "<s>", "eos_token": "</s>", "pad_token": {"content": "world"}}, None),
        "sp_own": ({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "legacy": False}, None, None),
    }
    seen = {}
    for name, (config, mapped, config_json) in cases.items():
        folder = tmp_path / name
        if name.startswith("sp"):
            folder.mkdir()
            shutil.copy(sp_model, folder / "tokenizer.model")
        else:
            _tokenizer_folder(folder, template, "<s>", "</s>")
            (folder / "tokenizer_config.json").unlink()
        (folder / "chat_template.jinja").write_text(template)
        for file, content in (("tokenizer_config.json", config), ("special_tokens_map.json", mapped), ("config.json", config_json)):
            if content is not None:
                (folder / file).write_text(json.dumps(content))
        ours, reference = Tokenizer(folder), AutoTokenizer.from_pretrained(folder)
        messages = [{"role": "user", "content": "hello"}]
        seen[name] = render_for_tokenizer(ours, messages)
        assert seen[name] == reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), name
        ids = reference.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
        assert ours.encode(seen[name], bos=chat_bos(ours)).tolist() == ids, name
    assert seen == {"named": "[<s>|</s>|hello|[UNK]|True]hello", "config_json_bos": "[|</s>|||False]hello",
                    "map_only": "[<s>|</s>|world||True]hello", "sp_own": "[<s>|</s>||<unk>|True]hello"}


def test_named_templates_are_chosen_as_transformers_chooses(tmp_path):
    """tokenizer_config.json may list named templates (Hermes 2 Pro, Command R: "default", "tool_use", "rag"):
    transformers takes "tool_use" when tools are passed and "default" otherwise, and refuses a list without a
    default. We took "default" always, and a list without one silently became no template (the prompt alone)."""
    named = [{"name": "default", "template": "D:{{ messages[0].content }}"},
             {"name": "tool_use", "template": "T{{ tools | length }}:{{ messages[0].content }}"}]
    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}}]
    messages = [{"role": "user", "content": "hello"}]
    for name, templates in (("both", named), ("no_default", named[1:])):
        folder = _tokenizer_folder(tmp_path / name, "", "<s>", "</s>")
        config = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": templates}))
        ours, reference = Tokenizer(folder), AutoTokenizer.from_pretrained(folder)
        for kwargs in ({}, {"tools": tools}):
            try:
                expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
            except ValueError:
                expected = None  # transformers: "This model has multiple chat templates with no default specified!"
            if expected is None:
                with pytest.raises(ChatTemplateError, match="has chat templates named tool_use and none named default"):
                    render_for_tokenizer(ours, messages, **kwargs)
            else:
                assert render_for_tokenizer(ours, messages, **kwargs) == expected
    assert render_for_tokenizer(Tokenizer(tmp_path / "both"), messages, tools=tools) == "T1:hello"
