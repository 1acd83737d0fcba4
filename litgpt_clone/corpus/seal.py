"""A seal on what ``prepare code`` reads back from its ``--out_dir``: an HMAC keyed by a secret of this user.

The ``--out_dir`` may lie inside a source (``prepare code . --out_dir corpus``), and a repository can then ship
files there: a license-detection cache that calls its GPL license "MIT", or a partial build whose records it wrote
itself. So the license detections (``licenses.DetectionCache``) and a partial build's stamp (``pipeline``) are
trusted only when they carry the seal this user's builds write, which no one without the key can compute.

The key is 32 random bytes in ``$LITGPT_CLONE_CACHE/corpus.key`` (default ``~/.cache/litgpt_clone``), made on first
use and readable by this user only. Where it cannot be stored, this process makes a key of its own: nothing an
earlier build wrote is trusted then (the detections are made again, a partial build starts over).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path

KEY_BYTES = 32


def key() -> bytes:
    from litgpt_clone.data.pretrain import cache_root

    return _key_at(str(cache_root() / "corpus.key"))


@functools.lru_cache(maxsize=None)
def _key_at(path: str) -> bytes:
    try:
        return _stored_key(Path(path))
    except OSError:
        return secrets.token_bytes(KEY_BYTES)


def _stored_key(path: Path) -> bytes:
    """The key at ``path``, made first when there is none: written whole to a file of this process, then linked to
    ``path`` (two builds starting at once agree on the first one linked)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with open(fd, "wb") as f:
                f.write(secrets.token_bytes(KEY_BYTES))
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    data = path.read_bytes()
    if len(data) != KEY_BYTES:
        raise OSError(f"{path} is not a key")
    return data


def seal(payload: dict) -> str:
    """The HMAC-SHA256 of ``payload`` (as sorted JSON) under this user's key."""
    return hmac.new(key(), json.dumps(payload, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def sealed(payload: dict) -> dict:
    """``payload`` with its ``seal``."""
    return {**payload, "seal": seal(payload)}


def is_sealed(data: object) -> bool:
    """Whether ``data`` is a dict whose ``seal`` is the seal of the rest of it."""
    if not isinstance(data, dict) or not isinstance(data.get("seal"), str):
        return False
    return hmac.compare_digest(data["seal"], seal({k: v for k, v in data.items() if k != "seal"}))


def read_sealed(path: Path) -> dict:
    """The JSON object in ``path`` when it carries this user's seal, else ``{}`` (also when it is missing or is not
    JSON: what a source supplied, a copy from another user, a file cut short)."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:  # (a FIFO is not waited on)
            data = json.loads(f.read()) if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else {}
    except (OSError, ValueError):
        return {}
    return data if is_sealed(data) else {}
