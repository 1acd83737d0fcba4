"""The opt-out registry: owners and ``owner/repo`` names whose code must not be in the corpus.

A JSONL file in the shape of BigCode's "Am I in The Stack" registry: every line an object with lists
``optout_owners`` (e.g. ``"octocat"``) and ``optout_repos`` (e.g. ``"octocat/hello-world"``); the registry is the
union of all lines. A repository is opted out when its owner (the part of its name before ``/``) is a listed owner
or its full name is a listed repository. Names compare case-insensitively, as GitHub's do; nothing else matches (no
prefixes, no patterns). A repository entry without ``/`` matches a repository named without an owner (a folder, an
archive, a git repository without a remote).

A registry that would let opted-out code in is refused with ``OptOutError`` (one line naming the line and the
problem): a file that is not UTF-8, a line that is not a JSON object, a key other than the two (a misspelt
``optout_repo`` beside a valid ``optout_owners`` would silently opt out nothing), a value that is not a list, an
entry that can never match (not a non-empty string, an owner with ``/``, a repository with more than one ``/`` or an
empty part), and a registry that opts out nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union


KEYS = ("optout_owners", "optout_repos")


class OptOutError(ValueError):
    """An opt-out file that cannot be read; the message names the line and the fix."""


def _entry_problem(key: str, entry) -> Optional[str]:
    """Why ``entry`` of list ``key`` can never match a repository name, or None."""
    if not isinstance(entry, str) or not entry.strip("/"):
        return f"{key} entry {json.dumps(entry)} is not a name"
    name = entry.strip("/")
    if key == "optout_owners" and "/" in name:
        return f"optout_owners entry {entry!r} has a '/': owners are names like octocat; put owner/repo names in optout_repos"
    if key == "optout_repos" and (name.count("/") > 1 or "" in name.split("/")):
        return f"optout_repos entry {entry!r} is not an owner/repo name"
    return None


@dataclass
class OptOut:
    owners: set[str] = field(default_factory=set)
    repos: set[str] = field(default_factory=set)

    @classmethod
    def from_file(cls, path: Union[str, Path]) -> "OptOut":
        optout = cls()
        path = Path(path)
        if not path.is_file():
            raise OptOutError(f"no opt-out file at {path}: give a JSONL file with optout_owners/optout_repos lists")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise OptOutError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}): save it as UTF-8") from None
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                owners, repos = cls._parse(line, f"{path}:{number}")
                optout.owners.update(o.strip("/").casefold() for o in owners)
                optout.repos.update(r.strip("/").casefold() for r in repos)
        if not optout:
            raise OptOutError(f"{path} opts out nothing (no owners or repos in it): give records with optout_owners/optout_repos lists")
        return optout

    @staticmethod
    def _parse(line: str, where: str) -> tuple[list[str], list[str]]:
        """The owners and repositories of one line, or ``OptOutError`` naming ``where`` and the problem."""
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(record), "a number")
                raise ValueError(f"it is {kind}, not a JSON object with optout_owners/optout_repos lists")
            if unknown := sorted(set(record) - set(KEYS)):  # a misspelt key would opt out nothing
                raise ValueError(f"unknown key {unknown[0]!r}: the keys are optout_owners and optout_repos")
            if not record:
                raise ValueError("it has neither optout_owners nor optout_repos")
            for key in KEYS:
                if not isinstance(record.get(key, []), list):
                    raise ValueError(f"{key} must be a list")
                if problem := next(filter(None, (_entry_problem(key, e) for e in record.get(key, []))), None):
                    raise ValueError(problem)
        except ValueError as err:
            raise OptOutError(f"{where} is not an opt-out record ({err}): fix or remove the line") from None
        return record.get("optout_owners", []), record.get("optout_repos", [])

    def reason(self, repo: str) -> Optional[str]:
        """"owner" or "repo" when ``repo`` (``owner/name`` or ``name``) is opted out, else None."""
        name = repo.casefold()
        owner = name.split("/", 1)[0] if "/" in name else None
        if owner is not None and owner in self.owners:
            return "owner"
        if name in self.repos:
            return "repo"
        return None

    def __len__(self) -> int:
        return len(self.owners) + len(self.repos)
