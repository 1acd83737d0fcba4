"""Where ``prepare code`` reads repositories from: local git repositories, plain folders and tar/zip archives.

Each source gives one or more :class:`Repository` objects. A repository first lists its files (:class:`FileEntry`,
sorted by path, each with its size and, when it cannot be read, the reason), then reads the bytes of the entries
asked for. Nothing is ever extracted to disk, and nothing outside a source is read:

- git (a folder with ``.git``): the files of the ``HEAD`` commit, listed by ``git ls-tree -r -l HEAD`` and read by one
  ``git cat-file --batch`` process; the name is ``owner/repo`` from the ``origin`` remote URL, else the folder name.
  Symlinks (mode 120000), submodules and blobs the repository lacks (a partial clone's: "missing_object", never
  fetched) are listed as skipped. A repository without commits is empty. Git runs no program the repository's config
  names, and ignores the system's and the user's config. Everything git reads must be inside the folder: a ``.git``
  link or ``gitdir:`` file, or a ``commondir``, naming a folder outside it ("git_outside_root"), a link, FIFO or
  device inside the git folder ("git_special_file": git would follow the link, wait on the FIFO), objects borrowed
  through ``objects/info/alternates`` ("git_alternates", even from inside the folder), or a config that includes
  another file ("git_config_include": git reads it wherever it is, a FIFO or ``/dev/tty`` included) or that git
  cannot parse ("git_config_invalid") make the folder read as a plain folder, with ``.git`` listed as skipped for
  that reason.
- folder: walked without leaving its root. A symlink is followed only when its target, resolved, is inside the
  root; one that resolves outside is skipped ("symlink_outside_root"), as is one that loops ("symlink_loop": a
  cycle of links, or a link to a folder that contains it). Each folder is walked once, under its own path: a link
  to a folder walked already is skipped ("symlink_duplicate_folder"); a folder reached only through links is walked
  under the first one's path.
  FIFOs, sockets and devices are never opened. Files are read long after they are listed: one that is no longer the
  regular file listed (a link, a FIFO or another file put in its place) is not read.
- archive (``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``, ``.zip``): members are read in memory, in
  the order the archive holds them (``ArchiveReader``); links (symbolic: "symlink", hard: "hardlink") and absolute
  or ``..`` member names are skipped. A single top-level folder (GitHub's ``repo-<sha>/``) is dropped from paths. Of
  several members with one path only the last is read, as extracting would leave it; the others are skipped
  ("duplicate_path"). An archive of more than ``MAX_ARCHIVE_MEMBERS`` members is refused (``SourceError``).

``exclude`` patterns (shell-style, ``*`` also crosses ``/``) leave out of the corpus every file whose path in its
repository, or any folder above it, matches one: ``["site-packages", "*__pycache__"]``. Excluded files are not in
``Repository.entries`` but in ``Repository.excluded``, whose license files are still read to detect the repository's
licenses (``--exclude '["*.txt"]'`` must not hide a ``LICENSE.txt``). A folder that matches is not walked: its
license files apply only to the files under it, all excluded.

``skip`` names folders never read, wherever they are inside a source: the build's own ``out_dir`` (its versions,
cache and lock would otherwise become corpus files, and change at every build), also the files committed under it in
a git source. A source that *is* one of them is refused.

Paths are text: bytes of a file name that are not UTF-8 are written as ``\\xNN`` (``caf\\xe9.py``), Python's
``backslashreplace``. The file is kept, as The Stack v2 keeps every file of a repository snapshot whatever its name;
only its recorded path is escaped (the JSON outputs are UTF-8).

Layouts: with ``layout="repo"`` each source is one repository; with ``layout="owner/repo"`` a folder or archive
holds ``<owner>/<repo>/...``, and each such folder that is a git repository is read through git.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import subprocess
import tarfile
import weakref
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Literal, Optional, Sequence, Union

Layout = Literal["repo", "owner/repo"]
SKIP_DIRS = {".git", ".hg", ".svn"}
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")
MAX_ARCHIVE_MEMBERS = 1_000_000  # ~0.7 KB of memory each while listed; a 1.3 MB tar.xz of empty files holds that many


class SourceError(RuntimeError):
    """A source that cannot be read at all; the message names it and the fix."""


@dataclass
class FileEntry:
    """One file of a repository: its POSIX path inside the repository, its size, and why it is skipped (or None)."""

    path: str
    size: Optional[int]
    skip: Optional[str] = None
    ref: object = None  # what the reader needs: a git object id, an absolute path, an archive member
    mtime_ns: Optional[int] = None  # folders only: the file's modification time, part of ``Repository.fingerprint``
    file_id: Optional[tuple[int, int]] = None  # folders only: (st_dev, st_ino) when listed; what is read must be it
    offset: Optional[int] = None  # archives only: where the member lies in the archive (the order members are read in)


@dataclass
class Repository:
    """A repository: its name (``owner/repo`` or ``repo``), where it came from, its commit and its files."""

    name: str
    source: str
    kind: Literal["git", "folder", "archive"]
    entries: list[FileEntry]
    commit: Optional[str] = None
    commit_time: Optional[int] = None
    reader: Callable[[list[FileEntry]], Iterator[Union[bytes, OSError]]] = field(default=None, repr=False)
    excluded: list[FileEntry] = field(default_factory=list)  # left out by ``exclude``; read only for license detection

    def read(self, entries: list[FileEntry]) -> Iterator[Union[bytes, OSError]]:
        """The bytes of each entry in order, or the ``OSError`` that reading it raised."""
        return self.reader(entries)

    def read_order(self) -> list[int]:
        """Positions in ``entries`` in the order they are best read: an archive's in member order (its compressed
        stream is then read forward once, see ``ArchiveReader``), the others' as listed."""
        return sorted(range(len(self.entries)), key=lambda i: self.entries[i].offset or 0)

    def fingerprint(self) -> Union[str, list, None]:
        """What changes when the repository's files can have changed, cheap to get: a git repository's commit, an
        archive's size and modification time, a folder's sorted (path, size, mtime_ns, skip) list (excluded files
        too: their license files count)."""
        if self.kind == "git":
            return self.commit
        if self.kind == "archive":
            st = os.stat(self.source)
            return [st.st_size, st.st_mtime_ns]
        return [[e.path, e.size, e.mtime_ns, e.skip] for e in sorted(self.entries + self.excluded, key=lambda e: e.path)]


# --------------------------------------------------------------------------- git
# A source's git folder comes from someone else: git must not run a program it names. Only the repository's own
# config is read (not the system's or the user's, where ``log.showSignature`` or ``safe.directory`` would change what
# these commands do), options that run programs are switched off on the command line (which wins over the
# repository's config), no transport is allowed (a partial clone's missing objects would be fetched from the remote
# it names, with the ``uploadpack`` program it names), and no ``GIT_*`` variable of ours points git elsewhere.
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_ALLOW_PROTOCOL": "none", "GIT_NO_LAZY_FETCH": "1"}
GIT_OPTIONS = ("-c", "core.fsmonitor=false", "-c", "log.showSignature=false",
               "-c", "safe.directory=*")  # a repository owned by another user is read too: its config runs nothing


def _git_command(git_dir: str, *args: str) -> tuple[list[str], dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | GIT_ENV
    return ["git", "--no-pager", "--git-dir", git_dir, *GIT_OPTIONS, *args], env  # (a pager's config is read with includes)


def _git(git_dir: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    command, env = _git_command(git_dir, *args)
    proc = subprocess.run(command, capture_output=True, env=env)
    if check and proc.returncode != 0:
        raise SourceError(f"git {' '.join(args)} failed in {git_dir}: {proc.stderr.decode(errors='replace').strip()}")
    return proc


def repo_name_from_url(url: str) -> Optional[str]:
    """``owner/repo`` of a remote URL (https, ssh, scp-like ``git@host:owner/repo.git`` or a path), or None."""
    url = url.strip().rstrip("/")
    url = re.sub(r"\.git$", "", url)
    parts = [p for p in re.split(r"[/:]", url) if p]
    if len(parts) < 2:
        return None
    return f"{parts[-2]}/{parts[-1]}"


def is_git_repository(path: Path) -> bool:
    """A work tree's root: ``.git`` is a repository folder (it has ``HEAD``) or a file (worktrees, submodules)."""
    dot_git = Path(path) / ".git"
    return dot_git.is_file() or (dot_git / "HEAD").is_file()


def _has_special_file(folder: str) -> bool:
    """Whether anything under ``folder`` is a link, a FIFO (git would wait on it for ever), a socket or a device."""
    folders = [folder] if os.path.isdir(folder) else []  # (none: git finds no repository there, which reads as empty)
    while folders:  # (not recursive: a git folder from someone else can be nested deeper than Python's stack)
        with os.scandir(folders.pop()) as items:
            for item in items:
                if item.is_dir(follow_symlinks=False):
                    folders.append(item.path)
                elif not item.is_file(follow_symlinks=False):
                    return True
    return False


def _pointer(file: str, prefix: str = "") -> str:
    """The folder a ``.git`` file (``gitdir: <folder>``) or a ``commondir`` file names, relative to the file's folder."""
    with open(file, "rb") as f:
        text = f.read(4096).decode("utf-8", errors="replace").strip()
    return os.path.realpath(os.path.join(os.path.dirname(file), text.removeprefix(prefix).strip()))


def _unsafe_git_folder(folder: str, root: str) -> Optional[str]:
    if not _inside(folder, root):
        return "git_outside_root"
    return "git_special_file" if _has_special_file(folder) else None


def git_folder(path: Path) -> tuple[Optional[str], Optional[str]]:
    """``(git folder, None)`` for the work tree at ``path`` when everything git reads of it is inside ``path``, else
    ``(None, why)``: "git_outside_root" (``.git`` is a link or a ``gitdir:`` file, or the git folder has a
    ``commondir``, naming a folder outside), "git_special_file" (a link, FIFO, socket or device in the git folder),
    "git_alternates" (objects borrowed from another repository through ``objects/info/alternates``),
    "git_config_include" or "git_config_invalid" (``_config_include``)."""
    root = os.path.realpath(path)
    git_dir = os.path.realpath(os.path.join(root, ".git"))
    if _inside(git_dir, root) and os.path.isfile(git_dir):
        git_dir = _pointer(git_dir, "gitdir:")
    if reason := _unsafe_git_folder(git_dir, root):
        return None, reason
    common = os.path.join(git_dir, "commondir")  # a linked worktree's: the folder with its objects and refs
    common = _pointer(common) if os.path.isfile(common) else git_dir
    if common != git_dir and (reason := _unsafe_git_folder(common, root)):
        return None, reason
    if os.path.isfile(alternates := os.path.join(common, "objects", "info", "alternates")) and os.path.getsize(alternates):
        return None, "git_alternates"
    return (None, reason) if (reason := _config_include(git_dir)) else (git_dir, None)


def _config_include(git_dir: str) -> Optional[str]:
    """"git_config_include" when the repository's config includes another file (``include.path``,
    ``includeIf.<condition>.path``), which git reads wherever it is (a FIFO in the work tree, ``/dev/tty``: git waits
    for ever) and which no option switches off for the commands that read a repository; "git_config_invalid" when
    git cannot parse the config (an include before the bad line would still be read)."""
    listing = _git(git_dir, "config", "--no-includes", "--name-only", "--list", "-z", check=False)
    if listing.returncode != 0:
        return "git_config_invalid"
    keys = listing.stdout.decode("utf-8", errors="replace").split("\0")
    return "git_config_include" if any(k.startswith(("include.", "includeif.")) for k in keys) else None


def _commit_time(commit_object: bytes) -> Optional[int]:
    """The committer time of a raw commit object (read with ``cat-file``: ``show``/``log`` may verify a signature by
    running ``gpg.program``), or None when the line is malformed."""
    for line in commit_object.split(b"\n\n", 1)[0].split(b"\n"):
        if line.startswith(b"committer "):  # committer <name> <<email>> <time> <zone>
            parts = line.split(b" ")
            return int(parts[-2]) if len(parts) > 3 and parts[-2].isdigit() else None
    return None


def git_repository(path: Path, git_dir: str, max_file_size: int, name: Optional[str] = None, skip: Sequence[Path] = ()) -> Repository:
    """The ``HEAD`` commit of the git repository at ``path``, whose git folder (checked by ``git_folder``) is ``git_dir``,
    without the files committed under a ``skip`` folder in it (an ``--out_dir`` inside the work tree)."""
    path = Path(path)
    skipped = _folders_inside(path, skip)
    if name is None:
        origin = _git(git_dir, "config", "--no-includes", "--get", "remote.origin.url", check=False).stdout.decode().strip()
        name = (repo_name_from_url(origin) if origin else None) or path.resolve().name
    head = _git(git_dir, "rev-parse", "--verify", "-q", "HEAD^{commit}", check=False)
    if head.returncode != 0:  # no commits yet
        return Repository(name, str(path), "git", [], reader=lambda entries: iter(()))
    commit = head.stdout.decode().strip()
    commit_time = _commit_time(_git(git_dir, "cat-file", "commit", commit).stdout)
    listing = _git(git_dir, "ls-tree", "-r", "-l", "-z", "--full-tree", commit).stdout
    entries = []
    for item in listing.split(b"\0"):
        if not item:
            continue
        meta, name_bytes = item.split(b"\t", 1)
        mode, kind, oid, size = meta.decode().split()
        file_path = name_bytes.decode("utf-8", errors="backslashreplace")
        if any(file_path.startswith(folder) for folder in skipped):
            continue
        if kind == "commit":
            entries.append(FileEntry(file_path, None, "submodule"))
        elif not size.isdigit():  # "BAD": not in the repository (a partial clone's blob, never fetched)
            entries.append(FileEntry(file_path, None, "missing_object"))
        elif mode == "120000":
            entries.append(FileEntry(file_path, int(size), "symlink"))
        elif int(size) > max_file_size:
            entries.append(FileEntry(file_path, int(size), "too_large"))
        else:
            entries.append(FileEntry(file_path, int(size), None, oid))
    entries.sort(key=lambda e: e.path)
    return Repository(name, str(path), "git", entries, commit, commit_time, reader=lambda es: _cat_files(git_dir, es))


def _folders_inside(path: Path, folders: Sequence[Path]) -> list[str]:
    """The ``folders`` that are inside ``path``, as paths relative to it ending in ``/``."""
    root = os.path.realpath(path)
    inside = [os.path.realpath(f) for f in folders]
    return [text_path(os.path.relpath(f, root)).replace(os.sep, "/") + "/" for f in inside if f != root and _inside(f, root)]


def _cat_files(git_dir: str, entries: list[FileEntry]) -> Iterator[Union[bytes, OSError]]:
    """Blob contents through one ``git cat-file --batch``: a request, then its whole answer, one at a time."""
    if not entries:
        return
    command, env = _git_command(git_dir, "cat-file", "--batch")
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        for entry in entries:
            proc.stdin.write(f"{entry.ref}\n".encode())
            proc.stdin.flush()
            header = proc.stdout.readline().split()
            if len(header) != 3:
                yield OSError(f"git cat-file: {b' '.join(header).decode(errors='replace')}")
                continue
            data = proc.stdout.read(int(header[2]))
            proc.stdout.read(1)  # the newline after the contents
            yield data
    finally:
        proc.stdin.close()
        proc.stdout.close()
        proc.wait()


# --------------------------------------------------------------------------- folders
def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def text_path(name: str) -> str:
    """A file name from the OS (undecodable bytes as surrogates) as text: those bytes written as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def excluded(path: str, patterns: Sequence[str]) -> bool:
    """Whether ``path`` or a folder above it matches one of the shell-style ``patterns``."""
    if not patterns:
        return False
    parts = path.split("/")
    return any(fnmatch.fnmatchcase("/".join(parts[: i + 1]), p) for i in range(len(parts)) for p in patterns)


def walk_folder(root: Path, max_file_size: int, exclude: Sequence[str] = (), skip: Sequence[Path] = ()) -> list[FileEntry]:
    """Every file under ``root`` (sorted by path), following symlinks only while they stay inside ``root``; folders
    that match ``exclude``, and the ``skip`` folders, are not entered (excluded files are listed: ``open_sources``
    sets them apart).

    Each folder is walked once (by ``(st_dev, st_ino)``), whatever links to it: first the folders themselves, then
    the links to folders, so that a file is listed under its own path. A link to a folder walked already is listed
    as skipped: "symlink_loop" when it is inside that folder, else "symlink_duplicate_folder" (following each link
    again made N folders, each with two links to the next, list 2^N paths). Not recursive: a folder from someone
    else can be nested deeper than Python's stack."""
    root_real = os.path.realpath(root)
    skip_real = {os.path.realpath(p) for p in skip}
    skip_ids = {_file_id(p) for p in skip_real if os.path.isdir(p)}
    entries: list[FileEntry] = []
    walked: set[tuple[int, int]] = set()
    folders: list[tuple[str, str]] = [(root_real, "")]  # (real path, path in the repository) still to walk
    links: list[tuple[str, str]] = []  # links to folders inside the root, as (target, path in the repository)
    while folders or links:
        from_link = not folders  # every folder itself first, then the links to folders
        folder, rel = folders.pop() if folders else links.pop(0)
        try:
            folder_id = _file_id(folder)
            if folder_id in walked or folder_id in skip_ids:
                if from_link and folder_id not in skip_ids:
                    entries.append(FileEntry(rel, None, "symlink_duplicate_folder"))
                continue
            walked.add(folder_id)
            items = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            entries.append(FileEntry(rel or ".", None, f"unreadable_folder:{type(err).__name__}"))
            continue
        for item in items:
            rel_path = f"{rel}/{text_path(item.name)}" if rel else text_path(item.name)
            if item.name in SKIP_DIRS:  # VCS internals, whether a folder, a link or a ``gitdir:`` file, are not content
                continue
            if exclude and excluded(rel_path, exclude) and item.is_dir():
                continue
            if item.is_symlink():
                try:
                    target = os.path.realpath(item.path, strict=True)
                except (OSError, RuntimeError) as err:  # ELOOP for a cycle of links, ENOENT when dangling
                    loop = isinstance(err, RuntimeError) or getattr(err, "errno", None) == 40
                    entries.append(FileEntry(rel_path, None, "symlink_loop" if loop else "symlink_dangling"))
                    continue
                if not _inside(target, root_real):
                    entries.append(FileEntry(rel_path, None, "symlink_outside_root"))
                elif any(_inside(target, s) for s in skip_real):
                    continue
                elif not os.path.isdir(target):
                    _list_file(entries, target, rel_path, max_file_size)
                elif _inside(folder, target):  # a link to a folder it is inside of
                    entries.append(FileEntry(rel_path, None, "symlink_loop"))
                else:
                    links.append((target, rel_path))
            elif item.is_dir(follow_symlinks=False):
                folders.append((item.path, rel_path))
            else:
                _list_file(entries, item.path, rel_path, max_file_size)
    entries.sort(key=lambda e: e.path)
    return entries


def _file_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _list_file(entries: list[FileEntry], path: str, rel_path: str, max_file_size: int) -> None:
    """The file at ``path`` as ``rel_path``: listed to be read, or skipped when it is no regular file or too large."""
    try:
        st = os.stat(path)
    except OSError as err:
        entries.append(FileEntry(rel_path, None, f"unreadable:{type(err).__name__}"))
        return
    if not stat.S_ISREG(st.st_mode):
        entries.append(FileEntry(rel_path, None, "not_regular_file"))
    elif st.st_size > max_file_size:
        entries.append(FileEntry(rel_path, st.st_size, "too_large"))
    else:
        entries.append(FileEntry(rel_path, st.st_size, None, path, st.st_mtime_ns, (st.st_dev, st.st_ino)))


def _read_listed(entry: FileEntry, max_file_size: int) -> bytes:
    """The bytes of the file listed as ``entry``. It is read long after the listing, and the path may be something else
    by then: it is opened without following a link or waiting for a FIFO's writer, and read only if it is still the
    regular file listed (a file swapped in, or a folder above it swapped for a link, is another inode)."""
    fd = os.open(entry.ref, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != entry.file_id:
            raise OSError("not the file listed: replaced while the build ran")
        data = f.read(max_file_size + 1)
    if len(data) > max_file_size:
        raise OSError("grew past the size limit while read")
    return data


def _read_paths(entries: list[FileEntry], max_file_size: int) -> Iterator[Union[bytes, OSError]]:
    for entry in entries:
        try:
            data = _read_listed(entry, max_file_size)
        except OSError as err:
            data = err
        yield data


def folder_repository(path: Path, name: str, max_file_size: int, exclude: Sequence[str] = (), skip: Sequence[Path] = ()) -> Repository:
    entries = walk_folder(path, max_file_size, exclude, skip)
    return Repository(name, str(path), "folder", entries, reader=lambda es: _read_paths(es, max_file_size))


# --------------------------------------------------------------------------- archives
def is_archive(path: Path) -> bool:
    return Path(path).is_file() and str(path).lower().endswith(ARCHIVE_SUFFIXES)


def archive_stem(path: Path) -> str:
    name = Path(path).name
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _safe_member_name(name: str) -> Optional[str]:
    """The member's normalised POSIX path, or None when it is absolute or climbs with ``..``."""
    name = text_path(name).replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return None
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _archive_members(path: Path, max_file_size: int) -> list[FileEntry]:
    """Every member of the archive as an entry whose ``ref`` is the member (``TarInfo`` or ``ZipInfo``: a name can be
    given to several members, and looking it up gives the last) and whose ``offset`` is where it lies in the archive.
    At most ``MAX_ARCHIVE_MEMBERS``: each takes memory while listed, and a small compressed archive can hold millions."""
    entries = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            _check_member_count(path, len(infos))
            for info in infos:
                if not info.is_dir():
                    link = "symlink" if stat.S_ISLNK(info.external_attr >> 16) else None
                    entries.append(_member_entry(info.filename, info.header_offset, info, info.file_size, link, max_file_size))
        return entries
    try:
        with tarfile.open(path, "r:*") as tf:
            for count, member in enumerate(tf, 1):  # (not getmembers(): the count is checked while listing)
                _check_member_count(path, count)
                if member.isdir():
                    continue
                entries.append(_member_entry(member.name, member.offset, member, member.size, _not_file(member), max_file_size))
    except (tarfile.TarError, OSError, EOFError) as err:
        reason = " ".join(str(err).split())  # (tarfile lists every compression it tried, one line each)
        raise SourceError(f"cannot read the archive {path} ({reason}): give a tar or zip archive") from err
    return entries


def _not_file(member: tarfile.TarInfo) -> Optional[str]:
    if member.issym() or member.islnk():
        return "symlink" if member.issym() else "hardlink"
    return None if member.isreg() else "not_regular_file"


def _check_member_count(path: Path, count: int) -> None:
    if count > MAX_ARCHIVE_MEMBERS:
        raise SourceError(f"the archive {path} has more than {MAX_ARCHIVE_MEMBERS:,} members, more than prepare code lists"
                          " in memory: split it into smaller archives (one per repository)")


def _member_entry(name: str, offset: int, member: object, size: int, not_file: Optional[str], max_file_size: int) -> FileEntry:
    """The entry of one archive member; ``not_file``: why a member that is no regular file is skipped (or None)."""
    safe = _safe_member_name(name)
    if safe is None:
        return FileEntry(name, None, "unsafe_path", offset=offset)
    if not_file:
        return FileEntry(safe, None, not_file, offset=offset)
    if size > max_file_size:
        return FileEntry(safe, size, "too_large", offset=offset)
    return FileEntry(safe, size, None, member, offset=offset)


class ArchiveReader:
    """Reads the members of one archive through one open file, kept open between calls (the repositories of an
    archive share it; it is closed when they are gone). A compressed tar stream reads only forward: a member before
    the last one read means decompressing the archive again from its start, so the members asked for are read in
    archive order, and given back in the order asked (reading a .tar.gz's 3,000 members in reverse order took 570 s
    instead of 0.3 s); ``Repository.read_order`` asks for them in that order."""

    def __init__(self, path: Path, max_file_size: int) -> None:
        self.path, self.max_file_size = Path(path), max_file_size
        self.archive: Union[tarfile.TarFile, zipfile.ZipFile, None] = None
        self._close = None

    def __call__(self, entries: list[FileEntry]) -> Iterator[Union[bytes, OSError]]:
        ready: dict[int, Union[bytes, OSError]] = {}
        given = 0
        for i in sorted(range(len(entries)), key=lambda i: entries[i].offset or 0):
            ready[i] = self._read(entries[i])
            while given in ready:
                yield ready.pop(given)
                given += 1

    def _read(self, entry: FileEntry) -> Union[bytes, OSError]:
        try:
            if self.archive is None:
                zipped = zipfile.is_zipfile(self.path)
                self.archive = zipfile.ZipFile(self.path) if zipped else tarfile.open(self.path, "r:*")
                self._close = weakref.finalize(self, self.archive.close)
            if isinstance(self.archive, zipfile.ZipFile):
                with self.archive.open(entry.ref) as f:
                    data = f.read(self.max_file_size + 1)
            else:
                data = self.archive.extractfile(entry.ref).read(self.max_file_size + 1)
        except (OSError, tarfile.TarError, zipfile.BadZipFile, RuntimeError, EOFError) as err:
            if self._close is not None:  # opened again for the next member: the stream may be anywhere now
                self._close()
                self.archive = self._close = None
            return OSError(str(err))
        return data if len(data) <= self.max_file_size else OSError("larger than its header says")


def archive_repositories(path: Path, layout: Layout, max_file_size: int) -> list[Repository]:
    members = _archive_members(path, max_file_size)
    groups: dict[str, list[FileEntry]] = {}
    if layout == "repo":
        tops = {e.path.split("/", 1)[0] for e in members}
        strip = len(tops) == 1 and all("/" in e.path for e in members)
        for e in members:
            if strip:
                e.path = e.path.split("/", 1)[1]
        groups[archive_stem(path)] = members
    else:
        for e in members:
            parts = e.path.split("/", 2)
            if len(parts) < 3:
                continue  # files beside the owner folders belong to no repository
            e.path = parts[2]
            groups.setdefault(f"{parts[0]}/{parts[1]}", []).append(e)
    repos, reader = [], ArchiveReader(path, max_file_size)
    for name, entries in sorted(groups.items()):
        entries.sort(key=lambda e: e.path)
        last = {e.path: e for e in entries if not e.skip}
        for e in entries:  # one path, several members: extracting would leave the last, so only that one is read
            if not e.skip and last[e.path] is not e:
                e.skip = "duplicate_path"
        repos.append(Repository(name, str(path), "archive", entries, reader=reader))
    return repos


# --------------------------------------------------------------------------- all sources
def open_source(source: Union[str, Path], layout: Layout, max_file_size: int, exclude: Sequence[str] = (),
                skip: Sequence[Path] = ()) -> list[Repository]:
    """The repositories of one source (a git repository, a folder or an archive), never entering the ``skip`` folders."""
    path = Path(source)
    if is_archive(path):
        return archive_repositories(path, layout, max_file_size)
    if not path.is_dir():
        raise SourceError(f"source {path} is not a folder, a git repository or a tar/zip archive: check the path")
    if any(os.path.realpath(path) == os.path.realpath(p) for p in skip):
        raise SourceError(f"source {path} is also the --out_dir: give an --out_dir outside it (one inside a source is skipped when reading)")
    if layout == "repo":
        return [work_tree_repository(path, path.resolve().name, max_file_size, exclude, skip, name_from_origin=True)]
    return [work_tree_repository(repo, f"{text_path(repo.parent.name)}/{text_path(repo.name)}", max_file_size, exclude, skip)
            for repo in owner_repo_folders(path, skip)]


def work_tree_repository(path: Path, name: str, max_file_size: int, exclude: Sequence[str] = (), skip: Sequence[Path] = (),
                         name_from_origin: bool = False) -> Repository:
    """The folder ``path``: its ``HEAD`` commit when it is a git repository that git reads only inside ``path``, else
    its files; a ``.git`` that would make git read outside it is listed as skipped, with why."""
    if not is_git_repository(path):
        return folder_repository(path, name, max_file_size, exclude, skip)
    try:
        git_dir, reason = git_folder(path)
    except OSError as err:
        raise SourceError(f"cannot read the git folder of {path} ({err}): check its permissions") from err
    if git_dir is not None:
        return git_repository(path, git_dir, max_file_size, None if name_from_origin else name, skip)
    repo = folder_repository(path, name, max_file_size, exclude, skip)
    repo.entries = sorted(repo.entries + [FileEntry(".git", None, reason)], key=lambda e: e.path)
    return repo


def owner_repo_folders(path: Path, skip: Sequence[Path] = ()) -> list[Path]:
    """The ``<owner>/<repo>/`` folders of a folder read with ``layout="owner/repo"`` (links and ``skip`` not followed)."""
    skip_real = {os.path.realpath(p) for p in skip}

    def folders(parent: Path) -> list[Path]:
        return sorted(p for p in parent.iterdir() if p.is_dir() and not p.is_symlink() and p.name not in SKIP_DIRS
                      and os.path.realpath(p) not in skip_real)

    return [repo for owner in folders(path) for repo in folders(owner)]


def check_layout(source: Union[str, Path], layout: Layout) -> None:
    """``SourceError`` for a folder that has nothing ``layout`` reads (a folder of files under ``owner/repo``)."""
    path = Path(source)
    if layout == "owner/repo" and path.is_dir() and not is_archive(path) and not owner_repo_folders(path):
        raise SourceError(f"source {source} has no <owner>/<repo>/ folders, which --layout owner/repo reads: use --layout repo for one repository")


def open_sources(sources: list[Union[str, Path]], layout: Layout, max_file_size: int, exclude: Sequence[str] = (),
                 skip: Sequence[Path] = ()) -> list[Repository]:
    """The repositories of all sources, sorted by name, their ``exclude``d files set apart; two sources giving the
    same name is an error. ``skip``: folders never read (the build's ``out_dir``)."""
    repos: dict[str, Repository] = {}
    for source in sources:
        for repo in open_source(source, layout, max_file_size, exclude, skip):
            if exclude:
                repo.excluded = [e for e in repo.entries if excluded(e.path, exclude)]
                repo.entries = [e for e in repo.entries if not excluded(e.path, exclude)]
            if repo.name in repos:
                raise SourceError(
                    f"two sources give the repository name {repo.name!r} ({repos[repo.name].source} and {repo.source}):"
                    " give each repository once, or use --layout owner/repo"
                )
            repos[repo.name] = repo
    return [repos[name] for name in sorted(repos)]
