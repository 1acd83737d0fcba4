"""README.md and every tutorials/*.md, run as a reader would paste them (the doc-test convention).

- Every fenced block whose info string is ``bash`` or ``python`` runs, in page order, in one fresh workspace per
  page (the cwd): ``bash -euo pipefail -c`` / the venv's python. Other blocks (``text``, ``yaml``, ``json``,
  ``console``, none) are shown, not run.
- The line right before a block may hold a marker: ``<!-- doc-test: skip REASON -->`` (not run; the reason is
  required) or ``<!-- doc-test: background PORT -->`` (a server: started in its own process group, the later blocks
  run once 127.0.0.1:PORT answers, then the group is killed).
- Every page sees a hub stand-in (tests/hub_standin.py) on 127.0.0.1 as ``HF_ENDPOINT``, serving tiny random
  models and small datasets under the real repo ids the pages name (tests/doc_models.py), a per-session
  ``HF_HOME`` and ``LITGPT_CLONE_CACHE``, ``OMP_NUM_THREADS=1`` unless set, and the venv's ``litgpt-clone`` and
  ``python`` first on ``PATH``.
- A shown block (``text``, ``console``, ...) with a ``$ ``/``>>> `` prompt line, or a ``sh``/``py`` block, is an
  error: it would be a command the test never runs.

Nearly all the time goes to starting processes (importing torch); ``pytest -n 2 tests/test_docs.py`` runs two
pages at a time (each worker builds its own stand-in hub).

``test_page_runs`` runs the pages (one test per page: a failure names the page, the block's line, its command and
the tail of its stderr). The other tests are quick: the markers and fences of every page are well formed (checked
against markdown-it's own parse, so no block escapes the runner), and the runner itself runs, skips, serves and
fails as described, on a page written here.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from hub_standin import HubStandin

REPO = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(f"tutorials/{p.name}" for p in (REPO / "tutorials").glob("*.md"))]
RUN_LANGS = ("bash", "python")
ALIASES = {"sh": "bash", "shell": "bash", "zsh": "bash", "py": "python", "python3": "python"}
"""Info strings that look runnable but are not run: a page must say ``bash``/``python`` (run) or ``text`` (shown)."""
BLOCK_TIMEOUT_S = 300
SERVER_START_TIMEOUT_S = 180
PORT_WAIT_S = 180

MARKER = re.compile(r"^\s*<!--\s*doc-test:\s*(?P<kind>[\w-]+)(?P<arg>.*?)-->\s*$")
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
PROMPT = re.compile(r"^\s*(\$|>>>) \S")


# ------------------------------------------------------------------------------------------------ parsing
@dataclass(frozen=True)
class Block:
    """One fenced block of a page."""

    page: str
    line: int  # 1-based line of the opening fence
    info: str  # the whole info string
    code: str
    marker: Optional[tuple[str, str]] = None  # (kind, argument) of a doc-test comment on the line before

    @property
    def lang(self) -> str:
        return self.info.split()[0].lower() if self.info.split() else ""

    @property
    def runs(self) -> bool:
        return self.lang in RUN_LANGS

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def parse_page(text: str, page: str) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a markdown page, and the problems found on the way (orphan markers, an unclosed fence)."""
    lines = text.split("\n")  # not splitlines(): generated text may hold \x1d, \x1c, ... which it also splits on
    blocks, problems = [], []
    i = 0
    while i < len(lines):
        marker = MARKER.match(lines[i])
        if marker and not (i + 1 < len(lines) and FENCE.match(lines[i + 1])):
            problems.append(f"{page}:{i + 1}: a doc-test marker must be on the line right before a fenced block")
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), None)
        if end is None:
            problems.append(f"{page}:{i + 1}: this fenced block is never closed")
            break
        body = [ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in lines[i + 1 : end]]
        prev = MARKER.match(lines[i - 1]) if i > 0 else None
        blocks.append(
            Block(page, i + 1, opening["info"].strip(), "\n".join(body) + "\n", (prev["kind"], prev["arg"].strip()) if prev else None)
        )
        i = end + 1
    return blocks, problems


def block_problems(block: Block) -> list[str]:
    """What is wrong with one block's marker or info string."""
    out = []
    if block.lang in ALIASES:
        out.append(f"{block.where}: ```{block.lang} is not run: write ```{ALIASES[block.lang]} (run by the test) or ```text (shown)")
    if not block.runs and block.lang not in ALIASES:
        shown = [ln for ln in block.code.splitlines() if PROMPT.match(ln)]
        if shown:
            out.append(
                f"{block.where}: a ```{block.lang or '(no info)'} block shows a command ({shown[0].strip()!r}) that the test does not run:"
                " put commands in ```bash/```python blocks and their output in ```text"
            )
    if block.marker is None:
        return out
    kind, arg = block.marker
    if not block.runs:
        out.append(f"{block.where}: doc-test marker on a ```{block.lang} block, which is never run anyway")
    elif kind == "skip":
        if len(arg) < 8:
            out.append(f"{block.where}: `doc-test: skip` needs a reason (why it cannot run offline on a CPU), got {arg!r}")
    elif kind == "background":
        if not arg.isdigit():
            out.append(f"{block.where}: `doc-test: background` needs the port the server listens on, got {arg!r}")
        if block.lang != "bash":
            out.append(f"{block.where}: only a ```bash block can be a background server")
    else:
        out.append(f"{block.where}: unknown doc-test marker {kind!r}: use `skip REASON` or `background PORT`")
    return out


def page_blocks(page: str) -> list[Block]:
    return parse_page((REPO / page).read_text(encoding="utf-8"), page)[0]


# ------------------------------------------------------------------------------------------------ running
def _tail(text: str, lines: int = 40, chars: int = 4000) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])[-chars:]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _server_answers(port: int) -> bool:
    """An HTTP answer of any status but 503 on /health (a server still loading its model says 503)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
            return True
    except urllib.error.HTTPError as err:
        return err.code != 503
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group that ``proc`` leads, then SIGKILL what is left of it."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; its children (server workers) may still be in the group
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return


class PageRunner:
    """Runs the blocks of one page in ``workspace`` with ``env``; logs go to ``logs``.

    ``run`` returns one status per block: ``ran``, ``background``, ``skipped: REASON`` or ``shown`` (not a run
    block); it raises ``AssertionError`` naming the failing block, its command and its stderr tail."""

    def __init__(self, workspace: Path, logs: Path, env: dict, hint=None) -> None:
        self.workspace, self.logs, self.env, self.hint = workspace, logs, env, hint
        self.servers: list[tuple[Block, subprocess.Popen, Path]] = []
        self.timings: list[tuple[Block, float]] = []
        workspace.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)

    def command(self, block: Block) -> list[str]:
        if block.lang == "bash":
            return ["bash", "-euo", "pipefail", "-c", block.code]
        return [sys.executable, "-c", block.code]

    def fail(self, block: Block, why: str, stdout: str, stderr: str) -> None:
        hint = self.hint() if self.hint else ""
        raise AssertionError(
            f"{block.where}: the ```{block.lang} block {why}\n"
            f"--- command\n{block.code.rstrip()}\n--- stderr (tail)\n{_tail(stderr)}\n--- stdout (tail)\n{_tail(stdout, 15, 2000)}"
            + (f"\n--- hint\n{hint}" if hint else "")
        )

    def run(self, blocks: list[Block]) -> list[str]:
        statuses = []
        try:
            for block in blocks:
                statuses.append(self.run_block(block))
        finally:
            self.stop_servers()
        return statuses

    def run_block(self, block: Block) -> str:
        if not block.runs:
            return "shown"
        problems = block_problems(block)
        if problems:
            raise AssertionError("\n".join(problems))
        kind, arg = block.marker or ("run", "")
        if kind == "skip":
            return f"skipped: {arg}"
        if kind == "background":
            self.start_server(block, int(arg))
            return "background"
        start = time.perf_counter()
        proc = subprocess.Popen(  # its own process group: a timeout ends everything the block started
            self.command(block), cwd=self.workspace, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            stdout, stderr = proc.communicate()
            self.fail(block, f"did not finish in {BLOCK_TIMEOUT_S} s", stdout, stderr)
        self.timings.append((block, time.perf_counter() - start))
        (self.logs / f"line{block.line}.out").write_text(stdout)
        (self.logs / f"line{block.line}.err").write_text(stderr)
        if proc.returncode != 0:
            self.fail(block, f"exited with status {proc.returncode}", stdout, stderr)
        return "ran"

    def start_server(self, block: Block, port: int) -> None:
        deadline = time.monotonic() + PORT_WAIT_S
        while _port_open(port):  # another page's server (run in parallel, or shutting down) may hold it
            if time.monotonic() > deadline:
                self.fail(block, f"cannot start: 127.0.0.1:{port} is already in use by another program", "", "")
            time.sleep(0.5)
        log = self.logs / f"line{block.line}.server.log"
        with open(log, "w") as f:
            proc = subprocess.Popen(
                self.command(block), cwd=self.workspace, env=self.env, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.servers.append((block, proc, log))
        start = time.perf_counter()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not _server_answers(port):
            if proc.poll() is not None:
                self.fail(block, f"(a server) exited with status {proc.returncode} before 127.0.0.1:{port} answered", "", log.read_text())
            if time.monotonic() > deadline:
                self.fail(block, f"(a server) did not answer on 127.0.0.1:{port} within {SERVER_START_TIMEOUT_S} s", "", log.read_text())
            time.sleep(0.5)
        self.timings.append((block, time.perf_counter() - start))

    def stop_servers(self) -> None:
        for _, proc, _ in self.servers:
            _kill_group(proc)
        self.servers.clear()


# ------------------------------------------------------------------------------------------------ fixtures
def clean_env(**extra: str) -> dict:
    """os.environ without Hugging Face settings, the venv first on PATH, plus ``extra``."""
    drop = ("TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN", "LITGPT_CLONE_CACHE", "LITGPT_CLONE_TRACEBACK", "PYTEST_CURRENT_TEST")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k not in drop}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, *[p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin]])
    env.update(PYTHONUNBUFFERED="1", MPLBACKEND="Agg", TOKENIZERS_PARALLELISM="false", **extra)
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: on a shared CPU, more threads only contend
    return env


@dataclass
class DocHub:
    hub: HubStandin
    env: dict

    def missing_repos(self, since: int = 0) -> str:
        """A hint naming the repos asked for (in requests ``since`` on) that the stand-in does not have."""
        asked = set()
        for r in self.hub.requests[since:]:
            m = re.match(r"^/api/(models|datasets)/([^/]+/[^/]+)", r.path)
            if m:
                key = m[2] if m[1] == "models" else f"datasets/{m[2]}"
                if key not in self.hub.repos:
                    asked.add(m[2])
        return (
            f"the hub stand-in has no repo {', '.join(sorted(asked))}: add a row to MODELS or DATASETS in tests/doc_models.py"
            if asked else ""
        )


@pytest.fixture(scope="session")
def doc_hub(tmp_path_factory):
    """The hub stand-in with every model and dataset of tests/doc_models.py, and the environment pages run in."""
    from doc_models import build_hub

    root = tmp_path_factory.mktemp("docs")
    hub = HubStandin().start()
    try:
        build_hub(root / "models", hub)
        env = clean_env(
            HF_ENDPOINT=hub.endpoint, HF_HOME=str(root / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1",
            LITGPT_CLONE_CACHE=str(root / "litgpt_clone_cache"),
        )
        assert (Path(sys.executable).parent / "litgpt-clone").is_file(), "install the package: pip install -e ."
        yield DocHub(hub, env)
    finally:
        hub.stop()


# ------------------------------------------------------------------------------------------------ the pages
@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_page_runs(page, doc_hub, tmp_path):
    """Every bash/python block of the page runs, in order, in one workspace, and exits 0."""
    blocks = page_blocks(page)
    since = len(doc_hub.hub.requests)
    runner = PageRunner(tmp_path / "work", tmp_path / "logs", doc_hub.env, hint=lambda: doc_hub.missing_repos(since))
    start = time.perf_counter()
    statuses = runner.run(blocks)
    unmarked = [b for b, s in zip(blocks, statuses) if b.runs and b.marker is None and s != "ran"]
    assert not unmarked, f"blocks without a marker that did not run: {[b.where for b in unmarked]}"
    ran = sum(s == "ran" for s in statuses)
    skipped = [s for s in statuses if s.startswith("skipped")]
    print(f"\n{page}: {ran} run, {statuses.count('background')} background, {len(skipped)} skipped, {time.perf_counter() - start:.1f} s")
    for block, seconds in runner.timings:
        print(f"  line {block.line:4d}  {seconds:6.1f} s  {block.code.strip().splitlines()[0][:90]}")
    for s in skipped:
        print(f"  {s}")


@pytest.mark.parametrize("page", PAGES)
def test_page_markers_and_fences(page):
    """Markers are well formed, every skip has a reason, and every bash/python fence markdown-it sees is one the
    runner runs (so no command escapes the test through odd indentation or fence syntax)."""
    from markdown_it import MarkdownIt

    text = (REPO / page).read_text(encoding="utf-8")
    blocks, problems = parse_page(text, page)
    for block in blocks:
        problems += block_problems(block)
    ours = {b.line for b in blocks if b.runs}
    for token in MarkdownIt("commonmark").parse(text):
        if token.type == "fence" and token.info.split()[:1] and token.info.split()[0].lower() in RUN_LANGS:
            line = token.map[0] + 1
            if line not in ours:
                problems.append(f"{page}:{line}: a ```{token.info.strip()} block the runner would not execute")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------ the runner itself
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runner_runs_blocks_in_order_serves_skips_and_fails_loudly(tmp_path):
    port = _free_port()
    page = f"""# A page

```bash
echo one > order.txt
```

Shown output, not run:

```text
$ this is output
```

<!-- doc-test: skip needs a GPU (nvidia-smi) -->
```bash
echo skipped >> order.txt
```

<!-- doc-test: background {port} -->
```bash
python -m http.server {port} --bind 127.0.0.1
```

```python
import urllib.request
with open("order.txt", "a") as f:
    f.write("two " + str(urllib.request.urlopen("http://127.0.0.1:{port}/order.txt").status) + "\\n")
```
"""
    blocks, problems = parse_page(page, "page.md")
    assert problems == []
    assert [(b.line, b.lang, b.marker) for b in blocks] == [
        (3, "bash", None), (9, "text", None), (14, "bash", ("skip", "needs a GPU (nvidia-smi)")), (19, "bash", ("background", str(port))),
        (23, "python", None),
    ]
    runner = PageRunner(tmp_path / "work", tmp_path / "logs", clean_env())
    assert runner.run(blocks) == ["ran", "shown", "skipped: needs a GPU (nvidia-smi)", "background", "ran"]
    assert (tmp_path / "work" / "order.txt").read_text() == "one\ntwo 200\n"
    assert runner_servers_gone(port), f"the background server on {port} still answers after the page"

    failing = "# P\n\n```bash\necho fine\n```\n\n```bash\necho to-stdout; echo the-error-line >&2; false\necho never\n```\n"
    with pytest.raises(AssertionError) as err:
        PageRunner(tmp_path / "work2", tmp_path / "logs2", clean_env()).run(parse_page(failing, "p.md")[0])
    message = str(err.value)
    assert message.startswith("p.md:7: the ```bash block exited with status 1")
    assert "echo to-stdout; echo the-error-line >&2; false" in message and "the-error-line" in message
    assert not (tmp_path / "work2" / "never").exists()


def runner_servers_gone(port: int, within_s: float = 10) -> bool:
    deadline = time.monotonic() + within_s
    while _port_open(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_bad_markers_and_hidden_commands_are_reported():
    page = """
<!-- doc-test: skip -->
```bash
litgpt-clone generate x
```

<!-- doc-test: skip   -->
```python
print(1)
```

<!-- doc-test: background -->
```bash
litgpt-clone serve x
```

<!-- doc-test: setup -->
```bash
echo hidden
```

<!-- doc-test: skip needs a GPU -->

```sh
litgpt-clone models
```

```console
$ litgpt-clone models
pythia-14m
```

  ```bash
  echo indented blocks run too
  ```
"""
    blocks, problems = parse_page(page, "p.md")
    for b in blocks:
        problems += block_problems(b)
    text = "\n".join(problems)
    assert "p.md:3: `doc-test: skip` needs a reason" in text and "p.md:8: `doc-test: skip` needs a reason" in text
    assert "p.md:13: `doc-test: background` needs the port" in text
    assert "p.md:18: unknown doc-test marker 'setup'" in text
    assert "p.md:22: a doc-test marker must be on the line right before a fenced block" in text
    assert "p.md:24: ```sh is not run" in text
    assert "p.md:28: a ```console block shows a command ('$ litgpt-clone models')" in text
    assert blocks[-1].runs and blocks[-1].code == "echo indented blocks run too\n"
    assert len(problems) == 7, text


def test_line_numbers_survive_control_characters_in_shown_output():
    """Generated text pasted into a page may hold \\x1c-\\x1e or \\x85, which str.splitlines() breaks lines on."""
    page = "```text\nnoise \x1d\x1e\x85 more\n```\n\n```bash\necho hi\n```\n"
    blocks, problems = parse_page(page, "p.md")
    assert problems == [] and [(b.line, b.lang) for b in blocks] == [(1, "text"), (5, "bash")]


def test_a_block_past_its_time_limit_fails_and_leaves_nothing_running(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "BLOCK_TIMEOUT_S", 2)
    page = "```bash\nsleep 60 &\necho $! > child.pid\nwait\n```\n"
    with pytest.raises(AssertionError, match=r"p.md:1: the ```bash block did not finish in 2 s"):
        PageRunner(tmp_path / "work", tmp_path / "logs", clean_env()).run(parse_page(page, "p.md")[0])
    child = int((tmp_path / "work" / "child.pid").read_text())
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().split(")")[-1].split()[0] == "Z", "the block's background child survived"
