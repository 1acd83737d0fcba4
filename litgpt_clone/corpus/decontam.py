"""Benchmark decontamination of ``prepare code``: drop files that contain a benchmark's text.

Interface::

    Decontaminator(benchmark_strings: Iterable[str | (str, origin)], min_chars: int = 50)
        .contaminated(text: str) -> Optional[str]   the matched benchmark string's label, or None
        Decontaminator.from_files(paths, min_chars=50)  strings from JSONL (every string field of every record,
                                                        nested ones too) and text files (one string per line);
                                                        ``CorpusError`` for a file that is not UTF-8, a line that is
                                                        not JSON, or a file with no string of ``min_chars``

A file is contaminated when it contains a benchmark string as an exact substring after both sides have their
whitespace normalized (every run of whitespace becomes one space; leading/trailing whitespace is removed), as
BigCode's decontamination of StarCoder does with HumanEval/MBPP/... solutions and prompts. Matching is
case-sensitive. Strings shorter than ``min_chars`` after normalization are ignored (short strings match
everywhere). All strings are searched at once with an Aho-Corasick automaton (pyahocorasick), so the cost is
linear in the text length whatever the number of benchmark strings. The label returned names where the string
comes from, then the normalized string cut to its first 80 characters (with "..." when cut): from files,
``humaneval.jsonl:1 HumanEval/0: def has_close_elements(...`` (the file, the line, the record's ``task_id`` when it
has one), so an audit can tell which benchmark record a dropped file matched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import ahocorasick

from litgpt_clone.corpus.pipeline import CorpusError

WHITESPACE = re.compile(r"\s+")
LABEL_CHARS = 80


def normalize(text: str) -> str:
    """Collapse every run of whitespace to one space and strip the ends."""
    return WHITESPACE.sub(" ", text).strip()


def _label(normalized: str) -> str:
    return normalized if len(normalized) <= LABEL_CHARS else normalized[:LABEL_CHARS] + "..."


def _strings_in(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings_in(item)


class Decontaminator:
    """Finds benchmark strings (whitespace-normalized exact substrings) in texts; see the module docstring."""

    def __init__(self, benchmark_strings: Iterable[str], min_chars: int = 50) -> None:
        self.min_chars = min_chars
        self._automaton = ahocorasick.Automaton()
        for item in benchmark_strings:
            string, origin = item if isinstance(item, tuple) else (item, None)
            normalized = normalize(string)
            if len(normalized) >= min_chars and normalized not in self._automaton:
                self._automaton.add_word(normalized, f"{origin}: {_label(normalized)}" if origin else _label(normalized))
        self.size = len(self._automaton)
        """How many distinct benchmark strings are searched for."""
        if self.size:
            self._automaton.make_automaton()

    @classmethod
    def from_files(cls, paths: Iterable[Union[str, Path]], min_chars: int = 50) -> "Decontaminator":
        """Load benchmark strings: ``.jsonl`` files give every string field of every record, others every line."""
        strings: list[tuple[str, str]] = []  # (string, origin)
        for path in map(Path, paths):
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as err:
                raise CorpusError(f"--decontaminate: {path} is not UTF-8 text ({err.reason} at byte {err.start}): save it as UTF-8") from None
            found: list[tuple[str, str]] = []
            if path.suffix == ".jsonl":
                for number, line in enumerate(lines, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise CorpusError(f"--decontaminate: {path}:{number} is not a JSON record ({err.msg}); fix or remove that line") from None
                    task = record.get("task_id") if isinstance(record, dict) else None
                    origin = f"{path.name}:{number}" + (f" {task}" if isinstance(task, (str, int)) else "")
                    found.extend((string, origin) for string in _strings_in(record))
            else:
                found = [(line, f"{path.name}:{number}") for number, line in enumerate(lines, 1)]
            if not any(len(normalize(string)) >= min_chars for string, _ in found):
                raise CorpusError(f"--decontaminate: {path} has no string of {min_chars} or more characters, the shortest that is"
                                  " searched for (shorter ones match everywhere): it would decontaminate nothing")
            strings.extend(found)
        return cls(strings, min_chars=min_chars)

    def contaminated(self, text: str) -> Optional[str]:
        """The label of a benchmark string found in ``text`` (the match that ends first), or None."""
        if not self.size:
            return None
        for _end, label in self._automaton.iter(normalize(text)):
            return label
        return None
