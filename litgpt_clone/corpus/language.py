"""Programming language of a file by GitHub Linguist's rules, through go-enry (the ``enry-python`` bindings).

``detect(path, data)`` gives Linguist's language name (``"Python"``, ``"C++"``, ``"Jupyter Notebook"``; None when
Linguist knows none), its type (programming, data, markup, prose) and the ``is_vendor`` / ``is_generated`` flags
Linguist uses to leave vendored and generated code out of a repository's language statistics. enry decides from
the file name (exact names such as ``Makefile``, then the extension), then shebang and modelines, then content
heuristics and a classifier for ambiguous extensions; it runs offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Language:
    name: Optional[str]
    type: Optional[str]
    is_vendor: bool
    is_generated: bool


def _enry():
    try:
        import enry
    except ImportError as err:  # the package is an optional extra
        raise ImportError("prepare code needs enry-python: pip install 'litgpt_clone[corpus]'") from err
    return enry


def detect(path: str, data: bytes) -> Language:
    """Linguist's verdict on the file at ``path`` (its path inside the repository) with contents ``data``."""
    enry = _enry()
    name = enry.get_language(path, data) or None
    return Language(
        name=name,
        type=(enry.get_language_type(name) or None) if name else None,
        is_vendor=bool(enry.is_vendor(path)),
        is_generated=bool(enry.is_generated(path, data)),
    )


def version() -> str:
    from importlib.metadata import version as package_version

    return package_version("enry-python")


def known(name: str) -> bool:
    """Whether ``name`` is a language Linguist knows, spelt as Linguist spells it (``Python``, ``C++``)."""
    return _enry().get_language_type(name) not in ("", "unknown", None)
