"""File identity, as in The Stack v2: ``blob_id`` is the SHA-1 of the bytes, ``content_id`` the git blob id.

``content_id`` equals ``git hash-object <file>`` (SHA-1 of ``b"blob <size>\\0"`` followed by the bytes), so a file
read from a folder or an archive has the id git gives the same bytes in any repository.
"""

from __future__ import annotations

import hashlib


def blob_id(data: bytes) -> str:
    """SHA-1 of the bytes, hex."""
    return hashlib.sha1(data).hexdigest()


def content_id(data: bytes) -> str:
    """The git blob id of the bytes, hex."""
    h = hashlib.sha1(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()
