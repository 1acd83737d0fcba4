"""The finetuning data modules (litgpt_clone/data/sft.py) on a tiny byte-level BPE tokenizer trained here.

References nobody here wrote: transformers' AutoTokenizer (ids, character offsets, ``apply_chat_template`` and its
``return_assistant_tokens_mask``), the Alpaca prompt format as published by Stanford Alpaca, huggingface_hub's
download into the standard cache (against tests/hub_standin.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hub_standin import HubStandin

from litgpt_clone.chat_template import render_chat, render_for_tokenizer
from litgpt_clone.data.pretrain import DataError
from litgpt_clone.data.sft import SFT_DATA_MODULES, JSON, Alpaca, Chat, Dolly, SFTData
from litgpt_clone.tokenizer import Tokenizer
from test_generate import cli_error

REPO_ROOT = Path(__file__).resolve().parents[1]

# ChatML, with the assistant's turn in {% generation %} so transformers can compute its own assistant mask
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + '<|im_end|>\\n' }}{% endgeneration %}"
    "{% else %}{{ m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\nAdd two numbers.\n\n### Input:\n2 and 3\n\n### Response:\nThe answer is five.",
    "system user assistant: You are a helpful assistant. What is the capital of France? Paris. And of Italy? Rome.",
] * 4

# The Alpaca prompt as the Stanford Alpaca repository (train.py, PROMPT_DICT) writes it
ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome, since 1871."},
]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test encodes afresh, into its own cache."""
    monkeypatch.setenv("LITGPT_CLONE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "sft"


def _tokenizer_folder(path: Path, template, specials=("<s>", "</s>", "<|im_start|>", "<|im_end|>"), corpus=CORPUS) -> Path:
    """A byte-level BPE trained on ``corpus``; ``specials``: BOS (id 0), EOS (id 1) and two more (ids 2, 3)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    path.mkdir(parents=True)
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{specials[0]} $A", special_tokens=[(specials[0], 0)])
    tok.save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": specials[0], "eos_token": specials[1]}
    if template:
        config["chat_template"] = template
        # like Qwen: generation also stops at the end-of-turn token
        (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 3]}))
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_tokenizers")
    return {
        "chatml": _tokenizer_folder(root / "chatml", CHATML),
        "none": _tokenizer_folder(root / "none", None),
        # a template whose rendering of a prefix is not a prefix of the whole conversation's rendering
        "counting": _tokenizer_folder(root / "counting", "{{ messages|length }}" + CHATML),
    }


@pytest.fixture(scope="module")
def tok(folders):
    return Tokenizer(folders["chatml"])


@pytest.fixture(scope="module")
def hf(folders):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folders["chatml"])


def write_jsonl(path: Path, records) -> Path:
    lines = [r if isinstance(r, bytes) else json.dumps(r).encode() for r in records]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def rows(dataset) -> list[tuple[list[int], list[int]]]:
    """Every row of ``dataset`` in its epoch-0 order, padding removed."""
    x, y = dataset.batch(0, dataset.count)
    out = []
    for xi, yi in zip(x.tolist(), y.tolist()):
        n = len(xi)
        while n and xi[n - 1] == 0 and yi[n - 1] == -100:
            n -= 1
        out.append((xi[:n], yi[:n]))
    return out


# ------------------------------------------------------------------------------------------- instruction samples
def test_prompt_is_masked_exactly_and_eos_is_learned(tmp_path, tok, hf, capsys):
    records = [
        {"instruction": "Add two numbers.", "input": "2 and 3", "output": "The answer is five."},
        {"instruction": "Name a capital.", "output": "Paris."},
    ]
    path = write_jsonl(tmp_path / "data.jsonl", records)
    train, val = JSON(path, val_path=path, val_fraction=0.0).datasets(tok, 256, seed=1)
    assert capsys.readouterr().out == "json (instruction/input/output in data.jsonl): 4 samples (2 train, 2 validation)\n"
    (x0, y0), (x1, y1) = rows(val)  # the validation set keeps file order

    # reference: the Alpaca format, AutoTokenizer's ids (its post-processor adds BOS to the prompt)
    prompt = hf(ALPACA_INPUT.format(**records[0]))["input_ids"]
    response = hf(records[0]["output"], add_special_tokens=False)["input_ids"] + [hf.eos_token_id]
    assert prompt[0] == hf.bos_token_id == 0 and response[-1] == 1
    assert x0 == prompt + response[:-1]
    assert y0 == [-100] * (len(prompt) - 1) + response  # the target of the prompt's last token is the response's first
    assert (len(prompt), len(response)) == (86, 7)
    assert sum(t == -100 for t in y0) == 85 and y0[-1] == 1  # EOS is the last target

    prompt = hf(ALPACA_NO_INPUT.format(**records[1]))["input_ids"]
    response = hf("Paris.", add_special_tokens=False)["input_ids"] + [1]
    assert (x1, y1) == (prompt + response[:-1], [-100] * (len(prompt) - 1) + response)

    # mask_prompt=False: every next token is a target
    _, val = JSON(path, val_path=path, mask_prompt=False).datasets(tok, 256, seed=1)
    (x, y), _ = rows(val)
    assert x == x0 and y == x0[1:] + [1]


def test_auto_style_uses_the_checkpoints_template_like_transformers(tmp_path, tok, hf, folders):
    """With a chat style an instruction sample is the conversation [user, assistant] as the template writes it (as TRL
    renders prompt-completion data): transformers' ids and assistant mask, the answer's end-of-turn included. (The
    prompt's rendering + the answer trained Llama 2's "[/INST]answer", never "[/INST] answer" as the template has it.)"""
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "What is the capital of France?", "response": "Paris."}])
    _, val = JSON(path, val_path=path, prompt_style="auto").datasets(tok, 256, seed=0)
    (x, y), = rows(val)
    messages = [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}]
    ids, mask = reference_mask(folders["chatml"], CHATML, messages)
    labels = [t if m else -100 for t, m in zip(ids, mask)]  # (<|im_end|> is this tokenizer's stop token: no EOS added)
    assert ids[0] == hf.convert_tokens_to_ids("<|im_start|>") and 3 in tok.stop_ids  # no BOS added to a chat rendering
    assert hf.decode([t for t in labels if t != -100]) == "Paris.<|im_end|>\n"
    assert (x, y) == (ids[:-1], labels[1:])
    message = messages[:1]
    # without a template, auto falls back to the Alpaca format
    _, val = JSON(path, val_path=path, prompt_style="auto").datasets(Tokenizer(folders["none"]), 256, seed=0)
    (x, _), = rows(val)
    assert x[: len(ids)] != ids and x == hf(ALPACA_NO_INPUT.format(instruction=message[0]["content"]) + "Paris.")["input_ids"]


def test_dolly_context_and_prompt_response_fields(tmp_path, tok, hf, capsys):
    dolly = write_jsonl(tmp_path / "dolly.jsonl", [
        {"instruction": "Add two numbers.", "context": "2 and 3", "response": "The answer is five.", "category": "qa"},
    ])  # fmt: skip
    train, _ = Dolly(path=dolly, val_fraction=0).datasets(tok, 256, seed=0)
    assert capsys.readouterr().out == "dolly: 1 sample (1 train, 0 validation)\n"
    (x, _), = rows(train)
    assert x == hf(ALPACA_INPUT.format(instruction="Add two numbers.", input="2 and 3") + "The answer is five.")["input_ids"]

    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Add two numbers.", "response": "Five."}] * 3)
    train, val = JSON(pairs, val_fraction=0.34).datasets(tok, 256, seed=0)
    assert capsys.readouterr().out == "json (prompt/response in pairs.jsonl): 3 samples (2 train, 1 validation)\n"

    other = write_jsonl(tmp_path / "other.jsonl", [{"question": "q", "answer": "a"}, {"id": 3}])
    with pytest.raises(DataError) as err:
        JSON(other).datasets(tok, 256, seed=0)
    assert "\n" not in str(err.value) and "(found keys: answer, id, question)" in str(err.value)


# ------------------------------------------------------------------------------------------- conversations
def expected_chat(hf, messages) -> tuple[list[int], list[int]]:
    """Ids and the loss mask of a ChatML conversation, from the rendered text's character spans: a token is learned
    when it lies inside an assistant message's content + '<|im_end|>\\n'."""
    text = hf.apply_chat_template(messages, tokenize=False)
    spans, at = [], 0
    for m in messages:
        at = text.index(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n", at) + len(f"<|im_start|>{m['role']}\n")
        if m["role"] == "assistant":
            spans.append((at, at + len(m["content"] + "<|im_end|>\n")))
    enc = hf(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [any(a <= s and e <= b for a, b in spans) for s, e in enc["offset_mapping"]]
    assert all(any(a <= s < b for a, b in spans) == m for (s, e), m in zip(enc["offset_mapping"], mask))  # no straddling
    return enc["input_ids"], mask


def test_chat_masks_assistant_turns_token_by_token(tmp_path, tok, hf, capsys):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])
    _, val = Chat(path, val_path=path).datasets(tok, 256, seed=0)
    assert capsys.readouterr().out == "chat: 2 samples (1 train, 1 validation)\n"
    (x, y), = rows(val)

    ids, mask = expected_chat(hf, CONVERSATION)
    # transformers computes the same mask from the template's {% generation %} blocks
    reference = hf.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert reference["input_ids"] == ids and reference["assistant_masks"] == [int(m) for m in mask]
    assert x == ids[:-1]
    assert y == [t if m else -100 for t, m in zip(ids[1:], mask[1:])]
    im_end = hf.convert_tokens_to_ids("<|im_end|>")
    assert (len(ids), sum(mask), [t for t in y if t == im_end]) == (70, 21, [im_end, im_end])
    assert 1 not in x + y  # the end-of-turn token is a stop token here: no EOS appended

    _, val = Chat(path, val_path=path, mask_prompt=False).datasets(tok, 256, seed=0)
    assert rows(val) == [(ids[:-1], ids[1:])]


def test_chat_fallback_style_and_template_errors(tmp_path, tok, hf, folders):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])
    ids, mask = expected_chat(hf, CONVERSATION)
    plain = Tokenizer(folders["none"])
    with pytest.raises(DataError) as err:
        Chat(path).datasets(plain, 256, seed=0)
    assert "\n" not in str(err.value) and "has no chat_template" in str(err.value) and "--data.prompt_style chatml" in str(err.value)

    # the chatml fallback writes the same text; <|im_end|> is no stop token of this tokenizer, so EOS ends the answer
    _, val = Chat(path, val_path=path, prompt_style="chatml").datasets(plain, 256, seed=0)
    assert rows(val) == [(ids, [t if m else -100 for t, m in zip(ids[1:], mask[1:])] + [1])]

    # a template whose rendering of the first turns is not the start of the whole one ("5<|im_start|>..." for five
    # messages, "2<|im_start|>..." for two): the turns are found by their content, the mask is the same
    _, val = Chat(path, val_path=path).datasets(Tokenizer(folders["counting"]), 256, seed=0)
    (x, y), = rows(val)
    five = hf("5", add_special_tokens=False)["input_ids"]
    assert x == five + ids[:-1] and y == [-100] * len(five) + [t if m else -100 for t, m in zip(ids[1:], mask[1:])]
    with pytest.raises(DataError, match="prompt_style plain writes only the last user message"):
        Chat(path, prompt_style="plain")
    with pytest.raises(DataError, match="unknown --data.prompt_style 'vicuna'"):
        JSON(path, prompt_style="vicuna")


def test_chat_skips_are_counted(tmp_path, tok, capsys):
    user, answer = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [user, answer]},
        {"messages": [user]},  # no assistant message
        {"messages": [answer, user, answer]},  # assistant message first
        {"messages": [user, {"role": "assistant", "content": " "}]},  # empty response
        {"messages": [user, {"role": "assistant"}]},  # missing field
        {"conversation": []},  # missing field
        b'{"messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "ok"}]}',  # Latin-1
    ])  # fmt: skip
    train, _ = Chat(path, val_fraction=0).datasets(tok, 256, seed=0)
    assert train.stats["skipped"] == {"no assistant message": 1, "assistant message first": 1, "empty response": 1, "missing field": 2, "not UTF-8": 1}
    assert capsys.readouterr().out == (
        "chat: 1 sample (1 train, 0 validation), 6 skipped (1 assistant message first: chat.jsonl:3; 1 empty response: "
        "chat.jsonl:4; 2 missing field: chat.jsonl:5, chat.jsonl:6; 1 no assistant message: chat.jsonl:2; 1 not UTF-8: chat.jsonl:7)\n"
    )


def marked(template: str, start: str, end: str, body: str) -> str:
    """``template`` with ``template[start:end]`` (its assistant branch) replaced by ``body``: the same rendering with
    ``{% generation %}`` around what the assistant says, so transformers can compute its own mask."""
    a = template.index(start)
    b = template.index(end, a) + len(end)
    return template[:a] + body + template[b:]


def reference_mask(folder: Path, template: str, messages) -> tuple[list[int], list[int]]:
    """transformers' ids and ``return_assistant_tokens_mask`` for ``messages`` under ``template`` (with generation
    blocks), on the tokenizer in ``folder``."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(folder)
    out = hf.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    return out["input_ids"], out["assistant_masks"]


TWO_QUESTIONS = [
    {"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3 + 3?"}, {"role": "assistant", "content": "6"},
]  # fmt: skip


def test_chat_masks_multi_turn_qwen3_like_transformers(tmp_path_factory, tmp_path):
    """The real Qwen3 template writes the empty <think> block only in an assistant turn after the last user message,
    so the first turns alone render differently from the whole conversation (every multi-turn record was a
    dataset-wide error). The mask is that of transformers' return_assistant_tokens_mask on the same template with
    {% generation %} around the assistant's part."""
    from test_chat_template import QWEN_3

    folder = _tokenizer_folder(tmp_path_factory.mktemp("qwen3") / "tok", QWEN_3)
    marked_qwen3 = marked(QWEN_3, "{%- if loop.index0 > ns.last_query_index %}", "{{- '<|im_end|>\\n' }}", (
        "{{- '<|im_start|>' + message.role + '\\n' }}{%- generation %}"
        "{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}"
        "{{- '<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
        "{%- else %}{{- content }}{%- endif %}{{- '<|im_end|>\\n' }}{%- endgeneration %}"
    ))
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}, {"messages": TWO_QUESTIONS}])
    tok = Tokenizer(folder)
    _, val = Chat(path, val_path=path).datasets(tok, 256, seed=0)
    for (x, y), messages in zip(rows(val), (CONVERSATION, TWO_QUESTIONS)):
        assert render_chat(marked_qwen3, messages, add_generation_prompt=False) == render_chat(QWEN_3, messages, add_generation_prompt=False)
        ids, mask = reference_mask(folder, marked_qwen3, messages)
        assert x == ids[:-1] and y == [t if m else -100 for t, m in zip(ids[1:], mask[1:])]
    learned = [tok.decode([t for t in y if t != -100], skip_special_tokens=False) for _, y in rows(val)]
    assert learned == [  # the last turn's empty think block too, as the template writes it
        "Paris.<|im_end|>\n<think>\n\n</think>\n\nRome, since 1871.<|im_end|>\n", "4<|im_end|>\n<think>\n\n</think>\n\n6<|im_end|>\n"
    ]


def test_chat_masks_llama3_where_the_newlines_merge_at_the_turn_boundary(tmp_path_factory, tmp_path):
    """Llama 3's generation prompt ends in "\\n\\n", one token alone, two inside the conversation ("\\n\\nParis"):
    the prompt's tokens are no prefix of the conversation's (every record was an error, with the template and with
    the llama3 style). The turns are placed by their characters; the mask is transformers'."""
    from test_chat_template import LLAMA_3

    specials = ("<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>")
    # "\n\n" at the end of a text is one pre-token (before a word, "\n" and "\n"): its merge is learned from these
    folder = _tokenizer_folder(tmp_path_factory.mktemp("llama3") / "tok", LLAMA_3, specials, corpus=[*CORPUS, *["Paris.\n\n"] * 30])
    marked_llama3 = (
        "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' }}"
        "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
        "{% else %}{{ m['content'] | trim + '<|eot_id|>' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    )
    tok = Tokenizer(folder)
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}, {"messages": TWO_QUESTIONS}])
    whole = tok.encode(render_for_tokenizer(tok, CONVERSATION, add_generation_prompt=False), bos=False).tolist()
    prompt = tok.encode(render_for_tokenizer(tok, CONVERSATION[:2], add_generation_prompt=True), bos=False).tolist()
    assert whole[: len(prompt)] != prompt and whole[: len(prompt) - 1] == prompt[:-1]  # the last "\n\n" token
    for style in ("auto", "llama3"):
        _, val = Chat(path, val_path=path, prompt_style=style).datasets(tok, 256, seed=0)
        for (x, y), messages in zip(rows(val), (CONVERSATION, TWO_QUESTIONS)):
            assert render_for_tokenizer(tok, messages, add_generation_prompt=False) == render_chat(marked_llama3, messages, "<|begin_of_text|>", add_generation_prompt=False)
            ids, mask = reference_mask(folder, marked_llama3, messages)
            assert x == ids[:-1] and y == [t if m else -100 for t, m in zip(ids[1:], mask[1:])], style
    assert [tok.decode([t], skip_special_tokens=False) for t in y if t != -100] == ["4", "<|eot_id|>", "6", "<|eot_id|>"]


def test_a_conversation_that_cannot_be_masked_is_skipped_and_located(tmp_path, folders, capsys):
    """A template that rewrites the answer (here: upper case) leaves nothing to place the turn by: that record is
    skipped and counted with its line, the others train; without prompt masking nothing needs placing."""
    upper = CHATML.replace("{{ m['content'] + '<|im_end|>\\n' }}{% endgeneration %}", "{{ m['content'] | upper + '<|im_end|>\\n' }}{% endgeneration %}")
    assert upper != CHATML
    folder = folders["chatml"].parent / "upper"
    if not folder.exists():
        _tokenizer_folder(folder, upper)
    user = {"role": "user", "content": "Hi"}
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [user, {"role": "assistant", "content": "OK."}]},
        {"messages": [user, {"role": "assistant", "content": "Fine."}]},  # rendered "FINE."
    ])  # fmt: skip
    train, _ = Chat(path, val_fraction=0).datasets(Tokenizer(folder), 256, seed=0)
    assert capsys.readouterr().out == "chat: 1 sample (1 train, 0 validation), 1 skipped (assistant message not found in the rendering: chat.jsonl:2)\n"
    train, _ = Chat(path, val_fraction=0, mask_prompt=False).datasets(Tokenizer(folder), 256, seed=0)
    assert capsys.readouterr().out == "chat: 2 samples (2 train, 0 validation)\n"
    assert all((labels[1:] == tokens[1:]).all() for tokens, labels in train.samples)


def test_chat_takes_openai_content_parts_and_sharegpt_records(tmp_path, tok, capsys):
    """A content given as OpenAI text parts, and ShareGPT's conversations (from human/gpt/system, value), are the
    same conversation as plain messages; a part that is not text is a counted skip; a file of neither says which
    format is expected."""
    parts = lambda *texts: [{"type": "text", "text": t} for t in texts]  # noqa: E731
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": CONVERSATION[:3]},
        {"messages": [{"role": "system", "content": parts("You are a helpful assistant.")},
                      {"role": "user", "content": parts("What is the capital of France?")}, CONVERSATION[2]]},
        {"conversations": [{"from": "system", "value": "You are a helpful assistant."},
                           {"from": "human", "value": "What is the capital of France?"}, {"from": "gpt", "value": "Paris."}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]}, CONVERSATION[2]]},
    ])  # fmt: skip
    train, _ = Chat(path, val_fraction=0).datasets(tok, 256, seed=0)
    assert capsys.readouterr().out == "chat: 3 samples (3 train, 0 validation), 1 skipped (content part that is not text: chat.jsonl:4)\n"
    (tokens, labels), *others = train.samples
    assert len(tokens) == 38 and all((t == tokens).all() and (l == labels).all() for t, l in others)
    # parts are joined with newlines, as serve (and vLLM) joins them: a model trains on the prompt it is served
    from litgpt_clone.data.sft import chat_messages

    messages, _ = chat_messages({"messages": [{"role": "user", "content": parts("Summarize:", "The cat sat.")}, CONVERSATION[2]]})
    assert messages[0]["content"] == "Summarize:\nThe cat sat."

    other = write_jsonl(tmp_path / "dialogs.jsonl", [{"dialog": [{"speaker": "a", "text": "Hi"}]}])
    with pytest.raises(DataError) as err:
        Chat(other, val_fraction=0).datasets(tok, 256, seed=0)
    assert str(err.value) == (
        f'no usable training samples in {other}: 1 skipped (missing field: dialogs.jsonl:1) of the training records: each record needs '
        '"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}] (or ShareGPT "conversations": '
        '[{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}], or TRL\'s "prompt": [{"role": "user", "content": "..."}], '
        '"completion": [{"role": "assistant", "content": "..."}])'
    )


def test_chat_takes_trls_conversational_prompt_completion(tmp_path, tok, hf, capsys):
    """TRL's conversational prompt-completion ({"prompt": [messages], "completion": [messages]}) is the conversation
    prompt + completion, learned as TRL's completion-only loss learns it: every token after the prompt rendered with
    the generation prompt (an assistant turn inside the prompt is not learned, as it is in "messages")."""
    prompt, completion = [CONVERSATION[0], *TWO_QUESTIONS[:3]], [TWO_QUESTIONS[3]]
    records = [{"prompt": prompt, "completion": completion}, {"messages": prompt + completion}]
    text = {"prompt": "What is 2 + 2?", "completion": "4"}  # TRL's standard (text) layout: --data json's
    path, val_path = write_jsonl(tmp_path / "chat.jsonl", [*records, text]), write_jsonl(tmp_path / "val.jsonl", records)
    _, val = Chat(path, val_path=val_path).datasets(tok, 256, seed=0)
    assert capsys.readouterr().out == (
        "chat: 4 samples (2 train, 2 validation), 1 skipped (prompt/completion text, not messages (use --data json): chat.jsonl:3)\n"
    )
    (x, y), (x_all, y_all) = rows(val)
    # reference: TRL's tokenization with transformers' apply_chat_template (prompt ids, then the rest learned)
    prompt_ids = hf.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    ids = hf.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids and len(prompt_ids) < len(ids)
    labels = [-100] * len(prompt_ids) + ids[len(prompt_ids) :]
    assert (x, y) == (ids[:-1], labels[1:])
    assert hf.decode([t for t in y if t != -100]) == "6<|im_end|>\n"
    assert x_all == x and hf.decode([t for t in y_all if t != -100]) == "4<|im_end|>\n6<|im_end|>\n"  # "messages": both answers


def _sentencepiece_folder(path: Path, **config):
    """A Llama-2-like SentencePiece tokenizer.model (BPE, byte fallback, dummy prefix) trained on CORPUS, and its
    sentencepiece processor."""
    import sentencepiece

    path.mkdir(parents=True, exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([*CORPUS, "Paris is the capital of France."] * 4), model_prefix=str(path / "tokenizer"), model_type="bpe",
        vocab_size=300, byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, minloglevel=2,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,  # as Llama 2's
    )
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, **config}))
    return sentencepiece.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))


@pytest.mark.parametrize("config", [{}, {"tokenizer_class": "LlamaTokenizer", "legacy": False}], ids=["generic", "llama2"])
def test_a_sentencepiece_response_continues_the_prompt(tmp_path, config):
    """A SentencePiece tokenizer with a dummy prefix put a "▁" in front of every response encoded alone ("▁P",
    "aris" after "### Response:\\n"): the learned ids are those sentencepiece gives the response within
    prompt + response (as LitGPT and TRL tokenize it), then EOS."""
    sp = _sentencepiece_folder(tmp_path, **config)
    records = [{"instruction": "Name the capital of France.", "output": "Paris"}, {"instruction": "Add two numbers.", "output": " The answer is five."}]
    path = write_jsonl(tmp_path / "data.jsonl", records)
    _, val = JSON(path, val_path=path).datasets(Tokenizer(tmp_path), 256, seed=0)
    for record, (tokens, labels) in zip(records, val.samples):
        prompt = sp.encode(ALPACA_NO_INPUT.format(**record))
        joint = sp.encode(ALPACA_NO_INPUT.format(**record) + record["output"])
        assert joint[: len(prompt)] == prompt
        assert tokens.tolist() == [1, *joint, 2] and labels.tolist() == [-100] * (1 + len(prompt)) + joint[len(prompt) :] + [2]
    learned = [sp.id_to_piece(int(t)) for t in val.samples[0][1] if t != -100]
    assert learned[-1] == "</s>" and not learned[0].startswith("▁") and "".join(learned[:-1]) == "Paris"
    assert sp.id_to_piece(int(val.samples[1][1][val.samples[1][1] != -100][0])).startswith("▁")  # its own space stays


def test_chat_masks_a_sentencepiece_tokenizers_turns_like_transformers(tmp_path):
    """tokenizer.model: the tokens' places in the text come from their pieces (the dummy prefix's "▁" included),
    and the mask is transformers' return_assistant_tokens_mask on the Llama 2 template with {% generation %} around
    the answer (its " Paris. </s>")."""
    from test_chat_template import LLAMA_2

    _sentencepiece_folder(tmp_path / "tok", tokenizer_class="LlamaTokenizer", legacy=False, chat_template=LLAMA_2)
    answer = "{{ ' '  + content.strip() + ' ' + eos_token }}"
    marked_llama2 = LLAMA_2.replace(answer, "{% generation %}" + answer + "{% endgeneration %}")
    assert marked_llama2 != LLAMA_2
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}, {"messages": TWO_QUESTIONS}])
    tok = Tokenizer(tmp_path / "tok")
    assert tok.backend == "sentencepiece"
    _, val = Chat(path, val_path=path).datasets(tok, 256, seed=0)
    for (x, y), messages in zip(rows(val), (CONVERSATION, TWO_QUESTIONS)):
        assert render_for_tokenizer(tok, messages, add_generation_prompt=False) == render_chat(marked_llama2, messages, "<s>", "</s>", add_generation_prompt=False)
        ids, mask = reference_mask(tmp_path / "tok", marked_llama2, messages)
        assert x == ids[:-1] and y == [t if m else -100 for t, m in zip(ids[1:], mask[1:])]
    assert b"".join(tok.token_bytes(t) for t in y if t != -100) == b" 4 </s> 6 </s>"


def test_json_takes_one_layout_per_file(tmp_path, tok, capsys):
    """The first record with a pair decides; one record of the other pair makes the file one line naming both
    (it turned every record of the first pair into a skip)."""
    pairs = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(3)]
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [*pairs, {"instruction": "i4", "output": "o4"}])
    with pytest.raises(DataError) as err:
        JSON(mixed, val_fraction=0).datasets(tok, 64, seed=0)
    assert str(err.value) == f"{mixed} mixes prompt/response records (mixed.jsonl:1) with instruction/input/output records (mixed.jsonl:4): use one layout per file"
    listed = tmp_path / "mixed.json"
    listed.write_text(json.dumps([{"note": "no pair"}, {"instruction": "i", "output": "o"}, *pairs]))
    with pytest.raises(DataError, match=r"mixes instruction/input/output records \(mixed.json\[1\]\) with prompt/response records \(mixed.json\[2\]\)"):
        JSON(listed, val_fraction=0).datasets(tok, 64, seed=0)
    listed.write_text(json.dumps([*pairs, {"prompt": "p3"}]))
    train, _ = JSON(listed, val_fraction=0).datasets(tok, 64, seed=0)
    assert capsys.readouterr().out == "json (prompt/response in mixed.json): 3 samples (3 train, 0 validation), 1 skipped (missing field: mixed.json[3])\n"


def test_json_takes_trls_prompt_completion_as_prompt_response(tmp_path, tok, hf, capsys):
    """TRL's standard prompt-completion records ({"prompt", "completion"}, text) were refused ("has neither
    instruction/input/output nor prompt/response fields"): they are prompt/response records under another name. With
    prompt_style plain a sample is what TRL trains: the prompt's ids, then the completion's, then EOS (learned)."""
    pairs = [("The sky is", " blue."), ("Add two numbers.", "Five."), ("Name a capital.", "Paris.")]
    completion = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": p, "completion": c} for p, c in pairs])
    response = write_jsonl(tmp_path / "pr.jsonl", [{"prompt": p, "response": c} for p, c in pairs])
    for style in ("alpaca", "plain"):
        _, ours = JSON(completion, val_path=completion, prompt_style=style).datasets(tok, 256, seed=0)
        _, same = JSON(response, val_path=response, prompt_style=style).datasets(tok, 256, seed=0)
        assert rows(ours) == rows(same)
    assert capsys.readouterr().out.splitlines()[-2] == "json (prompt/completion in pc.jsonl): 6 samples (3 train, 3 validation)"
    for (x, y), (prompt, answer) in zip(rows(ours), pairs):  # (ours: the plain style)
        prompt_ids = hf(prompt)["input_ids"]  # TRL: the prompt's ids with the tokenizer's special tokens (BOS here)
        ids = hf(prompt + answer)["input_ids"] + [hf.eos_token_id]
        assert prompt_ids[0] == 0 and ids[: len(prompt_ids)] == prompt_ids
        assert (x, y) == (ids[:-1], [-100] * (len(prompt_ids) - 1) + ids[len(prompt_ids) :])
    assert hf.decode([t for t in rows(ours)[0][1] if t != -100]) == " blue.</s>"

    # a record with prompt, response and completion is a prompt/response record (the first layout that fits), not both
    both = write_jsonl(tmp_path / "both.jsonl", [{"prompt": "The sky is", "response": " blue.", "completion": "x"}, {"prompt": "a", "response": "b"}])
    JSON(both, val_fraction=0).datasets(tok, 256, seed=0)
    assert capsys.readouterr().out == "json (prompt/response in both.jsonl): 2 samples (2 train, 0 validation)\n"
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c", "completion": "d"}])
    with pytest.raises(DataError) as err:
        JSON(mixed, val_fraction=0).datasets(tok, 256, seed=0)
    assert str(err.value) == f"{mixed} mixes prompt/response records (mixed.jsonl:1) with prompt/completion records (mixed.jsonl:2): use one layout per file"
    # TRL's conversational prompt-completion (lists of messages) is --data chat's: one line saying so
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello."}]}])
    with pytest.raises(DataError) as err:
        JSON(chats, val_fraction=0).datasets(tok, 256, seed=0)
    assert str(err.value) == f"{chats} holds TRL's conversational prompt/completion (lists of messages, chats.jsonl:1): train it with --data chat"
    other = write_jsonl(tmp_path / "other.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError) as err:
        JSON(other, val_fraction=0).datasets(tok, 256, seed=0)
    assert str(err.value) == (
        f"{other} has none of the field sets instruction/input/output, prompt/response, prompt/completion (found keys: answer, "
        "question): rename its fields"
    )


def test_an_ignore_index_other_than_minus_100_is_refused(tmp_path):
    """The loss leaves out targets of -100 only: -1 trained every prompt and padding position towards id 0."""
    path = write_jsonl(tmp_path / "data.jsonl", [{"instruction": "x", "output": "y"}])
    for module in (JSON, Chat):
        with pytest.raises(DataError) as err:
            module(path, ignore_index=-1)
        assert str(err.value) == "--data.ignore_index -1: the loss leaves out targets of -100 only; drop the flag (-100 is the default)"
    assert JSON(path, ignore_index=-100).ignore_index == -100


# ------------------------------------------------------------------------------------------- bad data, truncation
def test_truncation_skips_and_padding(tmp_path, tok, hf, capsys):
    short = {"instruction": "Add two numbers.", "output": "Five."}
    long_answer = {"instruction": "Add two numbers.", "output": "The answer is five. " * 40}
    long_prompt = {"instruction": "Add two numbers. " * 40, "output": "Five."}
    path = write_jsonl(tmp_path / "data.jsonl", [
        short, short, short, long_answer, long_answer, long_prompt,
        {"instruction": "Add two numbers."},  # missing field
        {"instruction": "Add two numbers.", "output": None},  # missing field
        {"instruction": "Add two numbers.", "output": ""},  # empty response
        {"instruction": "Add two numbers.", "output": " \n"},  # empty response
        {"instruction": "", "output": "Five."},  # empty instruction
        b'{"instruction": "Add two numbers.", "output": "f\xfcnf"}',  # Latin-1, not UTF-8
        b'{"instruction": "Add two numbers.", "output": "Five."',  # invalid JSON
        [1, 2],  # not an object
        b"",  # blank lines are no records
    ])  # fmt: skip
    train, val = JSON(path, val_fraction=0).datasets(tok, 64, seed=0)
    assert val is None
    assert train.stats == {
        "samples": 5,
        "skipped": {"response beyond max_seq_length": 1, "missing field": 2, "empty response": 2, "empty instruction": 1,
                    "not UTF-8": 1, "invalid JSON": 1, "not an object": 1},
        "skipped_at": {"response beyond max_seq_length": ["data.jsonl:6"], "missing field": ["data.jsonl:7", "data.jsonl:8"],
                       "empty response": ["data.jsonl:9", "data.jsonl:10"], "empty instruction": ["data.jsonl:11"],
                       "not UTF-8": ["data.jsonl:12"], "invalid JSON": ["data.jsonl:13"], "not an object": ["data.jsonl:14"]},
        "truncated": 2,
        "rows": 5,
        "longest": 64,
    }  # fmt: skip
    assert capsys.readouterr().out == (
        "json (instruction/input/output in data.jsonl): 5 samples (5 train, 0 validation), 9 skipped (1 empty instruction: "
        "data.jsonl:11; 2 empty response: data.jsonl:9, data.jsonl:10; 1 invalid JSON: data.jsonl:13; 2 missing field: "
        "data.jsonl:7, data.jsonl:8; 1 not UTF-8: data.jsonl:12; 1 not an object: data.jsonl:14; "
        "1 response beyond max_seq_length: data.jsonl:6), 2 truncated to 64 tokens\n"
    )

    # the short samples: L = the longest row in the batch; shorter rows padded with 0 / -100
    full = hf(ALPACA_NO_INPUT.format(**short) + "Five.")["input_ids"] + [1]
    prompt_length = len(hf(ALPACA_NO_INPUT.format(**short))["input_ids"])
    x, y = train.batch(0, 5)
    assert x.shape == y.shape == (5, 64)
    answer = hf(ALPACA_NO_INPUT.format(**long_answer) + long_answer["output"])["input_ids"]
    for xi, yi, (row_x, row_y) in zip(x.tolist(), y.tolist(), rows(train)):
        n = len(row_x)
        assert xi[n:] == [0] * (64 - n) and yi[n:] == [-100] * (64 - n)
        if n < 64:
            assert (row_x, row_y) == (full[:-1], [-100] * (prompt_length - 1) + full[prompt_length:])
        else:  # truncated: the row is the first 64 tokens, the response learned up to the cut, no EOS
            assert (row_x, row_y) == (answer[:64], [-100] * (prompt_length - 1) + answer[prompt_length:65])
    assert sorted(len(r[0]) for r in rows(train)) == [len(full) - 1] * 3 + [64, 64] and len(full) == 44


def test_a_field_that_is_not_text_is_named_in_its_skip_reason(tmp_path, tok, capsys):
    """A field holding a number or a list was counted as "missing field": the reason names the field and its type.
    An absent or null field is still a missing one (an optional input may be absent or null)."""
    records = [
        {"instruction": "Add 2 and 3.", "input": "", "output": 5},
        {"instruction": "List.", "input": "", "output": ["a", "b"]},
        {"instruction": "Add.", "input": 7, "output": "7"},
        {"instruction": {"text": "x"}, "output": "y"},
        {"instruction": "Say hi.", "output": None},
        {"instruction": "Say hi.", "input": None, "output": "hi"},
    ]
    train, _ = JSON(write_jsonl(tmp_path / "nonstring.jsonl", records), val_fraction=0).datasets(tok, 64, seed=0)
    assert train.stats["skipped"] == {
        "output is not a string (int)": 1, "output is not a string (list)": 1, "input is not a string (int)": 1,
        "instruction is not a string (dict)": 1, "missing field": 1,
    }  # fmt: skip
    assert capsys.readouterr().out == (
        "json (instruction/input/output in nonstring.jsonl): 1 sample (1 train, 0 validation), 5 skipped (1 input is not a "
        "string (int): nonstring.jsonl:3; 1 instruction is not a string (dict): nonstring.jsonl:4; 1 missing field: "
        "nonstring.jsonl:5; 1 output is not a string (int): nonstring.jsonl:1; 1 output is not a string (list): nonstring.jsonl:2)\n"
    )
    dolly = write_jsonl(tmp_path / "dolly.jsonl", [{"instruction": "x", "context": 3.5, "response": "y"}, {"instruction": "x", "response": "y"}])
    train, _ = Dolly(path=dolly, val_fraction=0).datasets(tok, 64, seed=0)
    assert train.stats["skipped"] == {"context is not a string (float)": 1} and train.count == 1


def test_nothing_usable_is_one_line(tmp_path, tok):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "x", "output": ""}, {"instruction": "y"}])
    with pytest.raises(DataError) as err:
        JSON(path, val_fraction=0).datasets(tok, 64, seed=0)
    assert str(err.value) == (
        f"no usable training samples in {path}: 2 skipped (1 empty response: bad.jsonl:1; 1 missing field: bad.jsonl:2) of the training records"
    )
    from litgpt_clone.data.sft import validation_indices

    (held,) = validation_indices(2, 0.5)  # the one usable record is the one held out: say so
    records = [{"instruction": "x", "output": "y"} if i == held else {"instruction": "y"} for i in range(2)]
    with pytest.raises(DataError) as err:
        JSON(write_jsonl(tmp_path / "one.jsonl", records), val_fraction=0.5).datasets(tok, 64, seed=0)
    assert str(err.value).endswith(f"1 skipped (missing field: one.jsonl:{2 - held}) of the training records; the 1 usable one(s) went "
                                   "to validation: lower --data.val_fraction, or give more records"), str(err.value)
    with pytest.raises(DataError, match=r"is not valid JSON \(line 1, column 3"):
        JSON(write_jsonl(tmp_path / "broken.json", [b"[{x"]), val_fraction=0).datasets(tok, 64, seed=0)
    with pytest.raises(DataError, match="no file at"):
        JSON(tmp_path / "missing.json").datasets(tok, 64, seed=0)
    empty = write_jsonl(tmp_path / "empty.json", [b"[]"])  # these three were "found keys: none"
    with pytest.raises(DataError) as err:
        JSON(empty, val_fraction=0).datasets(tok, 64, seed=0)
    assert str(err.value) == f"{empty} holds no records: give a JSON list of objects, or one JSON object per line (.jsonl)"
    garbled = write_jsonl(tmp_path / "garbled.jsonl", [b'{"instruction": "x', b"not json"])
    with pytest.raises(DataError) as err:
        JSON(garbled, val_fraction=0).datasets(tok, 64, seed=0)
    assert str(err.value).startswith(f"{garbled}: none of its 2 lines is valid JSON: write one")
    with pytest.raises(DataError, match="none of its records is a JSON object"):
        JSON(write_jsonl(tmp_path / "ints.json", [b"[1, 2]"]), val_fraction=0).datasets(tok, 64, seed=0)
    with pytest.raises(DataError, match=r"--data.val_fraction 1.5: use a share of the records in \[0, 1\)"):
        JSON(garbled, val_fraction=1.5)


def test_a_bad_data_option_is_one_line_through_the_cli(tmp_path, capsys):
    """An error raised while jsonargparse builds the --data object came out as its multi-line ValueError (a
    traceback); the CLI prints the error itself, on one line."""
    path = write_jsonl(tmp_path / "data.jsonl", [{"instruction": "x", "output": "y"}])
    cases = [
        (["--data.prompt_style", "bogus"], "error: unknown --data.prompt_style 'bogus': use one of auto, alpaca"),
        (["--data.val_fraction", "2"], "error: --data.val_fraction 2.0: use a share of the records in [0, 1)"),
        (["--data.val_fraction", "abc"], "error: --data.val_fraction abc: expected a float"),
        (["--data.ignore_index", "-1"], "error: --data.ignore_index -1: the loss leaves out targets of -100 only"),
    ]
    for args, start in cases:
        line = cli_error(capsys, "finetune", "lora", tmp_path, "--data", "json", "--data.path", path, *args, "--out_dir", tmp_path / "out")
        assert line.startswith(start)


# ------------------------------------------------------------------------------------------- packing, order, split
def test_packing_keeps_each_samples_mask(tmp_path, tok):
    records = [{"instruction": f"Add {i} and {i + 1}.", "output": "Five. " * (i % 4 + 1)} for i in range(12)]
    path = write_jsonl(tmp_path / "data.jsonl", records)
    _, single = JSON(path, val_path=path).datasets(tok, 200, seed=0)
    _, packed = JSON(path, val_path=path, packing=True).datasets(tok, 200, seed=0)
    singles, packs = rows(single), rows(packed)
    assert (len(singles), len(packs)) == (12, 4) and packed.stats["samples"] == 12
    assert max(len(x) for x, _ in packs) <= 200
    # each packed row is consecutive samples (of len(x) + 1 tokens each) joined, as many as fit in 201 tokens; the
    # previous sample's EOS becomes an input, and the next sample's first token (BOS) is no target
    i = 0
    for x, y in packs:
        want_x, want_y = singles[i][0], singles[i][1]
        i += 1
        while i < 12 and len(want_x) + 1 + len(singles[i][0]) + 1 <= 201:
            want_x, want_y = want_x + [1] + singles[i][0], want_y + [-100] + singles[i][1]
            i += 1
        assert (x, y) == (want_x, want_y)
    assert i == 12
    # without prompt masking too, a sample's first token (BOS) is no target after the joint
    _, packed = JSON(path, val_path=path, packing=True, mask_prompt=False).datasets(tok, 200, seed=0)
    (x, y), n = rows(packed)[0], len(singles[0][0])
    assert (x[n - 1 : n + 2], y[n - 1 : n + 2]) == ([singles[0][0][-1], 1, 0], [1, -100, singles[1][0][1]])


def test_order_is_seeded_and_wraps_into_new_epochs(tmp_path, tok):
    path = write_jsonl(tmp_path / "data.jsonl", [{"instruction": "Add two numbers.", "output": f"{i}"} for i in range(20)])
    a, _ = JSON(path, val_fraction=0).datasets(tok, 64, seed=7)
    b, _ = JSON(path, val_fraction=0).datasets(tok, 64, seed=7)
    c, _ = JSON(path, val_fraction=0).datasets(tok, 64, seed=8)
    epoch0, epoch1 = a.batch(0, 20), a.batch(20, 20)
    assert all(torch.equal(p, q) for p, q in zip(epoch0, b.batch(0, 20)))
    assert not torch.equal(epoch0[0], c.batch(0, 20)[0]) and not torch.equal(epoch0[0], epoch1[0])
    as_set = lambda x: sorted(map(tuple, x.tolist()))  # noqa: E731
    assert as_set(epoch0[0]) == as_set(epoch1[0]) == as_set(c.batch(0, 20)[0])  # every sample once per epoch
    assert len(set(map(tuple, epoch0[0].tolist()))) == 20
    # a batch is its samples, wherever it starts (the data position is one number)
    x, y = a.batch(17, 6)
    assert torch.equal(x, torch.cat([epoch0[0][17:], epoch1[0][:3]])) and torch.equal(y, torch.cat([epoch0[1][17:], epoch1[1][:3]]))


def test_validation_split_is_stable(tmp_path, tok, hf):
    path = write_jsonl(tmp_path / "data.jsonl", [{"instruction": "Add two numbers.", "output": f"{i}"} for i in range(200)])
    answers = {}
    for seed, max_seq_length in ((0, 64), (1, 64), (0, 128)):
        train, val = JSON(path, val_fraction=0.1).datasets(tok, max_seq_length, seed=seed)
        decode = lambda ds: [hf.decode(x).rsplit("\n", 1)[1] for x, _ in rows(ds)]  # noqa: E731
        answers[seed, max_seq_length] = decode(train), decode(val)
    train, val = answers[0, 64]
    assert (len(train), len(val)) == (180, 20) and sorted(map(int, train + val)) == list(range(200))
    assert val == sorted(val, key=int)  # validation keeps file order
    assert all(set(v) == set(val) for _, v in answers.values())
    assert min(map(int, val)) < 50 and max(map(int, val)) >= 150  # spread over the file, not its tail


def test_encoded_samples_are_cached(tmp_path, tok, cache, monkeypatch, capsys):
    import litgpt_clone.data.sft as sft

    records = [{"instruction": "Add two numbers.", "output": f"{i}"} for i in range(30)] + [{"instruction": "x"}]
    path = write_jsonl(tmp_path / "data.jsonl", records)
    first = JSON(path, val_fraction=0.1).datasets(tok, 128, seed=3)
    line = capsys.readouterr().out

    def no_reading(path):
        raise AssertionError("read again")

    monkeypatch.setattr(sft, "read_records", no_reading)
    again = JSON(path, val_fraction=0.1, packing=True).datasets(tok, 128, seed=3)  # packing is applied after the cache
    assert capsys.readouterr().out == line == (
        "json (instruction/input/output in data.jsonl): 30 samples (27 train, 3 validation), 1 skipped (missing field: data.jsonl:31)\n"
    )  # the places of skipped records are cached too
    unpacked = JSON(path, val_fraction=0.1).datasets(tok, 128, seed=3)
    for a, b in zip(first, unpacked):
        assert a.stats == b.stats and all(torch.equal(p, q) for p, q in zip(a.batch(0, a.count), b.batch(0, b.count)))
    assert again[0].count < first[0].count and len(list(cache.iterdir())) == 1
    # other data, options or lengths are other entries
    for changed in (lambda: JSON(path, val_fraction=0.2).datasets(tok, 128, seed=3), lambda: JSON(path, val_fraction=0.1).datasets(tok, 64, seed=3)):
        with pytest.raises(AssertionError, match="read again"):
            changed()
    renamed = path.with_name("renamed.jsonl")
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(AssertionError, match="read again"):  # the summary line names the file: a new name, a new entry
        JSON(renamed, val_fraction=0.1).datasets(tok, 128, seed=3)
    write_jsonl(path, records[:-1])
    with pytest.raises(AssertionError, match="read again"):
        JSON(path, val_fraction=0.1).datasets(tok, 128, seed=3)


# ------------------------------------------------------------------------------------------- hub download, CLI
_RUNNER = r"""
import json, sys
from litgpt_clone.chat_template import render_chat, render_for_tokenizer
from litgpt_clone.data.pretrain import DataError
from litgpt_clone.data.sft import Alpaca
from litgpt_clone.tokenizer import Tokenizer
try:
    module = Alpaca()
    train, val = module.datasets(Tokenizer(sys.argv[1]), 128, 0)
    print(json.dumps({"path": str(module.files()[0]), "train": train.stats["samples"], "val": val.stats["samples"]}))
except DataError as err:
    print(json.dumps({"error": str(err)}))
"""


def _alpaca(tok_dir: Path, hf_home: Path, endpoint: str = "http://127.0.0.1:9", offline: bool = False) -> subprocess.Popen:
    """Alpaca() in a fresh interpreter: huggingface_hub reads HF_ENDPOINT/HF_HOME/HF_HUB_OFFLINE at import."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(hf_home), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.Popen([sys.executable, "-c", _RUNNER, str(tok_dir)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> tuple[dict, str]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    *lines, last = out.strip().splitlines()
    return json.loads(last), "\n".join(lines)


def test_alpaca_downloads_into_the_hub_cache_and_offline_says_how_to_pass_a_file(tmp_path, folders):
    data = json.dumps([{"instruction": "Add two numbers.", "input": "", "output": f"{i}"} for i in range(40)]).encode()
    cold = _alpaca(folders["chatml"], tmp_path / "cold", offline=True)
    with HubStandin() as hub:
        hub.add_repo("datasets/yahma/alpaca-cleaned", {"alpaca_data_cleaned.json": data})  # the /datasets/ URL prefix
        online, printed = _result(_alpaca(folders["chatml"], tmp_path / "hf", endpoint=hub.endpoint))
        assert hub.requested_files("datasets/yahma/alpaca-cleaned") == {"alpaca_data_cleaned.json"}
    snapshots = tmp_path / "hf" / "hub" / "datasets--yahma--alpaca-cleaned" / "snapshots"
    assert Path(online["path"]).parent.parent == snapshots and Path(online["path"]).read_bytes() == data
    assert (online["train"], online["val"]) == (38, 2) and printed == "alpaca: 40 samples (38 train, 2 validation)"

    error, _ = _result(cold)
    assert "\n" not in error["error"] and "alpaca_data_cleaned.json" in error["error"]
    assert "--data alpaca --data.path" in error["error"]


def test_modules_are_cli_flags(capsys):
    from jsonargparse import ArgumentParser

    assert {name: cls.__name__ for name, cls in SFT_DATA_MODULES.items()} == {"alpaca": "Alpaca", "dolly": "Dolly", "json": "JSON", "chat": "Chat"}
    parser = ArgumentParser()
    parser.add_argument("--data", type=SFTData)
    cfg = parser.parse_args(["--data", "JSON", "--data.path", "x.jsonl", "--data.mask_prompt", "false", "--data.packing", "true"])
    data = parser.instantiate(cfg).data
    assert isinstance(data, JSON) and (data.path, data.mask_prompt, data.packing, data.prompt_style) == (Path("x.jsonl"), False, True, "alpaca")
    data = parser.instantiate(parser.parse_args(["--data", "Alpaca"])).data
    assert isinstance(data, Alpaca) and data.path is None and data.val_fraction == 0.05
    with pytest.raises(SystemExit):
        parser.parse_args(["--data.help", "Chat"])
    help_text = capsys.readouterr().out
    assert "OpenAI-style" in help_text and "Learn only the assistant turns" in help_text and "ShareGPT" in help_text
    assert "-100, the only one the loss leaves out" in " ".join(help_text.split())
    with pytest.raises(SystemExit):
        parser.parse_args(["--data.help", "JSON"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "one layout per file (the first record with one of them decides; a file that mixes them is refused)" in help_text
    assert "or TRL's ``prompt`` and ``completion`` (text; TRL's conversational layout, lists of messages, is --data chat's)" in help_text
    assert "``plain`` is the prompt as written, then the response and EOS: how TRL trains prompt/completion text" in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["--data.help", "Chat"])
    assert "or TRL's conversational ``prompt`` and ``completion``: two lists of messages" in " ".join(capsys.readouterr().out.split())


def test_sort_groups_trains_the_same_samples_per_step_shortest_first():
    """``finetune`` sorts each optimizer step's samples by length (less padding per micro-batch): every step still
    trains on exactly the samples it would have, across epoch boundaries too."""
    import numpy as np

    from litgpt_clone.data.sft import SFTDataset

    lengths = [7, 3, 12, 5, 9, 2, 11, 4, 8, 6]
    samples = [(np.arange(n) + 100 * i, np.arange(n)) for i, n in enumerate(lengths)]
    plain = SFTDataset(samples, seed=1, shuffle=True, stats={})
    grouped = SFTDataset(samples, seed=1, shuffle=True, stats={})
    grouped.sort_groups(4)
    for step in range(6):  # 24 samples: the 10-sample epoch wraps inside steps 2 and 4
        indices = range(step * 4, step * 4 + 4)
        before = [plain.sample(i)[0][0] // 100 if len(plain.sample(i)[0]) else None for i in indices]
        after = [grouped.sample(i) for i in indices]
        assert sorted(before) == sorted(int(t[0]) // 100 for t, _ in after)  # the same samples
        assert [len(t) for t, _ in after] == sorted(len(t) for t, _ in after)  # shortest first
    assert [len(plain.sample(i)[0]) for i in range(4)] != sorted(len(plain.sample(i)[0]) for i in range(4))  # sorting did something


def test_llama2_style_instruction_data_trains_the_answer_as_the_template_writes_it(tmp_path, tok, hf):
    """--data.prompt_style llama2 on instruction data: the sample is "[INST] q [/INST] answer </s>", the answer after a
    space as in Llama 2's own template and at inference (prompt + answer joined it to "[/INST]", another token)."""
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "What is the capital of France?", "response": "Paris."}])
    _, val = JSON(path, val_path=path, prompt_style="llama2").datasets(tok, 256, seed=0)
    (x, y), = rows(val)
    text = f"{hf.bos_token}[INST] What is the capital of France? [/INST] Paris. {hf.eos_token}"
    assert x + y[-1:] == hf(text, add_special_tokens=False)["input_ids"]
    assert hf.decode([t for t in y if t != -100]) == " Paris. </s>"
