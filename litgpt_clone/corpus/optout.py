"""The opt-out registry: owners and ``owner/repo`` names whose code must not be in the corpus.

A JSONL file in the shape of BigCode's "Am I in The Stack" registry: every line an object with lists
``optout_owners`` (e.g. ``"octocat"``) and ``optout_repos`` (e.g. ``"octocat/hello-world"``); the registry is the
union of all lines. A repository is opted out when its owner (the part of its name before ``/``) is a listed owner
or its full name is a listed repository. Names compare case-insensitively, as GitHub's do; nothing else matches (no
prefixes, no patterns).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union


class OptOutError(ValueError):
    """An opt-out file that cannot be read; the message names the line and the fix."""


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
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not {"optout_owners", "optout_repos"} & set(record):  # a misspelt key would opt out nothing
                    raise ValueError(f"it has keys {sorted(record)[:5]} but neither optout_owners nor optout_repos")
                owners, repos = record.get("optout_owners", []), record.get("optout_repos", [])
                if not isinstance(owners, list) or not isinstance(repos, list):
                    raise ValueError("optout_owners and optout_repos must be lists")
            except (ValueError, AttributeError) as err:
                raise OptOutError(f"{path}:{number} is not an opt-out record ({err}): fix or remove the line") from err
            optout.owners.update(str(o).casefold() for o in owners)
            optout.repos.update(str(r).casefold().strip("/") for r in repos)
        if not optout:
            raise OptOutError(f"{path} opts out nothing (no owners or repos in it): give records with optout_owners/optout_repos lists")
        return optout

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
