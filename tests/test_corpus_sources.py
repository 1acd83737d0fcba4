"""Sources of ``prepare code``: git HEAD through git itself, folders that never leave their root, archives, layouts;
and Linguist language detection accuracy on files of known languages."""

import hashlib
import json
import os
import sysconfig
import tarfile
import io
import zipfile
from pathlib import Path

import pytest

import corpus_fixture as cf
from litgpt_clone.corpus import language
from litgpt_clone.corpus.sources import SourceError, open_sources, repo_name_from_url, walk_folder

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
    (root / "alias").symlink_to(root / "src" / "inner")  # inside: followed
    (root / "main_alias.py").symlink_to("src/main.py")
    (root / "src" / "inner" / "back").symlink_to("../..")  # a folder link to an ancestor
    (root / "self").symlink_to("self")
    (root / "dangling.py").symlink_to(root / "nowhere.py")
    os.mkfifo(root / "fifo")
    entries = {e.path: e for e in walk_folder(root, max_file_size=100)}
    assert {p: e.skip for p, e in entries.items()} == {
        "alias/back": "symlink_loop", "alias/x.py": None, "dangling.py": "symlink_dangling", "fifo": "not_regular_file",
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
    root = tmp_path / "proj"
    for rel in ["a.py", "corpus/v1/files.jsonl", "corpus/.lock", "sub/corpus_not_out/b.py"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x = 1\n")
    (root / "link_to_out").symlink_to(root / "corpus")
    (root / "link_into_out.json").symlink_to(root / "corpus" / "v1" / "files.jsonl")
    [repo] = open_sources([root], "repo", CAP, skip=[root / "corpus"])
    assert [e.path for e in repo.entries] == ["a.py", "sub/corpus_not_out/b.py"]
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
