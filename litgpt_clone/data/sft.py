"""Data for supervised finetuning: instruction/response pairs and conversations as (inputs, targets) batches.

``--data alpaca|dolly|json|chat`` selects a module by its ``name``; its ``__init__`` parameters are its flags
(``--data.path``, ``--data.mask_prompt``, ...). ``module.datasets(tokenizer, max_seq_length, seed)`` reads and
tokenizes everything once and returns a train and a validation ``SFTDataset``, which the shared ``fit`` loop reads
with ``batch(start, size)``.

What a sample is:

- Instruction data (``alpaca``, ``dolly``, ``json``), with ``--data.prompt_style`` ``alpaca`` (the default) or
  ``plain``: the prompt, then the response, then EOS, the prompt with the tokenizer's own BOS rule
  (``encode(prompt, bos=None)``). Prompt and response are tokenized together, as LitGPT and TRL do, so the
  response's tokens are those that continue the prompt (a SentencePiece tokenizer puts no "▁" of its own in front
  of it); the prompt's tokens are those the prompt gets alone at inference, up to the one token where the two
  merge across the boundary, if any (learned then, as part of the response). With a chat style (``auto`` = the
  checkpoint's chat template, ``chatml``, ``llama2``, ``llama3``) a sample is the conversation [user: the
  instruction and its input, assistant: the response], exactly as ``chat`` data below (as TRL renders
  prompt-completion data through a template): the answer as the template writes an assistant turn, its end-of-turn
  text included (Llama 2's " answer </s>" after "[/INST]").
- Conversations (``chat``): OpenAI-style ``messages`` (a content may be a list of ``{"type": "text", "text": ...}``
  parts), ShareGPT ``conversations`` (``from`` human/gpt/system, ``value``) or TRL's conversational ``prompt`` and
  ``completion`` (lists of messages: the completion's assistant turns are learned), rendered with the checkpoint's chat
  template (or a fallback style) and tokenized once, without an added BOS, as ``LLM.encode_chat`` and transformers'
  ``apply_chat_template`` do. The loss covers only assistant turns, found as character spans of the rendered text,
  as transformers' ``return_assistant_tokens_mask`` does with a template's ``{% generation %}`` blocks: assistant
  message ``i`` starts where ``render(messages[:i], add_generation_prompt=True)`` ends (or at its content, where
  that rendering is not the start of the whole one) and ends after its content and the end-of-turn text that
  ``render(messages[:i + 1])`` writes after it. A token is learned when it overlaps a span (a token that merges
  across a turn boundary is learned). Each token's characters come from its bytes read off the text; a record whose
  spans or tokens cannot be placed is skipped and counted (with ``mask_prompt`` false nothing is placed: every
  token is learned). When the conversation ends with an assistant message whose last token is no stop token (e.g.
  the ``alpaca`` fallback style), EOS is appended to it.

A sample of ``n`` tokens is one training row: inputs ``tokens[:-1]`` and targets ``tokens[1:]``, with targets of
masked (prompt) tokens set to ``ignore_index``. Rows hold at most ``max_seq_length`` tokens: a longer sample keeps its
first ``max_seq_length + 1`` tokens and loses its end, EOS or end-of-turn included (so it teaches the model not to
stop there), and is counted as truncated; it is skipped when nothing of its response is left. Records that cannot be
used (missing fields, fields that are not text, empty responses, ...: tutorials/finetune.md lists every reason) are
skipped and counted per reason, with the first three places of each (``data.jsonl:12``: a JSONL line;
``data.json[3]``: a JSON list's record, counted from 0); one summary line is printed.

Validation split: ``round(records * val_fraction)`` records (at least one) chosen by a stable hash of each record's
index in the file, so the split is the same for every seed and every ``max_seq_length``, and is spread over the whole
file; ``--data.val_path`` (json, chat) gives a separate validation file instead.

Order: training rows are visited in ``np.random.default_rng([seed, epoch]).permutation`` order, a new order each
epoch, so the sample at any global index is known without state; validation rows are visited in file order.
``finetune`` also sorts the samples of each optimizer step by length (``SFTDataset.sort_groups``): a step trains on
the same samples, and its micro-batches pad less.

Cache: the encoded samples of a (data files, tokenizer files, options, ``max_seq_length``) combination are kept under
``$LITGPT_CLONE_CACHE/sft`` (default ``~/.cache/litgpt_clone/sft``), so a second run starts at once.

Packing (``--data.packing true``): consecutive samples (file order) are concatenated into rows of up to
``max_seq_length`` tokens; each keeps its own mask, and the first token of a sample (BOS or prompt) is never a
target. Attention still crosses sample boundaries (the causal mask is not reset inside a row), so a sample can attend
to the samples packed before it: packing trades that contamination for fewer padding tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from litgpt_clone.chat_template import ChatTemplateError, alpaca_prompt, available_styles, render_for_tokenizer
from litgpt_clone.data.pretrain import DataError, cache_root, check_val_fraction, hub_file
from litgpt_clone.tokenizer import Tokenizer

Sample = tuple[np.ndarray, np.ndarray]
"""``(tokens, labels)``: int64 arrays of one length; ``labels`` is ``tokens`` with unlearned positions set to
``ignore_index``."""


class Skip(Exception):
    """A record that cannot be used; the message is the reason counted in ``stats["skipped"]``."""


# ----------------------------------------------------------------------------- the dataset
class SFTDataset:
    """Tokenized samples as ``(inputs, targets)`` batches at global sample indices.

    Attributes: ``count`` (rows: samples, or packed sequences with packing), ``stats`` (``samples`` kept,
    ``skipped`` per reason, ``truncated``, ``rows``, ``longest`` row), ``ignore_index``.
    """

    def __init__(self, samples: list[Sample], seed: int, shuffle: bool, stats: dict, ignore_index: int = -100) -> None:
        self.samples, self.seed, self.shuffle, self.ignore_index = samples, seed, shuffle, ignore_index
        self.count = len(samples)
        self.stats = {**stats, "rows": self.count, "longest": max((len(t) - 1 for t, _ in samples), default=0)}
        self.group_size = 1
        self._epoch, self._order, self._group = -1, None, (-1, [])
        self._learned: Optional[list[int]] = None

    @property
    def fingerprint(self) -> str:
        """What decides the sample at each index: the samples' tokens and labels, and their order (seed, shuffle, and
        ``sort_groups``' group size: the global batch size). A resumed run compares it with the checkpoint's, whose data
        position means nothing over other samples or in another order."""
        h = hashlib.sha256(f"{self.seed}|{self.shuffle}|{self.count}|{self.group_size}".encode())
        for tokens, labels in self.samples:
            h.update(np.int64(len(tokens)).tobytes() + tokens.tobytes() + labels.tobytes())
        return h.hexdigest()

    def sort_groups(self, size: int) -> None:
        """Visit the global indices ``k * size .. (k + 1) * size`` (one optimizer step's samples, when ``size`` is the
        global batch size) shortest first: each step trains on the same samples as without sorting, but its
        micro-batches hold rows of similar length, so they carry less padding."""
        self.group_size = size

    def sample(self, index: int) -> Sample:
        """The sample at global ``index`` (wrapping into later epochs, each with its own order when shuffling)."""
        return self.samples[self.placed(index)]

    def placed(self, index: int) -> int:
        """Where the sample at global ``index`` is in ``samples``, ``sort_groups`` included."""
        if self.group_size == 1:
            return self.position(index)
        start = index - index % self.group_size
        if self._group[0] != start:
            members = [self.position(i) for i in range(start, start + self.group_size)]
            self._group = (start, sorted(members, key=lambda pos: len(self.samples[pos][0])))  # stable: ties keep order
        return self._group[1][index - start]

    def position(self, index: int) -> int:
        """Where the sample at global ``index`` is in ``samples``, before ``sort_groups``."""
        epoch, pos = divmod(index, self.count)
        if self.shuffle:
            if epoch != self._epoch:
                self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.count)
            pos = int(self._order[pos])
        return pos

    def tokens(self, start: int, size: int) -> int:
        """The input tokens of samples ``start .. start + size``, without padding: what training on them counts."""
        return sum(len(self.samples[self.placed(i)][0]) - 1 for i in range(start, start + size))

    def learned(self, start: int, size: int) -> int:
        """The target tokens (not ``ignore_index``) of samples ``start .. start + size``: what their loss averages over."""
        if self._learned is None:
            self._learned = [int((labels[1:] != self.ignore_index).sum()) for _, labels in self.samples]
        return sum(self._learned[self.placed(i)] for i in range(start, start + size))

    def steps_for_tokens(self, max_tokens: int, global_batch_size: int) -> int:
        """Optimizer steps of ``global_batch_size`` samples until the trained ``tokens`` reach ``max_tokens``."""
        steps, total = 0, 0
        while total < max_tokens:
            added = self.tokens(steps * global_batch_size, global_batch_size)
            total, steps = total + added, steps + 1
            if not added:  # (samples without a token to train on: no number of steps reaches max_tokens)
                break
        return steps

    def batch(self, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (size, L) for samples ``start .. start + size``, L = the longest row among them;
        shorter rows are right-padded with 0 (inputs) and ``ignore_index`` (targets)."""
        rows = [self.sample(start + i) for i in range(size)]
        length = max(len(tokens) - 1 for tokens, _ in rows)
        inputs = torch.zeros(size, length, dtype=torch.long)
        targets = torch.full((size, length), self.ignore_index, dtype=torch.long)
        for i, (tokens, labels) in enumerate(rows):
            n = len(tokens) - 1
            inputs[i, :n] = torch.from_numpy(tokens[:-1])
            targets[i, :n] = torch.from_numpy(labels[1:])
        return inputs, targets


# ----------------------------------------------------------------------------- modules
class SFTData:
    """A source of train and validation ``SFTDataset``s for ``finetune``."""

    name = ""

    def datasets(self, tokenizer: Tokenizer, max_seq_length: int, seed: int) -> tuple[SFTDataset, Optional[SFTDataset]]:
        """Train and validation (None when there is none) datasets of rows of at most ``max_seq_length`` tokens;
        ``seed`` fixes the training order."""
        raise NotImplementedError


class FileData(SFTData):
    """Records from a JSON/JSONL file (and an optional validation file), with the options every module shares."""

    expected = ""
    """What a record must hold, said when records were skipped for a missing field and none is left."""

    def __init__(self, mask_prompt: bool, val_fraction: float, prompt_style: str, packing: bool, ignore_index: int) -> None:
        check_style(prompt_style)
        check_val_fraction(val_fraction, of="records")
        if ignore_index != -100:  # fit and its loss leave out targets of -100 only: any other value would be trained
            raise DataError(f"--data.ignore_index {ignore_index}: the loss leaves out targets of -100 only; drop the flag (-100 is the default)")
        self.mask_prompt, self.val_fraction, self.prompt_style = mask_prompt, val_fraction, prompt_style
        self.packing, self.ignore_index = packing, ignore_index

    def files(self) -> tuple[Path, Optional[Path]]:
        """The train file and an optional separate validation file."""
        raise NotImplementedError

    def read(self, path: Path) -> list:
        """The records of ``path``; a ``Skip`` stands for a record that could not be read. ``read_records`` gives
        them with where each is, ``(place, record)`` pairs (``data.jsonl:12``); a module's own ``read`` may give bare
        records (a CSV's rows), which are placed by their index (``facts.csv[3]``)."""
        return read_records(path)

    def describe(self) -> str:
        """The name in the summary line."""
        return self.name


class InstructionData(FileData):
    """Instruction, optional input, response: the shared machinery of ``alpaca``, ``dolly`` and ``json``."""

    def fields(self, record: dict, path: Path) -> tuple[str, str, str]:
        """Instruction, input ("" when none) and response of one record; raises ``Skip`` when it has none."""
        raise NotImplementedError

    def datasets(self, tokenizer: Tokenizer, max_seq_length: int, seed: int) -> tuple[SFTDataset, Optional[SFTDataset]]:
        encoder = InstructionEncoder(tokenizer, self.prompt_style, self.mask_prompt, max_seq_length, self.ignore_index)

        def encode(record: Any, path: Path) -> tuple[Sample, bool]:
            if not isinstance(record, dict):
                raise Skip("not an object")
            return encoder(*self.fields(record, path))

        return build(self, encode, tokenizer, max_seq_length, seed)


class Alpaca(InstructionData):
    """Stanford Alpaca, cleaned (yahma/alpaca-cleaned on the Hugging Face hub): instruction, input, output."""

    name = "alpaca"
    repo_id, filename = "yahma/alpaca-cleaned", "alpaca_data_cleaned.json"

    def __init__(
        self,
        path: Optional[Path] = None,
        mask_prompt: bool = True,
        val_fraction: float = 0.05,
        prompt_style: str = "alpaca",
        packing: bool = False,
        ignore_index: int = -100,
    ) -> None:
        """
        Args:
            path: A local Alpaca JSON file (a list of {instruction, input, output}); default: download
                alpaca_data_cleaned.json from the hub dataset yahma/alpaca-cleaned into the Hugging Face cache.
            mask_prompt: Learn only the response (and EOS): prompt tokens get no loss.
            val_fraction: Share of the records held out for validation (chosen by a stable hash of the record index).
            prompt_style: How the instruction is written: ``alpaca``, a fallback chat style (chatml, llama2, llama3,
                plain), or ``auto`` = the checkpoint's chat template (alpaca when it has none).
            packing: Concatenate consecutive samples into rows of up to max_seq_length tokens (masks kept; attention
                crosses sample boundaries).
            ignore_index: The target value of tokens without loss: -100, the only one the loss leaves out (any
                other value is refused; the flag is there for configs that write it).
        """
        super().__init__(mask_prompt, val_fraction, prompt_style, packing, ignore_index)
        self.path = Path(path) if path is not None else None

    def files(self) -> tuple[Path, Optional[Path]]:
        return self.path or hub_file(self.repo_id, self.filename, self.name), None

    def fields(self, record: dict, path: Path) -> tuple[str, str, str]:
        return text_field(record, "instruction"), text_field(record, "input", optional=True), text_field(record, "output")


class Dolly(InstructionData):
    """Databricks Dolly 15k (databricks/databricks-dolly-15k on the hub): instruction, context, response."""

    name = "dolly"
    repo_id, filename = "databricks/databricks-dolly-15k", "databricks-dolly-15k.jsonl"

    def __init__(
        self,
        path: Optional[Path] = None,
        mask_prompt: bool = True,
        val_fraction: float = 0.05,
        prompt_style: str = "alpaca",
        packing: bool = False,
        ignore_index: int = -100,
    ) -> None:
        """
        Args:
            path: A local databricks-dolly-15k.jsonl (one {instruction, context, response, category} per line);
                default: download it from the hub dataset databricks/databricks-dolly-15k into the Hugging Face cache.
            mask_prompt: Learn only the response (and EOS): prompt tokens get no loss.
            val_fraction: Share of the records held out for validation (chosen by a stable hash of the record index).
            prompt_style: How the instruction is written: ``alpaca`` (the context is its Input section), a fallback
                chat style (chatml, llama2, llama3, plain), or ``auto`` = the checkpoint's chat template.
            packing: Concatenate consecutive samples into rows of up to max_seq_length tokens (masks kept; attention
                crosses sample boundaries).
            ignore_index: The target value of tokens without loss: -100, the only one the loss leaves out (any
                other value is refused; the flag is there for configs that write it).
        """
        super().__init__(mask_prompt, val_fraction, prompt_style, packing, ignore_index)
        self.path = Path(path) if path is not None else None

    def files(self) -> tuple[Path, Optional[Path]]:
        return self.path or hub_file(self.repo_id, self.filename, self.name), None

    def fields(self, record: dict, path: Path) -> tuple[str, str, str]:
        return text_field(record, "instruction"), text_field(record, "context", optional=True), text_field(record, "response")


FIELD_SETS = {
    "instruction/input/output": ("instruction", "input", "output"),
    "prompt/response": ("prompt", None, "response"),
    "prompt/completion": ("prompt", None, "completion"),  # TRL's standard prompt-completion layout
}
"""The layouts of ``json`` records: name -> (instruction or prompt field, optional input field, response field)."""


def field_set(record: dict) -> Optional[str]:
    """The first FIELD_SETS name whose instruction (prompt) and response fields ``record`` has; None when none."""
    return next((name for name, (prompt, _, response) in FIELD_SETS.items() if prompt in record and response in record), None)


def given_path(name: str, path: Optional[Path]) -> Path:
    if path is None:
        raise DataError(f"--data {name} needs --data.path <file.json or file.jsonl>")
    return path


class JSON(InstructionData):
    """Your own instruction data: a .json list or .jsonl lines of {instruction, input, output}, {prompt, response} or
    TRL's {prompt, completion}."""

    name = "json"

    def __init__(
        self,
        path: Optional[Path] = None,
        val_path: Optional[Path] = None,
        mask_prompt: bool = True,
        val_fraction: float = 0.05,
        prompt_style: str = "alpaca",
        packing: bool = False,
        ignore_index: int = -100,
    ) -> None:
        """
        Args:
            path: A JSON file holding a list of records, or a JSONL file with one record per line. Records have
                ``instruction``, optional ``input`` and ``output`` fields, or ``prompt`` and ``response`` fields, or
                TRL's ``prompt`` and ``completion`` (text; TRL's conversational layout, lists of messages, is --data
                chat's): one layout per file (the first record with one of them decides; a file that mixes them is
                refused).
            val_path: A separate validation file in the same format; when given, val_fraction is not used.
            mask_prompt: Learn only the response (and EOS): prompt tokens get no loss.
            val_fraction: Share of the records held out for validation (chosen by a stable hash of the record index).
            prompt_style: How the instruction (or prompt) is written: ``alpaca``, a fallback chat style (chatml,
                llama2, llama3, plain), or ``auto`` = the checkpoint's chat template (alpaca when it has none).
                ``plain`` is the prompt as written, then the response and EOS: how TRL trains prompt/completion text.
            packing: Concatenate consecutive samples into rows of up to max_seq_length tokens (masks kept; attention
                crosses sample boundaries).
            ignore_index: The target value of tokens without loss: -100, the only one the loss leaves out (any
                other value is refused; the flag is there for configs that write it).
        """
        super().__init__(mask_prompt, val_fraction, prompt_style, packing, ignore_index)
        self.path = Path(path) if path is not None else None
        self.val_path = Path(val_path) if val_path is not None else None
        self.field_sets: dict[Path, str] = {}  # file -> the FIELD_SETS name its records use

    def files(self) -> tuple[Path, Optional[Path]]:
        return given_path(self.name, self.path), self.val_path

    def detect(self, records: list[tuple[str, Any]], path: Path) -> str:
        """Which FIELD_SETS name the records of ``path`` use: the first record's with one. A DataError listing the
        keys found if none has one, naming two records when the file mixes layouts (the other layout's records would
        all be skipped), or saying to use ``--data chat`` for TRL's conversational prompt/completion."""
        if not records:
            raise DataError(f"{path} holds no records: give a JSON list of objects, or one JSON object per line (.jsonl)")
        dicts = [(where, r) for where, r in records if isinstance(r, dict)]
        if not dicts:
            skipped = sum(isinstance(r, Skip) for _, r in records)
            why = f"none of its {len(records)} lines is valid JSON" if skipped == len(records) else "none of its records is a JSON object"
            raise DataError(f"{path}: {why}: write one {{\"instruction\": ..., \"output\": ...}} object per line, or a JSON list of them")
        pairs = [(where, name, r) for where, r in dicts if (name := field_set(r))]
        if not pairs:
            found = ", ".join(sorted(set().union(*(map(str, r) for _, r in dicts)))[:20]) or "none"
            raise DataError(f"{path} has none of the field sets {', '.join(FIELD_SETS)} (found keys: {found}): rename its fields")
        first, name, record = pairs[0]
        if name == "prompt/completion" and (isinstance(record["prompt"], list) or isinstance(record["completion"], list)):
            raise DataError(f"{path} holds TRL's conversational prompt/completion (lists of messages, {first}): train it with --data chat")
        other = next(((where, n) for where, n, _ in pairs if n != name), None)
        if other is not None:
            raise DataError(f"{path} mixes {name} records ({first}) with {other[1]} records ({other[0]}): use one layout per file")
        return name

    def fields(self, record: dict, path: Path) -> tuple[str, str, str]:
        prompt, input, response = FIELD_SETS[self.field_sets[path]]
        return text_field(record, prompt), text_field(record, input, optional=True) if input else "", text_field(record, response)

    def read(self, path: Path) -> list[tuple[str, Any]]:
        records = read_records(path)
        self.field_sets[path] = self.detect(records, path)
        return records

    def describe(self) -> str:
        return f"{self.name} ({', '.join(f'{f} in {p.name}' for p, f in self.field_sets.items())})"


class Chat(FileData):
    """Conversations: JSON/JSONL records with OpenAI-style ``messages`` (or ShareGPT ``conversations``, or TRL's
    conversational ``prompt`` and ``completion``); loss on the assistant turns only."""

    name = "chat"
    expected = (
        'each record needs "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}] '
        '(or ShareGPT "conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}], or TRL\'s '
        '"prompt": [{"role": "user", "content": "..."}], "completion": [{"role": "assistant", "content": "..."}])'
    )

    def __init__(
        self,
        path: Optional[Path] = None,
        val_path: Optional[Path] = None,
        mask_prompt: bool = True,
        val_fraction: float = 0.05,
        prompt_style: str = "auto",
        packing: bool = False,
        ignore_index: int = -100,
    ) -> None:
        """
        Args:
            path: A JSON file holding a list of records, or a JSONL file with one record per line; each record has
                ``messages``: a list of {role: system|user|assistant, content: text, or a list of {type: text, text:
                ...} parts}, or ShareGPT's ``conversations``: a list of {from: system|human|gpt, value: text}, or
                TRL's conversational ``prompt`` and ``completion``: two lists of messages, the completion's assistant
                turns learned (not those in the prompt), as TRL's completion-only loss.
            val_path: A separate validation file in the same format; when given, val_fraction is not used.
            mask_prompt: Learn only the assistant turns (their content and the end-of-turn tokens after it, found
                in the rendered text; a record where they cannot be found is skipped and counted); false learns
                every token.
            val_fraction: Share of the records held out for validation (chosen by a stable hash of the record index).
            prompt_style: ``auto`` renders with the checkpoint's chat template; a fallback style (chatml, llama2,
                llama3, alpaca) is used for checkpoints without one, or instead of it.
            packing: Concatenate consecutive conversations into rows of up to max_seq_length tokens (masks kept;
                attention crosses sample boundaries).
            ignore_index: The target value of tokens without loss: -100, the only one the loss leaves out (any
                other value is refused; the flag is there for configs that write it).
        """
        if prompt_style == "plain":
            raise DataError(
                "--data.prompt_style plain writes only the last user message, not a conversation: "
                "pick chatml, llama2, llama3, alpaca or auto"
            )
        super().__init__(mask_prompt, val_fraction, prompt_style, packing, ignore_index)
        self.path = Path(path) if path is not None else None
        self.val_path = Path(val_path) if val_path is not None else None

    def files(self) -> tuple[Path, Optional[Path]]:
        return given_path(self.name, self.path), self.val_path

    def datasets(self, tokenizer: Tokenizer, max_seq_length: int, seed: int) -> tuple[SFTDataset, Optional[SFTDataset]]:
        encoder = ChatEncoder(tokenizer, self.prompt_style, self.mask_prompt, max_seq_length, self.ignore_index)
        return build(self, lambda record, path: encoder(record), tokenizer, max_seq_length, seed)


SFT_DATA_MODULES: dict[str, type[SFTData]] = {cls.name: cls for cls in (Alpaca, Dolly, JSON, Chat)}


# ----------------------------------------------------------------------------- encoding
def check_style(prompt_style: str) -> None:
    if prompt_style not in available_styles():
        raise DataError(f"unknown --data.prompt_style {prompt_style!r}: use one of {', '.join(available_styles())}")


def need_eos(tokenizer: Tokenizer) -> int:
    if tokenizer.eos_id is None:
        raise DataError(
            f"the tokenizer in {tokenizer.checkpoint_dir} has no EOS token, which finetuning appends so the model "
            "learns to stop: set eos_token in its tokenizer_config.json"
        )
    return tokenizer.eos_id


def finish(tokens: list[int], labels: list[int], response_start: int, max_seq_length: int, ignore_index: int) -> tuple[Sample, bool]:
    """The sample cut to ``max_seq_length + 1`` tokens (a row of ``max_seq_length``) and whether it was cut; Skip
    when that cuts every response token (the first one, at ``response_start``, is a target only while
    ``response_start <= max_seq_length``). The first token is never a target, also when packed after another sample."""
    if response_start > max_seq_length:
        raise Skip("response beyond max_seq_length")
    truncated = len(tokens) > max_seq_length + 1
    tokens, labels = tokens[: max_seq_length + 1], [ignore_index, *labels[1 : max_seq_length + 1]]
    return (np.array(tokens, dtype=np.int64), np.array(labels, dtype=np.int64)), truncated


class InstructionEncoder:
    """(instruction, input, response) -> one sample: prompt, response, EOS; prompt masked when ``mask_prompt``."""

    def __init__(self, tokenizer: Tokenizer, prompt_style: str, mask_prompt: bool, max_seq_length: int, ignore_index: int) -> None:
        self.tokenizer, self.mask_prompt = tokenizer, mask_prompt
        self.max_seq_length, self.ignore_index = max_seq_length, ignore_index
        self.eos_id = need_eos(tokenizer)
        self.style = "alpaca" if prompt_style == "auto" and not tokenizer.chat_template else prompt_style
        # plain-text prompts get the tokenizer's BOS; chat renderings none, as LLM.encode_chat (the template writes it)
        self.bos = None if self.style in ("alpaca", "plain") else False
        # a chat style renders the sample as the conversation [user, assistant], as chat data and TRL do: the answer as
        # the template writes an assistant turn (Llama 2's " answer </s>" after "[/INST]"; the prompt + answer
        # joining trained "[/INST]answer", a token the model never sees after "[/INST]" at inference)
        self.chat = None if self.bos is None else ChatEncoder(tokenizer, self.style, mask_prompt, max_seq_length, ignore_index)

    def prompt(self, instruction: str, input: str) -> str:
        """The prompt text, ending where the response starts."""
        if self.style == "alpaca":
            return alpaca_prompt(instruction, input)
        message = {"role": "user", "content": f"{instruction}\n\n{input}" if input else instruction}  # (the plain style's)
        try:
            return render_for_tokenizer(self.tokenizer, [message], add_generation_prompt=True, style=self.style)
        except ChatTemplateError as err:
            raise DataError(f"{err} (--data.prompt_style {self.style})") from err

    def __call__(self, instruction: str, input: str, response: str) -> tuple[Sample, bool]:
        if not response.strip():
            raise Skip("empty response")
        if not instruction.strip():
            raise Skip("empty instruction")
        if self.chat is not None:
            user = f"{instruction}\n\n{input}" if input else instruction
            return self.chat({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": response}]})
        prompt = self.prompt(instruction, input)
        # tokenized with the prompt, the response is a continuation (encoded alone, a SentencePiece tokenizer would
        # start it with the "▁" of its dummy prefix); it starts where the prompt's own tokens stop matching
        prompt_ids = self.tokenizer.encode(prompt, bos=self.bos).tolist()
        tokens = [*self.tokenizer.encode(prompt + response, bos=self.bos).tolist(), self.eos_id]
        start = next((k for k, (a, b) in enumerate(zip(prompt_ids, tokens)) if a != b), len(prompt_ids))
        labels = ([self.ignore_index] * start if self.mask_prompt else tokens[:start]) + tokens[start:]
        return finish(tokens, labels, start, self.max_seq_length, self.ignore_index)


class ChatEncoder:
    """A record with ``messages`` (or ``conversations``) -> one sample of the rendered conversation, loss on the
    assistant turns."""

    def __init__(self, tokenizer: Tokenizer, prompt_style: str, mask_prompt: bool, max_seq_length: int, ignore_index: int) -> None:
        if prompt_style == "auto" and not tokenizer.chat_template:
            raise DataError(
                f"the tokenizer in {tokenizer.checkpoint_dir} has no chat_template to render conversations: "
                "pass --data.prompt_style chatml (or llama2, llama3, alpaca)"
            )
        self.tokenizer, self.style, self.mask_prompt = tokenizer, prompt_style, mask_prompt
        self.max_seq_length, self.ignore_index = max_seq_length, ignore_index
        self.eos_id = need_eos(tokenizer)

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        try:
            return render_for_tokenizer(self.tokenizer, messages, add_generation_prompt=add_generation_prompt, style=self.style)
        except ChatTemplateError as err:
            raise DataError(f"{err} (--data.prompt_style {self.style})") from err

    def spans(self, messages: list[dict], text: str, start: int = 0) -> list[tuple[int, int]]:
        """The character spans of the assistant messages from ``messages[start]`` on in ``text``, the whole
        conversation rendered (see the module's docstring). Each message's content (stripped, as templates often write
        it) is looked for after the previous one's, so that an answer such as "4" is not found in an earlier header or
        question."""
        spans, at = [], 0
        for i, message in enumerate(messages):
            content = message["content"].strip()
            if message["role"] != "assistant":
                found = text.find(content, at)
                at = found + len(content) if found >= 0 else at  # (a template may leave a message out)
                continue
            prompt = self.render(messages[:i], True)
            begin = len(prompt) if text.startswith(prompt) else None
            found = text.find(content, at if begin is None else begin)
            if found < 0:
                raise Skip("assistant message not found in the rendering")
            end = found + len(content)
            # the end-of-turn text: what the template writes after the content when the message is the last one
            alone = self.render(messages[: i + 1], False)
            k = alone.find(content, len(prompt)) if alone.startswith(prompt) else alone.rfind(content)
            closing = alone[k + len(content) :] if k >= 0 else ""
            if text.startswith(closing, end):
                end += len(closing)
            if i >= start:
                spans.append((found if begin is None else begin, end))
            at = end
        return spans

    def __call__(self, record: Any) -> tuple[Sample, bool]:
        messages, start = chat_messages(record)
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i >= start]  # the learned ones
        if not turns:
            raise Skip("no assistant message")
        if messages[0]["role"] == "assistant":
            raise Skip("assistant message first")
        if any(not messages[i]["content"].strip() for i in turns):
            raise Skip("empty response")

        text = self.render(messages, add_generation_prompt=False)
        tokens = self.tokenizer.encode(text, bos=False).tolist()  # the template writes BOS where the model wants it
        if self.mask_prompt:
            learned = overlapping(token_offsets(self.tokenizer, text, tokens), byte_spans(text, self.spans(messages, text, start)))
            labels = [t if keep else self.ignore_index for t, keep in zip(tokens, learned)]
            first = learned.index(True)
        else:
            labels, first = list(tokens), 0
        last = next((t for t in reversed(tokens) if self.tokenizer.token_bytes(t).strip()), None)  # (past a final "\n")
        if turns[-1] == len(messages) - 1 and last not in self.tokenizer.stop_ids:
            tokens, labels = tokens + [self.eos_id], labels + [self.eos_id]  # the style ends the answer without a stop token
        return finish(tokens, labels, first, self.max_seq_length, self.ignore_index)


SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def chat_messages(record: Any) -> tuple[list[dict], int]:
    """A record's conversation as messages with text contents, and the index of the first message whose assistant
    turns are learned. The messages: its OpenAI-style ``messages`` (a content of text parts joined with newlines, as
    serve and vLLM join them; a template sees the text only), its ShareGPT ``conversations`` (``from``
    human/gpt/system as user/assistant/system, any other as the role; ``value`` as the content), or TRL's
    conversational ``prompt`` + ``completion`` (learned from the completion on). A ``Skip`` when it has none, or a
    message without role or text."""
    record, start = record if isinstance(record, dict) else {}, 0
    if isinstance(record.get("messages"), list):
        messages = record["messages"]
    elif isinstance(record.get("conversations"), list):
        turns = [m if isinstance(m, dict) else {} for m in record["conversations"]]
        messages = [{"role": SHAREGPT_ROLES.get(m.get("from"), m.get("from")), "content": m.get("value")} for m in turns]
    elif "prompt" in record and "completion" in record:
        if not isinstance(record["prompt"], list) or not isinstance(record["completion"], list):
            raise Skip("prompt/completion text, not messages (use --data json)")
        messages, start = record["prompt"] + record["completion"], len(record["prompt"])
    else:
        raise Skip("missing field")
    if not messages:
        raise Skip("missing field")
    out = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):  # OpenAI content parts: text only (an image or audio part cannot be trained here)
            if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in content):
                raise Skip("content part that is not text")
            content = "\n".join(part["text"] for part in content)  # (as serve and vLLM join them)
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(content, str):
            raise Skip("missing field")
        if not valid_text(content) or not valid_text(m["role"]):
            raise Skip("not UTF-8")
        out.append({**m, "content": content})
    return out, start


def token_offsets(tokenizer: Tokenizer, text: str, ids: list[int]) -> list[tuple[int, int]]:
    """Where each token of ``ids`` (the encoding of ``text``) lies in the UTF-8 bytes of ``text``: each token's bytes
    (``Tokenizer.token_bytes``) read off the text in order, which works for either backend. Allowed for: a space in
    front of a token that the text does not have (the "▁" of a SentencePiece dummy prefix) and whitespace in the
    text that no token holds (taken along by an added token's lstrip/rstrip, or collapsed by SentencePiece); it
    goes to the next token. A ``Skip`` when a token is not in the text at all (a normalizer that rewrote it, an
    unknown token)."""

    def match(piece: bytes, start: int) -> Optional[int]:
        if data.startswith(piece, start):
            return start + len(piece)
        if piece[:1] == b" " and data.startswith(piece[1:], start):
            return start + len(piece) - 1
        return None

    data, at, offsets, pieces = text.encode("utf-8"), 0, [], {}
    for token in ids:
        piece = pieces.get(token)
        if piece is None:
            piece = pieces[token] = tokenizer.token_bytes(token)
        end = match(piece, at)
        if end is None and (past := _SPACES.match(data, at).end()) > at:
            end = match(piece, past)
        if end is None:
            raise Skip("tokens that do not spell the text")
        offsets.append((at, end))
        at = end
    return offsets


_SPACES = re.compile(rb"\s*")


def byte_spans(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Character spans of ``text`` as spans of its UTF-8 bytes."""
    return [(len(text[:a].encode("utf-8")), len(text[:b].encode("utf-8"))) for a, b in spans]


def overlapping(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """For each token, whether it overlaps a span (an empty token: whether it lies inside one), as transformers'
    assistant mask learns every token from the one holding a span's first character to the one holding its last."""
    return [any(s < b and max(e, s + 1) > a for a, b in spans) for s, e in offsets]


# ----------------------------------------------------------------------------- reading, splitting, building
def valid_text(text: str) -> bool:
    """False for text holding lone surrogates: bytes that were not UTF-8 (decoded with surrogateescape) or a JSON
    ``\\ud800`` escape."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def text_field(record: dict, key: str, optional: bool = False) -> str:
    """``record[key]``: a ``Skip`` when it is absent or null ("missing field", unless ``optional``: then "") or holds
    something other than text (``output is not a string (int)``)."""
    value = record.get(key)
    if value is None:
        if optional:
            return ""
        raise Skip("missing field")
    if not isinstance(value, str):
        raise Skip(f"{key} is not a string ({type(value).__name__})")
    if not valid_text(value):
        raise Skip("not UTF-8")
    return value


def read_records(path: Path) -> list[tuple[str, Any]]:
    """The records of a JSON list or JSONL file (sniffed from the first character, whatever the suffix), each with
    where it is: ``name:line`` in a JSONL file, ``name[index]`` (from 0) in a JSON list. A line that is not JSON is a
    ``Skip``; bytes that are not UTF-8 survive as lone surrogates, caught by ``valid_text``."""
    if not path.is_file():
        raise DataError(f"no file at {path}: pass a .json or .jsonl file as --data.path")
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}): fix it, or write one "
                "record per line (.jsonl)"
            ) from err
        return [(f"{path.name}[{i}]", r) for i, r in enumerate(records)]  # (a text starting with "[" is a list)
    records = []
    for number, line in enumerate(text.split("\n"), 1):  # (not splitlines: a JSON string may hold U+2028)
        if not line.strip():
            continue
        try:
            records.append((f"{path.name}:{number}", json.loads(line)))
        except json.JSONDecodeError:
            records.append((f"{path.name}:{number}", Skip("invalid JSON")))
    return records


def validation_indices(count: int, fraction: float) -> set[int]:
    """``round(count * fraction)`` record indices (at least one, and one short of all) with the smallest BLAKE2
    hash of the index: independent of the seed, stable for a file, and spread over it."""
    if fraction <= 0 or count < 2:
        return set()
    k = min(max(1, round(count * fraction)), count - 1)
    keys = [hashlib.blake2b(i.to_bytes(8, "little"), digest_size=8).digest() for i in range(count)]
    return set(sorted(range(count), key=keys.__getitem__)[:k])


def pack(samples: list[Sample], max_seq_length: int) -> list[Sample]:
    """Consecutive samples concatenated, greedily, into rows of at most ``max_seq_length`` (+1 tokens)."""
    packed, group, size = [], [], 0
    for sample in samples:
        if group and size + len(sample[0]) > max_seq_length + 1:
            packed.append(group)
            group, size = [], 0
        group.append(sample)
        size += len(sample[0])
    packed += [group] if group else []
    return [(np.concatenate([t for t, _ in g]), np.concatenate([l for _, l in g])) for g in packed]


SHOWN_PLACES = 3
"""Places of skipped records kept per reason, for the summary line."""


def located(records: list, path: Path) -> list[tuple[str, Any]]:
    """``(place, record)`` pairs: as ``read_records`` gives them, else bare records placed by their index."""
    if all(isinstance(r, tuple) and len(r) == 2 and isinstance(r[0], str) for r in records):
        return records
    return [(f"{Path(path).name}[{i}]", r) for i, r in enumerate(records)]


def encode_all(records: list[tuple[str, Any]], path: Path, encode: Callable[[Any, Path], tuple[Sample, bool]]) -> tuple[list[Sample], dict]:
    samples, skipped, places, truncated = [], Counter(), {}, 0
    for where, record in records:
        try:
            if isinstance(record, Skip):
                raise record
            sample, cut = encode(record, path)
        except Skip as reason:
            skipped[str(reason)] += 1
            if len(shown := places.setdefault(str(reason), [])) < SHOWN_PLACES:
                shown.append(where)
            continue
        samples.append(sample)
        truncated += cut
    return samples, {"samples": len(samples), "skipped": dict(skipped), "skipped_at": places, "truncated": truncated}


def build(module: FileData, encode: Callable, tokenizer: Tokenizer, max_seq_length: int, seed: int) -> tuple[SFTDataset, Optional[SFTDataset]]:
    """Read the module's files, split, encode (or load the cached encoding), pack, print the summary line and return
    the datasets."""
    train_path, val_path = module.files()
    cache = cache_root() / "sft" / cache_key(module, tokenizer, max_seq_length, train_path, val_path)
    if (cache / "meta.json").is_file():
        label, (train, train_stats), (val, val_stats) = load_samples(cache, module.ignore_index)
    else:
        records = located(module.read(train_path), train_path)
        if val_path is not None:
            train_records, val_records = records, located(module.read(val_path), val_path)
        else:
            held_out = validation_indices(len(records), module.val_fraction)
            train_records = [r for i, r in enumerate(records) if i not in held_out]
            val_records = [r for i, r in enumerate(records) if i in held_out] if held_out else None
        train, train_stats = encode_all(train_records, train_path, encode)
        val, val_stats = encode_all(val_records, val_path or train_path, encode) if val_records is not None else ([], None)
        label = module.describe()
        if train:
            save_samples(cache, label, module.ignore_index, (train, train_stats), (val, val_stats))
    log(summary(label, train_stats, val_stats, max_seq_length))
    if not train:
        skipped = skip_text(train_stats)  # (the summary line above counts the validation records' too)
        why = f"{skipped} of the training records" if skipped else "it has no records"
        if module.expected and "missing field" in train_stats["skipped"]:
            why += f": {module.expected}"
        if val:  # the records held out were the usable ones
            why += f"; the {len(val)} usable one(s) went to validation: lower --data.val_fraction, or give more records"
        raise DataError(f"no usable training samples in {train_path}: {why}")
    if module.packing:
        train, val = pack(train, max_seq_length), pack(val, max_seq_length)
    ignore = module.ignore_index
    return (
        SFTDataset(train, seed, shuffle=True, stats=train_stats, ignore_index=ignore),
        SFTDataset(val, seed, shuffle=False, stats=val_stats, ignore_index=ignore) if val else None,
    )


# ----------------------------------------------------------------------------- the tokenized cache
CACHE_FORMAT = 5
"""Part of every cache key: raise it when the encoding of samples, or the cached summary, changes (4: chat-style
instruction data is the conversation the template renders; 5: a field that is not text is skipped under its own reason,
``chat`` takes TRL's conversational prompt/completion, ``json`` its prompt/completion text)."""


def cache_key(module: FileData, tokenizer: Tokenizer, max_seq_length: int, *files: Optional[Path]) -> str:
    """A hash of everything the encoded samples depend on: the data files' bytes, the tokenizer's files, the
    module's encoding options and ``max_seq_length`` (packing and the seed are applied after the cache), and the data
    files' names, which the cached summary line shows."""
    h = hashlib.sha256(f"{CACHE_FORMAT}|{type(module).__name__}|{max_seq_length}".encode())
    h.update(repr([module.mask_prompt, module.val_fraction, module.prompt_style, module.ignore_index]).encode())
    h.update(repr([f.name if f is not None else None for f in files]).encode())
    h.update(tokenizer.fingerprint().encode())
    for path in files:
        h.update(b"|")
        if path is not None and path.is_file():
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
    return h.hexdigest()[:20]


def save_samples(folder: Path, label: str, ignore_index: int, *splits: tuple[list[Sample], Optional[dict]]) -> None:
    """Samples as concatenated tokens, learned-token flags and offsets, written to a temporary folder and moved into
    place."""
    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only cache: train without it
        return
    arrays = {}
    for name, (samples, _) in zip(("train", "val"), splits):
        arrays[f"{name}_tokens"] = np.concatenate([t for t, _ in samples] or [np.zeros(0)]).astype(np.int32)
        arrays[f"{name}_learned"] = np.concatenate([l != ignore_index for _, l in samples] or [np.zeros(0, bool)])
        arrays[f"{name}_offsets"] = np.cumsum([0, *(len(t) for t, _ in samples)])
    np.savez(tmp / "samples.npz", **arrays)
    (tmp / "meta.json").write_text(json.dumps({"label": label, "stats": [stats for _, stats in splits]}))
    try:
        os.replace(tmp, folder)  # complete or absent; another process may have written it first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def load_samples(folder: Path, ignore_index: int) -> tuple[str, tuple[list[Sample], dict], tuple[list[Sample], Optional[dict]]]:
    meta = json.loads((folder / "meta.json").read_text())
    arrays = np.load(folder / "samples.npz")
    splits = []
    for name, stats in zip(("train", "val"), meta["stats"]):
        tokens = arrays[f"{name}_tokens"].astype(np.int64)
        labels = np.where(arrays[f"{name}_learned"], tokens, ignore_index)
        offsets = arrays[f"{name}_offsets"]
        splits.append(([(tokens[a:b], labels[a:b]) for a, b in zip(offsets[:-1], offsets[1:])], stats))
    return meta["label"], splits[0], splits[1]


def skip_text(stats: dict) -> str:
    """E.g. ``3 skipped (1 invalid JSON: data.jsonl:7; 2 missing field: data.jsonl:2, data.jsonl:9)``: per reason
    the count and the first places (``...`` when there are more)."""
    skipped, places = stats["skipped"], stats.get("skipped_at", {})
    if not skipped:
        return ""
    reasons = []
    for reason, n in sorted(skipped.items()):
        shown = places.get(reason, [])
        where = ", ".join(shown) + (", ..." if n > len(shown) else "") if shown else ""
        reasons.append((f"{n:,} {reason}" if len(skipped) > 1 else reason) + (f": {where}" if where else ""))
    return f"{sum(skipped.values()):,} skipped ({'; '.join(reasons)})"


def summary(label: str, train: dict, val: Optional[dict], max_seq_length: int) -> str:
    """E.g. ``alpaca: 51,748 samples (49,161 train, 2,587 validation), 12 skipped (empty response:
    alpaca_data_cleaned.json[31], alpaca_data_cleaned.json[907], alpaca_data_cleaned.json[4410], ...), 340
    truncated to 512 tokens``."""
    total = {"samples": train["samples"], "skipped": Counter(train["skipped"]), "truncated": train["truncated"]}
    total["skipped_at"] = {reason: list(shown) for reason, shown in train.get("skipped_at", {}).items()}
    if val is not None:
        total["samples"] += val["samples"]
        total["skipped"].update(val["skipped"])
        total["truncated"] += val["truncated"]
        for reason, shown in val.get("skipped_at", {}).items():  # (the training records' places first)
            total["skipped_at"][reason] = (total["skipped_at"].get(reason, []) + shown)[:SHOWN_PLACES]
    n, plural = total["samples"], "s" * (total["samples"] != 1)
    parts = [f"{label}: {n:,} sample{plural} ({train['samples']:,} train, {val['samples'] if val else 0:,} validation)"]
    parts += [text] if (text := skip_text(total)) else []
    parts += [f"{total['truncated']:,} truncated to {max_seq_length:,} tokens"] if total["truncated"] else []
    return ", ".join(parts)


def log(line: str) -> None:
    """Print on the first process only (the rank variables that torchrun, Fabric and Slurm set)."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if var in os.environ:
            if os.environ[var] != "0":
                return
            break
    print(line, flush=True)
