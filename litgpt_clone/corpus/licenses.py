"""Repository licenses: license files → SPDX ids with ScanCode, propagated to files, classified by ScanCode category.

Detection. The files named like licenses (``LICENSE*``, ``LICENCE*``, ``COPYING*``, ``NOTICE*``, ``UNLICENSE``,
``COPYRIGHT*``, in any folder), every file of a REUSE ``LICENSES/`` folder (``LICENSES/<SPDX-id>.txt``; they license
the folder that holds ``LICENSES``) and the first ``README_HEADER_LINES`` lines of ``README*`` files are matched
against ScanCode's license index (``scancode-toolkit``'s ``licensedcode``: ~2,500 license texts and ~36,000 rules for
notices, references and SPDX-License-Identifier lines; offline). Each detected ScanCode license key becomes its SPDX
id (``LicenseRef-scancode-<key>`` for licenses SPDX does not list); short mentions are dropped when a longer match
exists (``MIN_RULE_TOKENS``). Files get the union of the licenses found in their own folder and every folder above
it (The Stack v2's propagation), plus their own declarations: the ``SPDX-License-Identifier:`` lines in their first
``SPDX_HEADER_LINES`` lines, parsed with ``license-expression`` (``declared_licenses``), so a GPL-headed file in an
MIT repository is GPL too. ScanCode's ``unknown-license-reference`` (a README's "See [LICENSE](LICENSE)") is dropped
when anything else is known for the file (``file_licenses``), as ScanCode resolves such a reference to the file it
names; alone it stays. Licenses stated only in package metadata (``package.json``, ``pyproject.toml``) are not read.

Classification (``license_type``): "no_license" when nothing was detected, "permissive" when every detected license
is permissive, else "non_permissive" (copyleft, proprietary, source-available, and licenses ScanCode cannot name,
such as ``unknown-license-reference`` when nothing else is known, and SPDX ids ScanCode does not know). A license is permissive, as in The Stack v2, when ScanCode's category is
"Permissive" or "Public Domain" or the Blue Oak Council lists it (any rating): that list adds 21 ids ScanCode files
elsewhere, e.g. Artistic-2.0 and Ruby ("Copyleft Limited"), Vim ("Copyleft"), the BSD-3-Clause no-nuclear variants.
``blueoak_list.json`` is the Blue Oak Council's list as published in the npm package ``@blueoak/list`` 15.0.0
(CC0-1.0), unmodified (``BLUE_OAK_SHA256``; the test checks it).

Why ScanCode: it is the maintained, offline, text-matching detector that BigCode's license work is built on, and
its license database carries the category used for the permissive decision; lighter options either only parse
SPDX expressions (``license-expression``, which ScanCode uses for that) or compare a whole file to ~50 texts
(``identify``). Its cost is a ~400 MB index that takes seconds to load, so detections are cached per text
(``DetectionCache``) and the index is loaded only on a cache miss.
"""

from __future__ import annotations

import gc
import hashlib
import json
import re
import warnings
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Literal, Optional

from litgpt_clone.checkpoints.io import write_atomic_text
from litgpt_clone.corpus import seal

LicenseType = Literal["permissive", "no_license", "non_permissive"]
LicensePolicy = Literal["permissive", "strict", "all"]
PERMISSIVE_CATEGORIES = ("Permissive", "Public Domain")
BLUE_OAK_VERSION = "15.0.0"
BLUE_OAK_SHA256 = "367264f5d58d7e2988cb6380538e03e439d30c2e738322f853ed4e9cad2d15be"
LICENSE_FILE = re.compile(r"^(licen[cs]e|copying|notice|unlicense|copyright)([._-].*)?$", re.IGNORECASE)
README_FILE = re.compile(r"^readme([._-].*)?$", re.IGNORECASE)
README_HEADER_LINES = 100
REUSE_FOLDER = "LICENSES"
"""The REUSE spec's folder of license texts (``LICENSES/<SPDX-id>.txt``): every file in it is a license file of the
folder that holds ``LICENSES``."""
SPDX_HEADER_LINES = 30
SPDX_LINE = re.compile(r"SPDX-License-Identifier:[ \t]*([A-Za-z0-9.+:() \t-]*)", re.IGNORECASE)
UNKNOWN_REFERENCE = "LicenseRef-scancode-unknown-license-reference"
MAX_LICENSE_TEXT = 256 * 1024
MIN_RULE_TOKENS = 6
"""Detections made only of rules shorter than this (``the GPL``, ``MIT``) count only when a text has nothing longer:
in a license file beside a full license they are mentions of other licenses (Python's LICENSE says which releases
are "GPL-compatible"); alone, as in ``License: MIT``, they are the declaration."""


def license_text(path: str, text: str) -> Optional[str]:
    """The part of the file at ``path`` searched for licenses: a license file whole, a README's header, else None."""
    name = PurePosixPath(path).name
    if LICENSE_FILE.match(name) or PurePosixPath(path).parent.name == REUSE_FOLDER:
        return text[:MAX_LICENSE_TEXT]
    if README_FILE.match(name):
        return "\n".join(text.splitlines()[:README_HEADER_LINES])
    return None


def license_parts(texts: dict[str, str]) -> dict[str, str]:
    """``license_text`` of each ``path -> text`` that has one with something in it (the texts ScanCode sees)."""
    parts = {path: license_text(path, text) for path, text in texts.items()}
    return {path: part for path, part in sorted(parts.items()) if part is not None and part.strip()}


def _scancode():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # typecode warns that it uses the system libmagic
            from licensedcode import cache
            from licensedcode.detection import detect_licenses
    except ImportError as err:
        raise ImportError("prepare code needs scancode-toolkit-mini: pip install 'litgpt_clone[corpus]'") from err
    return cache, detect_licenses


def scancode_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for name in ("scancode-toolkit-mini", "scancode-toolkit"):
        try:
            return f"{name}=={version(name)}"
        except PackageNotFoundError:
            continue
    return "scancode-toolkit: not installed"


@lru_cache(maxsize=1)
def _categories() -> dict[str, str]:
    """SPDX id (and ScanCode's LicenseRef) → ScanCode category, for every license in ScanCode's database."""
    cache, _ = _scancode()
    out = {}
    for key, lic in cache.get_licenses_db().items():
        out[f"LicenseRef-scancode-{key}"] = lic.category
        for spdx in [lic.spdx_license_key, *(lic.other_spdx_license_keys or [])]:
            if spdx:
                out.setdefault(spdx, lic.category)
    return out


def category(spdx_id: str) -> Optional[str]:
    """ScanCode's category of an SPDX id ("Permissive", "Copyleft", ...), None when unknown."""
    return _categories().get(spdx_id)


@lru_cache(maxsize=1)  # once per process
def load_index() -> None:
    """Load ScanCode's license index now (seconds; ``detect`` otherwise loads it on first use), e.g. before forking
    worker processes so that they share it.

    Then ``gc.freeze()``: the index is ~1.4M Python objects that live as long as the process; left to the garbage
    collector, every full collection walks them (~1.3 s each) and, in forked workers, writes to their pages, which
    copies the 1.4 GB index into each worker."""
    cache, _ = _scancode()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cache.get_index()
    gc.freeze()


def detect(text: str) -> list[str]:
    """The SPDX ids ScanCode detects in ``text``, sorted; [] when none."""
    load_index()
    cache, detect_licenses = _scancode()
    index, licensing, db = cache.get_index(), cache.get_licensing(), cache.get_licenses_db()
    detections = [d for d in detect_licenses(index=index, query_string=text) if d.license_expression]
    strong = [d for d in detections if max(m.rule.length for m in d.matches) >= MIN_RULE_TOKENS]
    ids: set[str] = set()
    for detection in strong or detections:
        for key in licensing.license_keys(detection.license_expression):
            lic = db.get(key)
            ids.add((lic.spdx_license_key if lic is not None else None) or f"LicenseRef-scancode-{key}")
    return sorted(ids)


@lru_cache(maxsize=1)
def _spdx_categories() -> dict[str, str]:
    """SPDX id → ScanCode category from the copy of ScanCode's license index that ``license-expression`` ships (a
    small JSON file: no need to load ScanCode's database for the ids of ``SPDX-License-Identifier`` lines)."""
    import license_expression

    path = Path(license_expression.__file__).parent / "data" / "scancode-licensedb-index.json"
    out = {}
    for lic in json.loads(path.read_text(encoding="utf-8")):
        for spdx in [lic.get("spdx_license_key"), *(lic.get("other_spdx_license_keys") or [])]:
            if spdx:
                out.setdefault(spdx, lic["category"])
    return out


def spdx_category(spdx_id: str) -> Optional[str]:
    """ScanCode's category of an SPDX id from ``license-expression``'s index, None when unknown."""
    return _spdx_categories().get(spdx_id)


@lru_cache(maxsize=1)
def _spdx_licensing():
    from license_expression import get_spdx_licensing

    return get_spdx_licensing()


def declared_licenses(text: str) -> list[str]:
    """The SPDX ids of a file's own ``SPDX-License-Identifier:`` lines in its first ``SPDX_HEADER_LINES`` lines,
    sorted; [] when none. The expressions are parsed by ``license-expression`` (SPDX ids are case-insensitive and
    deprecated ones are mapped: ``gpl-2.0+`` → ``GPL-2.0-or-later``); an id SPDX does not list is kept as written
    (its category is unknown, so it counts as non-permissive); an expression that does not parse is ignored (a line
    that builds one, as in ``f"SPDX-License-Identifier: {spdx}"``, is no declaration)."""
    from license_expression import ExpressionError

    licensing, ids = _spdx_licensing(), set()
    for line in text.splitlines()[:SPDX_HEADER_LINES]:
        if not (match := SPDX_LINE.search(line)) or not (expression := match.group(1).strip(" \t-")):
            continue
        try:
            parsed = licensing.parse(expression)
        except ExpressionError:
            continue
        if parsed is not None:
            ids.update(licensing.license_keys(parsed))
    return sorted(ids)


def file_licenses(inherited: Iterable[str], declared: Iterable[str] = ()) -> list[str]:
    """A file's licenses: those of its folders (``RepositoryLicenses.for_path``) and its own SPDX declarations,
    without ScanCode's ``unknown-license-reference`` when anything else is known. That id is what ScanCode calls a
    line that only points elsewhere ("See [LICENSE](LICENSE) for details."); ScanCode's CLI resolves such a reference
    to the license file it names, so beside a detected license it says nothing more. Alone, it stays (and counts as
    non-permissive): something claims a license that nobody could name."""
    ids = set(inherited) | set(declared)
    if ids - {UNKNOWN_REFERENCE}:
        ids.discard(UNKNOWN_REFERENCE)
    return sorted(ids)


@lru_cache(maxsize=1)
def blue_oak() -> dict[str, str]:
    """SPDX id -> Blue Oak Council rating ("Model", "Gold", "Silver", "Bronze", "Lead") of every listed license."""
    ratings = json.loads((Path(__file__).parent / "blueoak_list.json").read_text(encoding="utf-8"))
    return {lic["id"]: rating["name"] for rating in ratings for lic in rating["licenses"]}


def is_permissive(spdx_id: str, scancode_category: Optional[str]) -> bool:
    """ScanCode calls it Permissive or Public Domain, or the Blue Oak Council lists it."""
    return scancode_category in PERMISSIVE_CATEGORIES or spdx_id in blue_oak()


def license_type(ids: Iterable[str], categories: Optional[dict] = None) -> LicenseType:
    """"no_license" for no ids, "permissive" when all are permissive (``is_permissive``), else "non_permissive".
    ``categories`` maps ids to ScanCode categories (default: ask ScanCode's database)."""
    ids = list(ids)
    if not ids:
        return "no_license"
    lookup = (lambda i: categories[i] if i in categories else spdx_category(i)) if categories is not None else category
    return "permissive" if all(is_permissive(i, lookup(i)) for i in ids) else "non_permissive"


def allowed(kind: LicenseType, policy: LicensePolicy) -> bool:
    """``permissive``: permissive and no-license files (The Stack v2); ``strict``: permissive only; ``all``: all."""
    if policy == "all":
        return True
    if policy == "strict":
        return kind == "permissive"
    return kind in ("permissive", "no_license")


class DetectionCache:
    """Detections by SHA-1 of the text and the categories of the ids found, in a JSON file (per ScanCode
    version), so that rebuilds neither load ScanCode's index nor its license database.

    The file is read only when it carries this user's seal (``corpus.seal``): it may lie in a source (``prepare code
    . --out_dir corpus``), and one a repository shipped there, calling its GPL license "MIT", let its files past the
    license policy."""

    def __init__(self, path: Optional[Path]) -> None:
        self.path = Path(path) if path else None
        self.key = scancode_version()
        data = seal.read_sealed(self.path) if self.path else {}
        fresh = data.get("scancode") == self.key
        self.entries: dict[str, list[str]] = data.get("detections", {}) if fresh else {}
        self.categories: dict[str, Optional[str]] = data.get("categories", {}) if fresh else {}
        self.dirty = False

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8", errors="surrogatepass")).hexdigest()

    def detect(self, text: str) -> list[str]:
        key = self._key(text)
        if key not in self.entries:
            self._add(key, detect(text))
        return self.entries[key]

    def _add(self, key: str, ids: list[str]) -> None:
        self.entries[key] = ids
        self.categories.update({i: category(i) for i in ids})
        self.dirty = True

    def detect_all(self, texts: Iterable[str], mapper: Optional[Callable] = None) -> None:
        """Detect and cache every text not cached yet, ``mapper(fn, items)`` spreading them over processes (default:
        this one). The index is loaded here first, so that the processes of a pool forked after it share it."""
        missing = sorted({key: text for text in texts if (key := self._key(text)) not in self.entries}.items())
        if not missing:
            return
        load_index()
        by_length = sorted(missing, key=lambda item: -len(item[1]))  # longest first: the processes finish together
        for (key, _), ids in zip(by_length, (mapper or map)(detect, [text for _, text in by_length])):
            self._add(key, ids)

    def save(self) -> None:
        if self.path and self.dirty:
            payload = {"scancode": self.key, "detections": dict(sorted(self.entries.items())),
                       "categories": dict(sorted(self.categories.items()))}
            write_atomic_text(self.path, json.dumps(seal.sealed(payload), indent=0, sort_keys=True) + "\n")
            self.dirty = False


class RepositoryLicenses:
    """The licenses found in a repository's license files, by folder; ``for_path`` gives a file's inherited set."""

    def __init__(self, by_folder: dict[str, list[str]], files: dict[str, list[str]], categories: dict) -> None:
        self.by_folder = by_folder  # "" is the root
        self.files = files  # license file path -> its SPDX ids
        self.categories = categories  # SPDX id -> ScanCode category, for the ids found

    @classmethod
    def detect(cls, texts: dict[str, str], cache: DetectionCache) -> "RepositoryLicenses":
        """``texts``: path → decoded text of the repository's license and README files."""
        by_folder: dict[str, set[str]] = {}
        files = {}
        for path, part in license_parts(texts).items():
            files[path] = cache.detect(part)
            parent = PurePosixPath(path).parent
            folder = str(parent.parent if parent.name == REUSE_FOLDER else parent)
            by_folder.setdefault("" if folder == "." else folder, set()).update(files[path])
        found = {i for ids in files.values() for i in ids}
        return cls({k: sorted(v) for k, v in by_folder.items() if v}, files, {i: cache.categories[i] for i in sorted(found)})

    def for_path(self, path: str) -> list[str]:
        ids: set[str] = set()
        parts = PurePosixPath(path).parts[:-1]
        for depth in range(len(parts) + 1):
            ids.update(self.by_folder.get("/".join(parts[:depth]), ()))
        return sorted(ids)
