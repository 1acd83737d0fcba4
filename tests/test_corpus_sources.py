"""Sources of ``prepare code``: git HEAD through git itself, folders that never leave their root, archives, layouts;
and Linguist language detection accuracy on files of known languages."""

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sysconfig
import tarfile
import io
import zipfile
from pathlib import Path

import pytest

import corpus_fixture as cf
from litgpt_clone.corpus import language
from litgpt_clone.corpus.sources import FileEntry, SourceError, open_sources, repo_name_from_url, walk_folder

CAP = 1 << 20


def read_all(repo):
    readable = [e for e in repo.entries if not e.skip]
    return dict(zip((e.path for e in readable), repo.read(readable)))


def test_git_reads_head_commit_through_git(tmp_path):
    repo_dir = cf.git_repo(tmp_path / "r", {"a.py": "x = 1\n", "pkg/b.py": "y = 2\n", "c.txt": "hi\n", "big.bin": b"\0" * 5000},
                           origin="git@github.com:Octo/Cat.git", commits=2)
    (repo_dir / "a.py").write_text("x = 'edited, not committed'\n")
    (repo_dir / "untracked.py").write_text("z = 3\n")
    os.symlink("a.py", repo_dir / "link.py")
    cf.git(repo_dir, "add", "link.py")
    cf.git(repo_dir, "commit", "-q", "-m", "link")
    [repo] = open_sources([repo_dir], "repo", max_file_size=4096)
    assert (repo.name, repo.kind) == ("Octo/Cat", "git")
    assert repo.commit == cf.git(repo_dir, "rev-parse", "HEAD").strip() and repo.commit_time == 1704067200
    assert [e.path for e in repo.entries] == sorted(cf.git(repo_dir, "ls-files").split())
    assert {e.path: e.skip for e in repo.entries if e.skip} == {"big.bin": "too_large", "link.py": "symlink"}
    data = read_all(repo)
    assert data["a.py"] == b"x = 1\n"  # HEAD, not the working tree
    for path, blob in data.items():
        assert hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest() == cf.git(repo_dir, "rev-parse", f"HEAD:{path}").strip()


def test_remote_urls_and_empty_repositories(tmp_path):
    for url, name in [("https://github.com/bigcode/the-stack.git", "bigcode/the-stack"), ("git@github.com:a/b.git", "a/b"),
                      ("ssh://git@host:22/a/b/", "a/b"), ("/srv/git/team/tool.git", "team/tool"), ("x", None)]:
        assert repo_name_from_url(url) == name
    empty_git = tmp_path / "empty_git"
    empty_git.mkdir()
    cf.git(empty_git, "init", "-q")
    (tmp_path / "empty_dir").mkdir()
    repos = open_sources([empty_git, tmp_path / "empty_dir"], "repo", CAP)
    assert [(r.name, r.entries, r.commit) for r in repos] == [("empty_dir", [], None), ("empty_git", [], None)]
    with pytest.raises(SourceError, match="two sources give the repository name"):
        open_sources([tmp_path / "empty_dir", tmp_path / "empty_dir"], "repo", CAP)
    with pytest.raises(SourceError, match="not a folder"):
        open_sources([tmp_path / "missing"], "repo", CAP)


def test_folder_walk_never_leaves_its_root(tmp_path):
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "secret.py").write_text("leak = True\n")
    root = tmp_path / "root"
    (root / "src" / "inner").mkdir(parents=True)
    (root / ".git").mkdir()  # VCS internals are not content (and without HEAD this is read as a folder)
    (root / "src" / "main.py").write_text("print(1)\n")
    (root / "src" / "inner" / "x.py").write_text("x = 1\n")
    (root / "huge.py").write_text("#" * 200)
    (root / "to_outside_dir").symlink_to(outside)
    (root / "to_outside_file.py").symlink_to(outside / "deep" / "secret.py")
    (root / "relative_escape.py").symlink_to("../outside/deep/secret.py")
    (root / "alias").symlink_to(root / "src" / "inner")  # inside: its folder is listed once, under its own path
    (root / "main_alias.py").symlink_to("src/main.py")
    (root / "src" / "inner" / "back").symlink_to("../..")  # a folder link to an ancestor
    (root / "self").symlink_to("self")
    (root / "dangling.py").symlink_to(root / "nowhere.py")
    os.mkfifo(root / "fifo")
    entries = {e.path: e for e in walk_folder(root, max_file_size=100)}
    assert {p: e.skip for p, e in entries.items()} == {
        "alias": "symlink_duplicate_folder", "dangling.py": "symlink_dangling", "fifo": "not_regular_file",
        "huge.py": "too_large", "main_alias.py": None, "relative_escape.py": "symlink_outside_root", "self": "symlink_loop",
        "src/inner/back": "symlink_loop", "src/inner/x.py": None, "src/main.py": None,
        "to_outside_dir": "symlink_outside_root", "to_outside_file.py": "symlink_outside_root",
    }
    real_root = os.path.realpath(root)
    for e in entries.values():
        if e.skip is None:
            assert os.path.realpath(e.ref).startswith(real_root + os.sep)
    [repo] = open_sources([root], "repo", 100)
    assert read_all(repo)["main_alias.py"] == b"print(1)\n"


def test_links_and_depth_cannot_blow_up_a_folder_walk(tmp_path):
    """A folder walk followed each link to a folder again: 12 folders with two links each to the next listed
    2^12 paths for one file (2^30 exhausts any machine). And it was recursive: a folder 1,100 deep ended the build
    with a RecursionError."""
    bomb = tmp_path / "bomb"
    for level in range(13):
        (bomb / f"d{level:02d}").mkdir(parents=True)
    (bomb / "d12" / "leaf.py").write_text("x = 1\n")
    for level in range(12):
        for name in "ab":
            (bomb / f"d{level:02d}" / name).symlink_to(f"../d{level + 1:02d}")
    (bomb / "d00" / "c").symlink_to("../d00/../d05/b")  # the same folder again, through a link to a link
    entries = walk_folder(bomb, CAP)
    assert [(e.path, e.skip) for e in entries if e.skip != "symlink_duplicate_folder"] == [("d12/leaf.py", None)]
    assert len(entries) == 1 + 2 * 12 + 1
    folders = [tmp_path / "deep"]
    for _ in range(1100):  # (not mkdir(parents=True), nor rmtree below: they are recursive too)
        folders.append(folders[-1] / "a")
    for folder in folders:
        folder.mkdir()
    (folders[-1] / "f.py").write_text("y = 2\n")
    try:
        assert [(e.path, e.size) for e in walk_folder(folders[0], CAP)] == [("/".join(["a"] * 1100) + "/f.py", 6)]
    finally:
        (folders[-1] / "f.py").unlink()
        for folder in reversed(folders):
            folder.rmdir()


def _tar(path: Path, members: dict, links: dict = {}):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)


def test_archives_are_read_in_memory_and_never_escape(tmp_path):
    _tar(tmp_path / "proj-v1.tar.gz", {"proj-abc123/a.py": b"a = 1\n", "proj-abc123/../../etc/x.py": b"no\n"},
         {"proj-abc123/l.py": "/etc/passwd"})
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as zf:
        zf.writestr("z/b.rb", "puts 1\n")
        zf.writestr("/abs.py", "no\n")
        zf.writestr("z/big.txt", "x" * 500)
        link = zipfile.ZipInfo("z/link")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
    repos = {r.name: r for r in open_sources([tmp_path / "proj-v1.tar.gz", tmp_path / "z.zip"], "repo", 100)}
    assert set(repos) == {"proj-v1", "z"}
    tar_entries = {e.path: e.skip for e in repos["proj-v1"].entries}
    assert tar_entries == {"../../etc/x.py": "unsafe_path", "a.py": None, "l.py": "symlink"}  # top folder dropped
    assert read_all(repos["proj-v1"]) == {"a.py": b"a = 1\n"}
    assert {e.path: e.skip for e in repos["z"].entries} == {"/abs.py": "unsafe_path", "z/b.rb": None, "z/big.txt": "too_large", "z/link": "symlink"}
    assert read_all(repos["z"]) == {"z/b.rb": b"puts 1\n"}
    assert not list(tmp_path.glob("**/etc"))  # nothing was extracted


def test_hard_links_and_a_corrupt_archive(tmp_path, capsys):
    """A tar hard link was reported as a symlink; a file that is no archive gave tarfile's message over five lines."""
    with tarfile.open(tmp_path / "p.tar", "w") as tf:
        data = b"a = 1\n"
        info = tarfile.TarInfo("a.py")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("b.py")
        link.type, link.linkname = tarfile.LNKTYPE, "a.py"
        tf.addfile(link)
    (repo,) = open_sources([tmp_path / "p.tar"], "repo", 100)
    assert {e.path: e.skip for e in repo.entries} == {"a.py": None, "b.py": "hardlink"}
    (tmp_path / "bad.tar.gz").write_bytes(b"\x00not an archive" * 50)
    with pytest.raises(SourceError) as err:
        open_sources([tmp_path / "bad.tar.gz"], "repo", 100)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"cannot read the archive {tmp_path / 'bad.tar.gz'} (")


def test_owner_repo_layout_folders_archives_and_git(tmp_path):
    tree = tmp_path / "tree"
    (tree / "alice" / "plain").mkdir(parents=True)
    (tree / "alice" / "plain" / "a.py").write_text("a = 1\n")
    cf.git_repo(tree / "bob" / "gitrepo", {"b.py": "b = 2\n"}, origin="https://github.com/someone/else.git")
    _tar(tmp_path / "many.tar", {"carol/tool/c.py": b"c = 3\n", "carol/tool/sub/d.py": b"d = 4\n", "README": b"top\n"})
    repos = open_sources([tree, tmp_path / "many.tar"], "owner/repo", CAP)
    assert [(r.name, r.kind, [e.path for e in r.entries]) for r in repos] == [
        ("alice/plain", "folder", ["a.py"]), ("bob/gitrepo", "git", ["b.py"]), ("carol/tool", "archive", ["c.py", "sub/d.py"])]
    assert repos[1].commit is not None


def test_exclude_patterns(tmp_path):
    root = tmp_path / "lib"
    for rel in ["os.py", "site-packages/pip/x.py", "json/__pycache__/a.pyc", "__pycache__/b.pyc", "json/decoder.py", "test/data.bin"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x = 1\n")
    patterns = ["site-packages", "*__pycache__", "*.bin"]
    [repo] = open_sources([root], "repo", CAP, exclude=patterns)
    assert [e.path for e in repo.entries] == ["json/decoder.py", "os.py"]
    cf.git_repo(tmp_path / "g", {"keep.py": "a = 1\n", "site-packages/drop.py": "b = 2\n"})
    _tar(tmp_path / "t.tar", {"t/keep.py": b"a\n", "t/deep/__pycache__/x.pyc": b"b\n"})
    repos = open_sources([tmp_path / "g", tmp_path / "t.tar"], "repo", CAP, exclude=patterns)
    assert [[e.path for e in r.entries] for r in repos] == [["keep.py"], ["keep.py"]]


def test_excluded_license_files_are_still_read_for_detection(tmp_path):
    """``--exclude '["*.txt"]'`` hid LICENSE.txt from license detection: GPL code became no_license and was kept."""
    from litgpt_clone.corpus.pipeline import _license_texts

    gpl = "GNU GENERAL PUBLIC LICENSE\nVersion 3, 29 June 2007\n"
    files = {"main.py": "print(1)\n", "LICENSE.txt": gpl, "docs/LICENSE": "MIT License\n", "docs/index.py": "x = 1\n"}
    folder = tmp_path / "f"
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    cf.git_repo(tmp_path / "g", files)
    _tar(tmp_path / "t.tar", {f"t/{rel}": text.encode() for rel, text in files.items()})
    repos = open_sources([folder, tmp_path / "g", tmp_path / "t.tar"], "repo", CAP, exclude=["*.txt", "docs"])
    assert [[e.path for e in r.entries] for r in repos] == [["main.py"]] * 3
    # an excluded folder is not walked: its license applies only to files under it, all excluded
    assert [[e.path for e in r.excluded] for r in repos] == [["LICENSE.txt"], ["LICENSE.txt", "docs/LICENSE", "docs/index.py"],
                                                             ["LICENSE.txt", "docs/LICENSE", "docs/index.py"]]
    assert _license_texts(repos[0]) == {"LICENSE.txt": gpl}
    assert _license_texts(repos[1]) == _license_texts(repos[2]) == {"LICENSE.txt": gpl, "docs/LICENSE": "MIT License\n"}


def test_out_dir_inside_a_folder_is_skipped(tmp_path):
    """Also when it is committed: a git source's files under the out_dir were read as corpus files."""
    root = tmp_path / "proj"
    files = ["a.py", "corpus/v1/files.jsonl", "corpus/.lock", "corpus2/c.py", "sub/corpus_not_out/b.py"]
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x = 1\n")
    (root / "link_to_out").symlink_to(root / "corpus")
    (root / "link_into_out.json").symlink_to(root / "corpus" / "v1" / "files.jsonl")
    [repo] = open_sources([root], "repo", CAP, skip=[root / "corpus"])
    assert [e.path for e in repo.entries] == ["a.py", "corpus2/c.py", "sub/corpus_not_out/b.py"]
    git_root = cf.git_repo(tmp_path / "g", {rel: "x = 1\n" for rel in files})
    [repo] = open_sources([git_root], "repo", CAP, skip=[git_root / "corpus"])
    assert (repo.kind, [e.path for e in repo.entries]) == ("git", ["a.py", "corpus2/c.py", "sub/corpus_not_out/b.py"])
    with pytest.raises(SourceError, match="is also the --out_dir"):
        open_sources([root], "repo", CAP, skip=[root])


def test_file_names_that_are_not_utf8_are_kept_with_an_escaped_path(tmp_path):
    """A file named caf\\xe9.py crashed the whole build (UnicodeEncodeError in language.detect)."""
    from litgpt_clone.corpus.pipeline import CorpusConfig, run

    folder, git_dir = tmp_path / "odd", tmp_path / "oddgit"
    for where in (folder, git_dir):
        where.mkdir()
        with open(os.path.join(os.fsencode(where), b"caf\xe9.py"), "wb") as f:
            f.write(b"print('caf\xc3\xa9')\n")
    cf.git(git_dir, "init", "-q")
    cf.git(git_dir, "add", "-A")
    cf.git(git_dir, "commit", "-qm", "odd name")
    repos = open_sources([folder, git_dir], "repo", CAP)
    assert [[e.path for e in r.entries] for r in repos] == [["caf\\xe9.py"], ["caf\\xe9.py"]]
    assert [read_all(r) for r in repos] == [{"caf\\xe9.py": b"print('caf\xc3\xa9')\n"}] * 2
    result = run(CorpusConfig(sources=[str(folder), str(git_dir)]), tmp_path / "out", log=lambda _: None)
    records = [json.loads(line) for line in (result.version_dir / "files.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["repo"], r["path"], r["language"], r["drop_stage"]) for r in records] == [
        ("odd", "caf\\xe9.py", "Python", "exact_dedup"), ("oddgit", "caf\\xe9.py", "Python", None)]  # the copy with a commit kept


LANGUAGE_SAMPLES = {  # extension: (Linguist name, a small program)
    ".c": ("C", '#include <stdio.h>\nint main(void) { printf("%d\\n", 42); return 0; }\n'),
    ".cpp": ("C++", "#include <vector>\nint main() { std::vector<int> v{1, 2}; return v.size(); }\n"),
    ".java": ("Java", "public class Main {\n  public static void main(String[] a) { System.out.println(1); }\n}\n"),
    ".js": ("JavaScript", "const add = (a, b) => a + b;\nconsole.log(add(1, 2));\n"),
    ".ts": ("TypeScript", "export function add(a: number, b: number): number {\n  return a + b;\n}\n"),
    ".go": ("Go", cf.GO), ".rs": ("Rust", cf.RUST), ".rb": ("Ruby", cf.RUBY), ".sh": ("Shell", cf.SHELL),
    ".php": ("PHP", "<?php\nfunction add($a, $b) { return $a + $b; }\necho add(1, 2);\n"),
    ".kt": ("Kotlin", "fun main() {\n    println(listOf(1, 2).sum())\n}\n"),
    ".scala": ("Scala", "object Main extends App {\n  println(List(1, 2).sum)\n}\n"),
    ".lua": ("Lua", "local function add(a, b)\n  return a + b\nend\nprint(add(1, 2))\n"),
    ".hs": ("Haskell", "main :: IO ()\nmain = print (sum [1, 2])\n"),
    ".swift": ("Swift", "func add(_ a: Int, _ b: Int) -> Int { a + b }\nprint(add(1, 2))\n"),
    ".jl": ("Julia", "add(a, b) = a + b\nprintln(add(1, 2))\n"),
    ".cs": ("C#", "using System;\nclass P { static void Main() { Console.WriteLine(1); } }\n"),
    ".dart": ("Dart", "void main() {\n  print([1, 2].reduce((a, b) => a + b));\n}\n"),
    ".css": ("CSS", "body { margin: 0; color: #333; }\n"),
    ".html": ("HTML", "<!DOCTYPE html>\n<html><body><p>hi</p></body></html>\n"),
    ".json": ("JSON", '{"a": [1, 2]}\n'),
    ".yaml": ("YAML", "a:\n  - 1\n  - 2\n"),
    ".toml": ("TOML", "[tool]\nname = \"x\"\n"),
    ".md": ("Markdown", "# Title\n\nSome *text*.\n"),
}


def test_language_accuracy_on_known_extensions():
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    samples = [(str(p.relative_to(stdlib)), p.read_bytes(), "Python") for p in sorted(stdlib.glob("**/*.py"))
               if "site-packages" not in p.parts and p.stat().st_size < 1 << 20][:3000]
    samples += [(f"pkg/file{ext}", code.encode(), name) for ext, (name, code) in LANGUAGE_SAMPLES.items()]
    wrong = [(path, expected, language.detect(path, data).name) for path, data, expected in samples
             if language.detect(path, data).name != expected]
    accuracy = 1 - len(wrong) / len(samples)
    assert len(samples) > 1000 and accuracy >= 0.99, (accuracy, wrong[:10])
    assert all(language.detect(f"x{ext}", code.encode()).name == name for ext, (name, code) in LANGUAGE_SAMPLES.items())
    lang = language.detect("vendor/lib/x.js", b"var a = 1;\n")
    assert (lang.name, lang.type, lang.is_vendor) == ("JavaScript", "programming", True)


# --------------------------------------------------------------------------- hostile sources
def _git_in(path: Path, stdin: bytes, *args: str) -> str:
    return subprocess.run(["git", "-C", str(path), *args], input=stdin, check=True, capture_output=True).stdout.decode().strip()


class Hung(Exception):
    """Not an OSError (TimeoutError is one): the readers turn those into a file's read error."""


@contextlib.contextmanager
def _no_hang(seconds: int = 10):
    """``Hung`` when the block takes longer (waiting on a FIFO for ever, say) instead of hanging the tests."""

    def hang(*_):
        raise Hung(f"still waiting after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _payload(tmp_path: Path) -> tuple[Path, Path]:
    """A program that records that it ran, and where it would record it."""
    ran, program = tmp_path / "ran.txt", tmp_path / "payload.sh"
    program.write_text(f"#!/bin/sh\necho ran >> {ran}\nexit 1\n")
    program.chmod(0o755)
    return program, ran


def test_a_sources_git_config_runs_no_program(tmp_path, monkeypatch):
    """Reading a repository ran programs its own .git/config names: gpg.program (log.showSignature and a signed HEAD,
    through `git show`) and a partial clone's remote.origin.uploadpack (its missing blob fetched from the remote it
    names). A user's ~/.gitconfig with log.showSignature=true made `git show` print gpg's output, read as the time."""
    program, ran = _payload(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(f"[log]\n\tshowSignature = true\n[gpg]\n\tprogram = {program}\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    repo = tmp_path / "evil"
    repo.mkdir()
    cf.git(repo, "init", "-q", "-b", "main")
    blob = _git_in(repo, b"print('hi')\n", "hash-object", "-w", "--stdin")
    tree = _git_in(repo, f"100644 blob {blob}\ta.py\n100644 blob {'1' * 40}\tgone.py\n".encode(), "mktree", "--missing")
    signed = (f"tree {tree}\nauthor a <a@b> 1700000000 +0000\ncommitter a b <a@b> 1700000000 +0000\n"
              "gpgsig -----BEGIN PGP SIGNATURE-----\n \n iQ==\n -----END PGP SIGNATURE-----\n\nmsg\n")
    cf.git(repo, "update-ref", "HEAD", _git_in(repo, signed.encode(), "hash-object", "-t", "commit", "-w", "--stdin"))
    (tmp_path / "remote").mkdir()
    cf.git(tmp_path / "remote", "init", "-q")
    for key, value in [("log.showSignature", "true"), ("gpg.program", program), ("core.fsmonitor", program),
                       ("core.repositoryformatversion", "1"), ("extensions.partialClone", "origin"),
                       ("remote.origin.url", tmp_path / "remote"), ("remote.origin.promisor", "true"),
                       ("remote.origin.uploadpack", program)]:
        cf.git(repo, "config", key, str(value))
    [source] = open_sources([repo], "repo", CAP)
    assert (source.kind, source.commit_time) == ("git", 1700000000)
    assert {e.path: e.skip for e in source.entries} == {"a.py": None, "gone.py": "missing_object"}
    assert read_all(source) == {"a.py": b"print('hi')\n"}
    assert not ran.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the repository to another user")
def test_a_repository_owned_by_another_user_is_read(tmp_path, monkeypatch):
    """With the user's ~/.gitconfig left out, git's safe.directory check must not make it an empty repository."""
    monkeypatch.setenv("HOME", str(tmp_path))
    repo = cf.git_repo(tmp_path / "theirs", {"a.py": "a = 1\n"})
    subprocess.run(["chown", "-R", "65534:65534", str(repo)], check=True)
    [source] = open_sources([repo], "repo", CAP)
    assert (source.kind, read_all(source)) == ("git", {"a.py": b"a = 1\n"})


def test_a_git_folder_outside_the_source_is_not_read(tmp_path):
    """A folder holding only a `.git` file (`gitdir: <another repository>`), a `.git` link, a `commondir`, a link in
    `.git` or an `objects/info/alternates` made git read another repository into the corpus, under its own name."""
    from litgpt_clone.corpus.pipeline import CorpusConfig, run

    private = cf.git_repo(tmp_path / "private", {"creds.py": 'PRIVATE_REPO_SECRET = "hunter2"\n'})
    tree = tmp_path / "tree"
    for folder in ["alice/gitfile", "bob/gitlink", "dave/commondir/.git", "erin/objects_link"]:
        (tree / folder).mkdir(parents=True)
    (tree / "alice/gitfile/.git").write_text(f"gitdir: {private / '.git'}\n")
    (tree / "alice/gitfile/main.py").write_text("print('mine')\n")  # the work tree, inside the source: read
    (tree / "bob/gitlink/.git").symlink_to(private / ".git")
    (tree / "dave/commondir/.git/HEAD").write_text("ref: refs/heads/main\n")  # a linked worktree's git folder
    (tree / "dave/commondir/.git/commondir").write_text(f"{private / '.git'}\n")
    subprocess.run(["cp", "-r", str(private / ".git"), str(tree / "erin/objects_link")], check=True)
    shutil.rmtree(tree / "erin/objects_link/.git/objects")
    (tree / "erin/objects_link/.git/objects").symlink_to(private / ".git/objects")
    cf.git(tree, "clone", "-q", "--shared", "--no-checkout", str(private), "carol/alternates")
    inside = cf.git_repo(tree / "frank/gitfile_inside", {"ok.py": "ok = 1\n"})
    shutil.move(inside / ".git", inside / ".gitstore")  # `.git` a file naming a folder inside the source: read through git
    (inside / ".git").write_text("gitdir: .gitstore\n")

    repos = {r.name: r for r in open_sources([tree], "owner/repo", CAP)}
    assert {name: (r.kind, {e.path: e.skip for e in r.entries}) for name, r in repos.items()} == {
        "alice/gitfile": ("folder", {".git": "git_outside_root", "main.py": None}),
        "bob/gitlink": ("folder", {".git": "git_outside_root"}),
        "carol/alternates": ("folder", {".git": "git_alternates"}),
        "dave/commondir": ("folder", {".git": "git_outside_root"}),
        "erin/objects_link": ("folder", {".git": "git_special_file"}),
        "frank/gitfile_inside": ("git", {"ok.py": None}),
    }
    result = run(CorpusConfig(sources=[str(tree)], layout="owner/repo"), tmp_path / "out", log=lambda _: None)
    assert "hunter2" not in (result.version_dir / "text.jsonl").read_text()
    records = [json.loads(line) for line in (result.version_dir / "files.jsonl").read_text().splitlines()]
    assert {(r["repo"], r["path"]): r["drop_reason"] for r in records} == {
        ("alice/gitfile", ".git"): "git_outside_root", ("alice/gitfile", "main.py"): None,
        ("bob/gitlink", ".git"): "git_outside_root", ("carol/alternates", ".git"): "git_alternates",
        ("dave/commondir", ".git"): "git_outside_root", ("erin/objects_link", ".git"): "git_special_file",
        ("frank/gitfile_inside", "ok.py"): None,
    }


def test_a_fifo_in_a_git_folder_does_not_hang_the_build(tmp_path):
    """git waited for ever on a FIFO in `.git` (here `packed-refs`, read by `rev-parse HEAD`), and on one that
    `.git/config` includes from anywhere (`include.path`, `includeIf.<condition>.path`); an include before a line
    git cannot parse is still read."""
    repo = cf.git_repo(tmp_path / "r", {"a.py": "a = 1\n"})
    os.mkfifo(repo / ".git" / "packed-refs")
    with _no_hang():
        [source] = open_sources([repo], "repo", CAP)
    assert (source.kind, {e.path: e.skip for e in source.entries}) == ("folder", {".git": "git_special_file", "a.py": None})
    os.mkfifo(tmp_path / "outside.fifo")
    for name, config, reason in [("plain", "[include]\n\tpath = ../hang.fifo\n", "git_config_include"),
                                 ("conditional", f'[includeIf "gitdir:/"]\n\tpath = {tmp_path / "outside.fifo"}\n', "git_config_include"),
                                 ("broken", "[include]\n\tpath = ../hang.fifo\n[bad\n", "git_config_invalid")]:
        repo = cf.git_repo(tmp_path / name, {"a.py": "a = 1\n"})
        os.mkfifo(repo / "hang.fifo")
        with open(repo / ".git" / "config", "a") as f:
            f.write(config)
        with _no_hang():
            [source] = open_sources([repo], "repo", CAP)
        assert (source.kind, {e.path: e.skip for e in source.entries}) == (
            "folder", {".git": reason, "a.py": None, "hang.fifo": "not_regular_file"}), name


def _bytes_read() -> int:
    """The bytes this process has read from files so far (Linux's ``rchar``)."""
    with open("/proc/self/io") as f:
        return int(f.readline().split()[1])


def test_a_compressed_archive_is_read_once_whatever_its_member_order(tmp_path, monkeypatch):
    """Members were read in path order: each one that lies before the one read last made gzip decompress the archive
    again from its start, so a .tar.gz whose members are in reverse order was read once per member (3,000 members:
    570 s instead of 0.3 s). Also across the read stage's chunks of files."""
    from litgpt_clone.corpus import pipeline

    members = {f"r/m{i:03d}.py": os.urandom(4000) for i in range(150)}  # (random: the archive is as large as its members)
    _tar(tmp_path / "rev.tar.gz", dict(reversed(members.items())))
    size = (tmp_path / "rev.tar.gz").stat().st_size
    [repo] = open_sources([tmp_path / "rev.tar.gz"], "repo", CAP)
    before = _bytes_read()
    assert read_all(repo) == {path[2:]: data for path, data in members.items()}  # asked for in path order
    assert _bytes_read() - before < 1.5 * size  # was ~75x
    monkeypatch.setattr(pipeline, "CHUNK_FILES", 16)
    [repo] = open_sources([tmp_path / "rev.tar.gz"], "repo", CAP)
    before = _bytes_read()
    chunks = [[e.path for e in chunk] for _, chunk in pipeline.read_chunks(repo)]
    assert sum(len(list(repo.read(chunk))) for _, chunk in pipeline.read_chunks(repo)) == 150
    assert _bytes_read() - before < 1.5 * size
    assert chunks[0] == [f"m{i:03d}.py" for i in range(149, 133, -1)] and len(chunks) == 10  # in archive order


def test_an_archive_with_too_many_members_is_refused(tmp_path, monkeypatch):
    """A 250 KB tar.xz of 200,000 empty members took 374 MB to list (a 10 MB one, ~15 GB): members are capped."""
    from litgpt_clone.corpus import sources

    monkeypatch.setattr(sources, "MAX_ARCHIVE_MEMBERS", 50)
    for count in (50, 51):
        _tar(tmp_path / f"t{count}.tar.gz", {f"t/f{i}.py": b"" for i in range(count)})
        with zipfile.ZipFile(tmp_path / f"z{count}.zip", "w") as zf:
            for i in range(count):
                zf.writestr(f"z/f{i}.py", "")
    assert [len(r.entries) for r in open_sources([tmp_path / "t50.tar.gz", tmp_path / "z50.zip"], "repo", CAP)] == [50, 50]
    for name in ("t51.tar.gz", "z51.zip"):
        with pytest.raises(SourceError) as err:
            open_sources([tmp_path / name], "repo", CAP)
        assert str(err.value) == (f"the archive {tmp_path / name} has more than 50 members, more than prepare code lists in"
                                  " memory: split it into smaller archives (one per repository)")


def test_tar_members_are_read_by_member_not_name(tmp_path):
    """A 14-byte `small.py` followed by a hard link `small.py` -> a member over --max_file_size: reading by name gave
    the big member's first max_file_size+1 bytes, kept. Two regular members of one path: the last is read (as
    extracting leaves it), the other listed as duplicate_path."""
    big = b"".join(b"def f_%d(x):\n    return x * %d\n" % (i, i) for i in range(100))
    with tarfile.open(tmp_path / "dup.tar", "w") as tf:
        for name, data, link in [("repo/big_vendor_blob.py", big, None), ("repo/small.py", b"small = 'yes'\n", None),
                                 ("repo/small.py", b"", "repo/big_vendor_blob.py"),
                                 ("repo/twice.py", b"first = 'one'\n", None), ("repo/twice.py", b"second = 'two'\n", None)]:
            info = tarfile.TarInfo(name)
            if link:
                info.type, info.linkname = tarfile.LNKTYPE, link
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    [repo] = open_sources([tmp_path / "dup.tar"], "repo", 100)
    readable = [e for e in repo.entries if not e.skip]
    assert list(zip((e.path for e in readable), repo.read(readable))) == [("small.py", b"small = 'yes'\n"),
                                                                           ("twice.py", b"second = 'two'\n")]
    assert [(e.path, e.size, e.skip) for e in repo.entries] == [
        ("big_vendor_blob.py", len(big), "too_large"), ("small.py", 14, None), ("small.py", None, "hardlink"),
        ("twice.py", 14, "duplicate_path"), ("twice.py", 15, None)]
    with tarfile.open(tmp_path / "dup.tar") as tf:
        big_member = tf.getmember("repo/big_vendor_blob.py")
    [too_long] = repo.read([FileEntry("big_vendor_blob.py", 100, None, big_member)])  # more bytes than the limit
    assert isinstance(too_long, OSError)

    from litgpt_clone.corpus.pipeline import CorpusConfig, run

    result = run(CorpusConfig(sources=[str(tmp_path / "dup.tar")], max_file_size=100), tmp_path / "out", log=lambda _: None)
    kept = [json.loads(line) for line in (result.version_dir / "text.jsonl").read_text().splitlines()]
    assert sorted((r["path"], r["text"]) for r in kept) == [("small.py", "small = 'yes'\n"), ("twice.py", "second = 'two'\n")]
    assert "First version: 2 files kept of 5 read." in (result.version_dir / "CHANGELOG.md").read_text()


def test_a_folder_file_swapped_after_listing_is_not_read(tmp_path):
    """Files are listed first and read much later: one replaced by a link out of the root was followed, a FIFO hung
    the build. What is read must be the regular file listed."""
    (tmp_path / "secret.py").write_text("SECRET = 1\n")
    root = tmp_path / "src"
    root.mkdir()
    for name in ["kept.py", "to_link.py", "to_fifo.py", "to_other.py"]:
        (root / name).write_text("x = 1\n")
    [repo] = open_sources([root], "repo", CAP)
    for name in ["to_link.py", "to_fifo.py"]:
        (root / name).unlink()
    (root / "to_link.py").symlink_to(tmp_path / "secret.py")
    os.mkfifo(root / "to_fifo.py")
    os.link(tmp_path / "secret.py", root / "other.tmp")
    os.replace(root / "other.tmp", root / "to_other.py")  # another file (a hard link to one outside) at the listed path
    listed = {e.path: e for e in repo.entries}
    data = list(repo.read([listed[name] for name in ["kept.py", "to_link.py", "to_other.py"]]))
    assert data[0] == b"x = 1\n" and all(isinstance(d, OSError) for d in data[1:])  # not b"SECRET = 1\n"
    with _no_hang():
        [fifo] = repo.read([listed["to_fifo.py"]])
    assert isinstance(fifo, OSError)
