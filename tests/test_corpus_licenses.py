"""License detection (ScanCode) on license texts labelled by others, classification, propagation, policy, cache.

The labelled set is built here from what is on the machine: Debian's ``/usr/share/common-licenses/*`` (labelled
by their Debian short names, mapped to SPDX below) and the single license file of every installed distribution
whose METADATA has a PEP 639 ``License-Expression`` (labelled by that expression).
"""

import json
import multiprocessing
import re
from importlib.metadata import distributions
from pathlib import Path

import pytest
from license_expression import get_spdx_licensing

from corpus_fixture import MIT
from litgpt_clone.corpus import licenses

DEBIAN = Path("/usr/share/common-licenses")
DEBIAN_SPDX = {  # Debian (DEP-5) short name -> SPDX id
    "Apache-2.0": "Apache-2.0", "Artistic": "Artistic-1.0-Perl", "BSD": "BSD-3-Clause", "CC0-1.0": "CC0-1.0",
    "GFDL-1.2": "GFDL-1.2", "GFDL-1.3": "GFDL-1.3", "GPL-1": "GPL-1.0", "GPL-2": "GPL-2.0", "GPL-3": "GPL-3.0",
    "LGPL-2": "LGPL-2.0", "LGPL-2.1": "LGPL-2.1", "LGPL-3": "LGPL-3.0", "MPL-1.1": "MPL-1.1", "MPL-2.0": "MPL-2.0",
}
MAX_TEXT = 32_000  # leave out the few bundles of dozens of licenses (ScanCode takes seconds on each)


def base(spdx_id: str) -> str:
    """GPL-2.0-only / GPL-2.0-or-later / GPL-2.0+ -> GPL-2.0: a license text alone does not say which."""
    return re.sub(r"(-only|-or-later|\+)$", "", spdx_id)


def labelled_samples() -> list[tuple[str, set[str], str]]:
    samples = []
    for path in sorted(DEBIAN.glob("*")) if DEBIAN.is_dir() else []:
        if path.is_file() and not path.is_symlink() and path.name in DEBIAN_SPDX:
            samples.append((f"debian:{path.name}", {DEBIAN_SPDX[path.name]}, path.read_text(errors="replace")))
    spdx = get_spdx_licensing()
    for dist in distributions():
        expression = dist.metadata.get("License-Expression")
        files = [f for f in dist.files or [] if ".dist-info/" in str(f) and licenses.LICENSE_FILE.match(f.name)]
        if not expression or len(files) != 1:
            continue
        text = Path(dist.locate_file(files[0])).read_text(errors="replace")
        if len(text) <= MAX_TEXT:
            labels = {base(k) for k in spdx.license_keys(spdx.parse(expression))}
            samples.append((f"{dist.metadata['Name']}:{files[0].name}", labels, text))
    return sorted(samples)


def test_spdx_detection_accuracy_on_labelled_texts():
    samples = labelled_samples()
    assert len(samples) >= 40, f"only {len(samples)} labelled license texts on this machine"
    found = {name: {base(i) for i in licenses.detect(text)} for name, _, text in samples}
    recall = [name for name, labels, _ in samples if labels <= found[name]]
    exact = [name for name, labels, _ in samples if labels == found[name]]
    misses = [(name, sorted(labels), sorted(found[name])) for name, labels, _ in samples if not labels <= found[name]]
    # correct: every labelled license is detected; exact: and nothing else (bundled third-party licenses count)
    assert len(recall) / len(samples) >= 0.95, misses
    assert len(exact) / len(samples) >= 0.90
    if DEBIAN.is_dir():
        assert all(labels == found[name] for name, labels, _ in samples if name.startswith("debian:"))


@pytest.mark.parametrize("ids, expected", [
    (["MIT"], "permissive"), (["Apache-2.0", "BSD-3-Clause"], "permissive"), (["ISC"], "permissive"),
    (["Unlicense"], "permissive"), (["CC0-1.0"], "permissive"), (["MIT", "GPL-3.0-only"], "non_permissive"),
    (["LGPL-2.1-only"], "non_permissive"), (["MPL-2.0"], "non_permissive"), (["AGPL-3.0-only"], "non_permissive"),
    (["LicenseRef-scancode-proprietary-license"], "non_permissive"),
    (["LicenseRef-scancode-unknown-license-reference"], "non_permissive"), ([], "no_license"),
    # ScanCode says Copyleft Limited / Copyleft / Free Restricted, the Blue Oak Council lists them as permissive
    (["Artistic-2.0"], "permissive"), (["Ruby"], "permissive"), (["Vim", "MIT"], "permissive"),
    (["BSD-3-Clause-No-Nuclear-Warranty"], "permissive"), (["Artistic-2.0", "GPL-2.0-only"], "non_permissive"),
])
def test_license_type_from_scancode_categories_and_blue_oak(ids, expected):
    assert licenses.license_type(ids) == expected


def test_blue_oak_list_is_the_published_one():
    import hashlib

    path = Path(licenses.__file__).parent / "blueoak_list.json"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == licenses.BLUE_OAK_SHA256
    ratings = licenses.blue_oak()
    assert len(ratings) == 224 and ratings["BlueOak-1.0.0"] == "Model" and ratings["Apache-2.0"] == "Silver"
    assert ratings["MIT"] == "Silver" and not {"GPL-2.0-only", "LGPL-2.1-only", "MPL-2.0", "AGPL-3.0-only"} & set(ratings)
    added = sorted(i for i in ratings if licenses.category(i) not in licenses.PERMISSIVE_CATEGORIES)
    assert len(added) == 21 and "Artistic-2.0" in added  # what the list adds to ScanCode's permissive categories


def test_policy():
    table = {policy: [kind for kind in ("permissive", "no_license", "non_permissive") if licenses.allowed(kind, policy)]
             for policy in ("permissive", "strict", "all")}
    assert table == {"permissive": ["permissive", "no_license"], "strict": ["permissive"],
                     "all": ["permissive", "no_license", "non_permissive"]}


def test_propagation_readme_headers_and_cache(tmp_path):
    texts = {
        "LICENSE": MIT,
        "vendor/gplstuff/COPYING": "This program is free software; you can redistribute it and/or modify it under the terms of"
        " the GNU General Public License as published by the Free Software Foundation; either version 2 of the License,"
        " or (at your option) any later version.",
        "docs/README.md": "# Docs\n\nLicensed under the Apache License, Version 2.0.\n",
        "tools/README": "# Tools\n" + "line\n" * 150 + "Licensed under the Apache License, Version 2.0.\n",  # below the header
        "src/main.py": "print('not a license file')\n",
    }
    cache = licenses.DetectionCache(tmp_path / "cache.json")
    found = licenses.RepositoryLicenses.detect(texts, cache)
    assert found.by_folder == {"": ["MIT"], "docs": ["Apache-2.0"], "vendor/gplstuff": ["GPL-2.0-or-later"]}
    assert found.for_path("src/main.py") == ["MIT"]
    assert found.for_path("vendor/gplstuff/x/y.c") == ["GPL-2.0-or-later", "MIT"]
    assert licenses.license_type(found.for_path("vendor/gplstuff/a.c"), found.categories) == "non_permissive"
    assert licenses.license_type(found.for_path("docs/a.md"), found.categories) == "permissive"
    assert "src/main.py" not in found.files and found.files["tools/README"] == []
    cache.save()
    again = licenses.DetectionCache(tmp_path / "cache.json")
    assert again.entries == cache.entries and again.categories["GPL-2.0-or-later"] == "Copyleft"
    # a cache someone else wrote (a repository shipping one in the out_dir) or edited is not read: it made GPL "MIT"
    saved = json.loads((tmp_path / "cache.json").read_text())
    edited = {**saved, "detections": {key: ["MIT"] for key in saved["detections"]}}
    unsealed = {key: value for key, value in edited.items() if key != "seal"}
    for forged in (edited, unsealed):
        (tmp_path / "cache.json").write_text(json.dumps(forged))
        assert licenses.DetectionCache(tmp_path / "cache.json").entries == {}
    # detect_all: the same detections, computed up front in 2 forked processes (what prepare code --workers 2 does)
    parallel = licenses.DetectionCache(None)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        parallel.detect_all(licenses.license_parts(texts).values(), mapper=pool.map)
    assert parallel.entries == cache.entries and parallel.categories == cache.categories


def test_excluded_license_file_still_licenses_the_repository(tmp_path):
    """``--exclude '["*.txt"]'`` removed LICENSE.txt before detection: the GPL file became no_license and was kept by
    the default policy."""
    from litgpt_clone.corpus.pipeline import CorpusConfig, run

    src = tmp_path / "gplx"
    src.mkdir()
    (src / "main.py").write_text("def main():\n    print('copyleft hello')\n")
    (src / "LICENSE.txt").write_text((DEBIAN / "GPL-3").read_text())
    result = run(CorpusConfig(sources=[str(src)], exclude=["*.txt"]), tmp_path / "out", log=lambda _: None)
    [record] = [json.loads(line) for line in (result.version_dir / "files.jsonl").read_text().splitlines()]
    assert (record["path"], record["detected_licenses"], record["license_type"], record["drop_stage"], record["drop_reason"]) == (
        "main.py", ["GPL-3.0-only"], "non_permissive", "license", "non_permissive")


def _repo_context(by_folder: dict, categories: dict):
    from litgpt_clone.corpus.pipeline import RepoContext

    return RepoContext("o/r", "dir", None, None, by_folder, categories, None)


@pytest.mark.parametrize("by_folder, text, expected", [
    # a file's own SPDX line counts, even inside an MIT repository, and in a repository without a license file
    ({"": ["MIT"]}, "# SPDX-License-Identifier: GPL-3.0-only\nx = 1\n", (["GPL-3.0-only", "MIT"], "non_permissive")),
    ({}, "#!/usr/bin/env python\n# SPDX-License-Identifier: AGPL-3.0-or-later\n", (["AGPL-3.0-or-later"], "non_permissive")),
    ({}, "/* SPDX-License-Identifier: gpl-2.0+ */\n", (["GPL-2.0-or-later"], "non_permissive")),
    ({}, "<!-- SPDX-License-Identifier: Apache-2.0 WITH LLVM-exception -->\n", (["Apache-2.0", "LLVM-exception"], "permissive")),
    ({"": ["MIT"]}, "// SPDX-License-Identifier: MIT\n", (["MIT"], "permissive")),
    ({}, "// SPDX-License-Identifier: LicenseRef-Acme-Proprietary\n", (["LicenseRef-Acme-Proprietary"], "non_permissive")),
    # not declarations: below the header, or a line that builds one
    ({}, "x = 1\n" * 30 + "# SPDX-License-Identifier: GPL-3.0-only\n", ([], "no_license")),
    ({"": ["MIT"]}, 'line = f"SPDX-License-Identifier: {spdx}"\n', (["MIT"], "permissive")),
])
def test_file_spdx_identifier_lines_count(by_folder, text, expected):
    from litgpt_clone.corpus.pipeline import license_stage

    record = {"path": "src/f.py"}
    reason = license_stage(record, _repo_context(by_folder, {"MIT": "Permissive"}), "permissive", text)
    assert (record["detected_licenses"], record["license_type"]) == expected
    assert reason == (None if expected[1] != "non_permissive" else "non_permissive")


def test_reuse_licenses_folder_is_the_repository_license():
    cache = licenses.DetectionCache(None)
    reuse = licenses.RepositoryLicenses.detect({"LICENSES/GPL-3.0-or-later.txt": (DEBIAN / "GPL-3").read_text(),
                                                "lib/LICENSES/MIT.txt": MIT, "src/tool.py": "x = 1\n"}, cache)
    assert reuse.by_folder == {"": ["GPL-3.0-only"], "lib": ["MIT"]}
    assert reuse.for_path("src/tool.py") == ["GPL-3.0-only"] and reuse.for_path("lib/a.py") == ["GPL-3.0-only", "MIT"]


def test_unknown_reference_adds_nothing_beside_a_license():
    from litgpt_clone.corpus.pipeline import license_stage

    cache = licenses.DetectionCache(None)
    # "See LICENSE": ScanCode can only call it unknown-license-reference; beside the MIT it points at, it adds nothing
    see = "# ra\n\nA tool.\n\n## License\n\nSee [LICENSE](LICENSE) for details.\n"
    found = licenses.RepositoryLicenses.detect({"LICENSE": MIT, "README.md": see}, cache)
    assert found.files == {"LICENSE": ["MIT"], "README.md": ["LicenseRef-scancode-unknown-license-reference"]}
    record = {"path": "main.py"}
    assert license_stage(record, _repo_context(found.by_folder, found.categories), "permissive") is None
    assert (record["detected_licenses"], record["license_type"]) == (["MIT"], "permissive")
    # alone (nothing else known) it stays, and counts as non-permissive
    alone = licenses.RepositoryLicenses.detect({"README.md": see}, cache)
    record = {"path": "main.py"}
    assert license_stage(record, _repo_context(alone.by_folder, alone.categories), "permissive") == "non_permissive"
    assert record["detected_licenses"] == ["LicenseRef-scancode-unknown-license-reference"]
