"""Benchmark decontamination: whitespace-insensitive exact substring matches, near misses rejected."""

from __future__ import annotations

import json
import random
import string
import sysconfig
from pathlib import Path

import pytest

from litgpt_clone.corpus.decontam import Decontaminator, normalize

SOLUTION = '''def has_close_elements(numbers: List[float], threshold: float) -> bool:
    for idx, elem in enumerate(numbers):
        for idx2, elem2 in enumerate(numbers):
            if idx != idx2:
                distance = abs(elem - elem2)
                if distance < threshold:
                    return True
    return False
'''


def _haystack(rng: random.Random, n_lines: int = 200) -> str:
    words = ["value", "count", "items", "result", "index", "total", "name", "data"]
    return "".join(f"    {rng.choice(words)}_{i} = {rng.choice(words)}({rng.randrange(100)})\n" for i in range(n_lines))


def test_planted_string_with_other_whitespace_is_found():
    rng = random.Random(0)
    decon = Decontaminator([SOLUTION])
    reformatted = SOLUTION.replace("    ", "\t").replace("\n", "\r\n\n").replace(" = ", "  =   ")
    text = _haystack(rng) + "# copied\n" + reformatted + _haystack(rng)
    label = decon.contaminated(text)
    assert label is not None and label == normalize(SOLUTION)[:80] + "..."
    assert decon.contaminated(_haystack(rng) + _haystack(rng)) is None


def test_near_misses_are_not_matches():
    decon = Decontaminator([SOLUTION])
    assert decon.contaminated(SOLUTION.replace("distance < threshold", "distance <= threshold")) is None  # one character
    assert decon.contaminated(SOLUTION[:-20]) is None  # a truncated copy is not the whole string
    assert decon.contaminated(SOLUTION.upper()) is None  # case-sensitive
    assert decon.contaminated(SOLUTION.replace("(numbers)", "( numbers )")) is None  # whitespace inserted where there was none


def test_min_chars_and_from_files(tmp_path):
    records = [
        {"task_id": "HumanEval/0", "prompt": SOLUTION, "tests": ["assert has_close_elements([1.0, 2.0], 0.5) is False"]},
        {"task_id": "x", "meta": {"canonical": "return sorted(set(values), key=lambda v: (-counts[v], v))[:k] # top-k"}},
    ]
    jsonl = tmp_path / "bench.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    txt = tmp_path / "strings.txt"
    txt.write_text("short line\n" + "SELECT name, total FROM orders WHERE total > 100 ORDER BY total DESC LIMIT 10\n")
    decon = Decontaminator.from_files([jsonl, txt])
    assert decon.size == 4  # the prompt, the nested canonical string, the long test string and the SQL line
    # the label says which file, line and task matched (an audit traces a dropped file to its benchmark record)
    assert decon.contaminated("q = 'SELECT name, total FROM orders\n  WHERE total > 100 ORDER BY total DESC LIMIT 10'") == (
        "strings.txt:2: SELECT name, total FROM orders WHERE total > 100 ORDER BY total DESC LIMIT 10"
    )
    assert decon.contaminated("    return sorted(set(values), key=lambda v: (-counts[v], v))[:k]  # top-k\n") == (
        "bench.jsonl:2 x: return sorted(set(values), key=lambda v: (-counts[v], v))[:k] # top-k"
    )
    assert decon.contaminated(SOLUTION).startswith("bench.jsonl:1 HumanEval/0: def has_close_elements(")
    assert decon.contaminated("HumanEval/0 short line") is None  # ids and short strings are below min_chars
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        Decontaminator.from_files([tmp_path / "bad.jsonl"])


def test_thousands_of_strings_on_real_files():
    rng = random.Random(1)
    word = lambda: "".join(rng.choice(string.ascii_letters) for _ in range(rng.randrange(3, 9)))
    strings = [" ".join(word() for _ in range(rng.randrange(15, 40))) for _ in range(5000)]  # 50+ characters each
    decon = Decontaminator(strings + [SOLUTION])
    assert decon.size == 5001
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))[:100]
    assert all(decon.contaminated(p.read_text(encoding="utf-8")) is None for p in files)
    planted = files[0].read_text(encoding="utf-8") + "\n# " + strings[1234].replace(" ", "\n#   ") + "\n"
    assert decon.contaminated(planted) is None  # the comment markers break the string: not an exact match
    planted = files[0].read_text(encoding="utf-8") + '\ndoc = """' + strings[1234].replace(" ", "\n ") + '"""\n'
    assert decon.contaminated(planted) == normalize(strings[1234])[:80] + ("..." if len(normalize(strings[1234])) > 80 else "")


def test_empty_benchmark_list():
    assert Decontaminator([]).contaminated(SOLUTION) is None


def test_unusable_files_are_one_line_before_the_build_starts(tmp_path, capsys):
    """A bad JSONL line was a plain ValueError traceback after vN.partial was made, a non-UTF-8 file a
    UnicodeDecodeError traceback, and a file with no string long enough decontaminated nothing, silently."""
    from test_generate import cli_error

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("print(1)\n")
    files = {"bad.jsonl": b'{"prompt": "' + b"x" * 60 + b'"}\nbad json\n', "latin1.txt": b"text \xe9\n", "short.txt": b"short string\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    expected = {
        "bad.jsonl": f"{tmp_path / 'bad.jsonl'}:2 is not a JSON record (Expecting value); fix or remove that line",
        "latin1.txt": f"{tmp_path / 'latin1.txt'} is not UTF-8 text (invalid continuation byte at byte 5): save it as UTF-8",
        "short.txt": f"{tmp_path / 'short.txt'} has no string of 50 or more characters, the shortest that is searched for"
                     " (shorter ones match everywhere): it would decontaminate nothing",
    }
    for name, message in expected.items():
        assert cli_error(capsys, "prepare", "code", tmp_path / "src", "--out_dir", tmp_path / "out",
                         "--decontaminate", f"[{tmp_path / name}]") == f"error: --decontaminate: {message}"
    assert not (tmp_path / "out").exists()
