"""A small mixed set of code sources for the ``prepare code`` tests, built with real git, tar and zip.

``build(root)`` makes (and returns the paths of):

- ``acme-widgets``: git repository, origin ``https://github.com/acme/widgets.git``, MIT LICENSE, two commits;
  ``src/app.py`` (a planted email), ``src/util.py``, ``src/__init__.py`` (empty), ``src/cafe.py`` (Latin-1, not UTF-8), ``src/wide.py`` (a
  2,000-character line), ``src/bench.py`` (contains a benchmark prompt), ``node_modules/left/index.js``
  and ``dist/app.min.js`` (both vendored for Linguist), ``proto/items_pb2.py`` (generated), ``logo.png`` (binary), ``blob.dat`` (undecodable bytes),
  ``big.py`` (over the size cap).
- ``gplproj``: git repository without a remote, GPL-3.0 COPYING, one C file.
- ``acme-secret``, ``evilcorp-tool``, ``acme-secret-sauce``, ``notevilcorp-y``: git repositories whose origins are
  ``acme/secret``, ``evilcorp/tool``, ``acme/secret-sauce``, ``notevilcorp/y`` (the first two are opted out).
- ``empty``: git repository with no commit.
- ``loose``: plain folder, no license: ``main.go``, ``lib.rs``, ``util_copy.py`` (an exact copy of acme's
  util.py), ``app_near.py`` (acme's app.py with one line changed), a symlink out of the folder, a symlink to
  itself's folder, two symlinks pointing at each other, a FIFO.
- ``bundle.tar.gz``: ``bundle-main/`` with ``hello.sh`` and a symlink member.
- ``pack.zip``: ``pack.rb`` and a member named ``../evil.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

MIT = """MIT License

Copyright (c) 2024 Acme

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

APP = '''"""Inventory service: keeps stock levels for the warehouse and answers queries about them."""

import json
from dataclasses import dataclass

MAINTAINER = "jane.doe@acme-widgets.com"


@dataclass
class Item:
    name: str
    quantity: int
    price: float

    def total_value(self) -> float:
        return self.quantity * self.price


class Inventory:
    def __init__(self) -> None:
        self.items: dict[str, Item] = {}

    def add(self, name: str, quantity: int, price: float) -> None:
        if name in self.items:
            self.items[name].quantity += quantity
        else:
            self.items[name] = Item(name, quantity, price)

    def remove(self, name: str, quantity: int) -> None:
        item = self.items[name]
        if quantity > item.quantity:
            raise ValueError(f"only {item.quantity} of {name} in stock")
        item.quantity -= quantity

    def value(self) -> float:
        return sum(item.total_value() for item in self.items.values())

    def to_json(self) -> str:
        return json.dumps({name: vars(item) for name, item in sorted(self.items.items())})
'''

UTIL = '''def clamp(value, low, high):
    """Limit value to the closed interval [low, high]."""
    return max(low, min(high, value))


def chunks(items, size):
    """Split a list into consecutive pieces of at most size elements."""
    return [items[i : i + size] for i in range(0, len(items), size)]
'''

BENCHMARK_PROMPT = 'def has_close_elements(numbers, threshold):\n    """Check if in given list of numbers, are any two numbers closer to each other than given threshold."""\n'

GO = 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("hello from go")\n}\n'
RUST = 'pub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn adds() {\n        assert_eq!(super::add(2, 2), 4);\n    }\n}\n'
C = '#include <stdio.h>\n\nint main(void) {\n    printf("copyleft hello\\n");\n    return 0;\n}\n'
SHELL = '#!/bin/sh\nset -eu\necho "hello from a tarball"\nfor f in *.txt; do wc -l "$f"; done\n'
RUBY = 'class Greeter\n  def initialize(name)\n    @name = name\n  end\n\n  def greet\n    puts "Hello, #{@name}!"\n  end\nend\n'
MINIFIED = "!function(e){var t={};function n(r){if(t[r])return t[r].exports;var o=t[r]={i:r,l:!1,exports:{}};return e[r].call(o.exports,o,o.exports,n),o.l=!0,o.exports}n.m=e,n.c=t}([]);" * 4
MAX_FILE_SIZE = 40_000


def git(path: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               GIT_AUTHOR_DATE="2024-01-01T00:00:00Z", GIT_COMMITTER_DATE="2024-01-01T00:00:00Z")
    return subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, text=True, env=env).stdout


def git_repo(path: Path, files: dict[str, bytes | str], origin: str | None = None, commits: int = 1) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    if origin:
        git(path, "remote", "add", "origin", origin)
    items = sorted(files.items())
    for c in range(commits):  # the last commit has every file
        for name, data in items[: len(items) * (c + 1) // commits]:
            f = path / name
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(data.encode() if isinstance(data, str) else data)
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", f"commit {c}")
    return path


def build(root: Path) -> dict[str, Path]:
    root = Path(root)
    paths = {}
    paths["acme"] = git_repo(root / "acme-widgets", {
        "LICENSE": MIT,
        "src/app.py": APP,
        "src/util.py": UTIL,
        "src/__init__.py": "",
        "src/cafe.py": "# caf\xe9 cr\xe8me\nPRICE = 3  # r\xe9sum\xe9 of the menu\n".encode("latin-1"),
        "src/wide.py": "TABLE = [" + ", ".join(str(i) for i in range(500)) + "]\n",
        "src/bench.py": "# a copy of a benchmark problem\n" + BENCHMARK_PROMPT + "    return any(abs(a - b) < threshold for a in numbers for b in numbers if a is not b)\n",
        "node_modules/left/index.js": "module.exports = function leftPad(s, n) { return String(s).padStart(n); };\n",
        "dist/app.min.js": MINIFIED,
        "proto/items_pb2.py": "# -*- coding: utf-8 -*-\n# Generated by the protocol buffer compiler.  DO NOT EDIT!\n# source: items.proto\nDESCRIPTOR = None\n",
        "logo.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
        "blob.dat": bytes(range(128, 256)) * 4,
        "big.py": "x = 1\n" * (MAX_FILE_SIZE // 6 + 100),
    }, origin="https://github.com/acme/widgets.git", commits=2)
    paths["gpl"] = git_repo(root / "gplproj", {
        "COPYING": Path("/usr/share/common-licenses/GPL-3").read_text(), "hello.c": C})
    for folder, origin, code in [
        ("acme-secret", "git@github.com:acme/secret.git", "SECRET_RECIPE = 'do not ship'\n"),
        ("evilcorp-tool", "https://github.com/evilcorp/tool", "def tool():\n    return 'evil'\n"),
        ("acme-secret-sauce", "ssh://git@github.com/acme/secret-sauce.git", "def sauce():\n    return 'tomato and basil'\n"),
        ("notevilcorp-y", "https://github.com/notevilcorp/y.git", "def y():\n    return 'not evil at all'\n"),
    ]:
        paths[folder] = git_repo(root / folder, {"main.py": code}, origin=origin)
    paths["empty"] = root / "empty"
    paths["empty"].mkdir()
    git(paths["empty"], "init", "-q")

    loose = paths["loose"] = root / "loose"
    (loose / "sub").mkdir(parents=True)
    (loose / "main.go").write_text(GO)
    (loose / "lib.rs").write_text(RUST)
    (loose / "util_copy.py").write_text(UTIL)
    (loose / "app_near.py").write_text(APP.replace("return self.quantity * self.price", "return round(self.quantity * self.price, 2)"))
    (root / "outside.py").write_text("print('outside the source')\n")
    (loose / "escape.py").symlink_to(root / "outside.py")
    (loose / "sub" / "up").symlink_to(loose)  # a folder link to its own ancestor
    (loose / "ping").symlink_to(loose / "pong")
    (loose / "pong").symlink_to(loose / "ping")
    os.mkfifo(loose / "pipe")

    tar_src = root / "tar-src" / "bundle-main"
    tar_src.mkdir(parents=True)
    (tar_src / "hello.sh").write_text(SHELL)
    (tar_src / "link.sh").symlink_to("hello.sh")
    paths["tar"] = root / "bundle.tar.gz"
    with tarfile.open(paths["tar"], "w:gz") as tf:
        tf.add(tar_src, arcname="bundle-main")
    paths["zip"] = root / "pack.zip"
    with zipfile.ZipFile(paths["zip"], "w") as zf:
        zf.writestr("pack.rb", RUBY)
        zf.writestr("../evil.py", "print('climbed out')\n")

    paths["optout"] = root / "optouts.jsonl"
    paths["optout"].write_text(json.dumps({"optout_owners": ["evilcorp"], "optout_repos": []}) + "\n"
                               + json.dumps({"optout_owners": [], "optout_repos": ["acme/secret"]}) + "\n")
    paths["bench"] = root / "bench.jsonl"
    paths["bench"].write_text(json.dumps({"task_id": "HumanEval/0", "prompt": BENCHMARK_PROMPT}) + "\n")
    return paths


def sources(paths: dict[str, Path]) -> list[str]:
    names = ["acme", "gpl", "acme-secret", "evilcorp-tool", "acme-secret-sauce", "notevilcorp-y", "empty", "loose", "tar", "zip"]
    return [str(paths[n]) for n in names]


def train_tokenizer(out_dir: Path, texts: list[str]) -> Path:
    """A byte-level BPE tokenizer (vocab 400) with ``<|endoftext|>`` as EOS, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return out_dir
