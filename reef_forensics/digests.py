"""Canonical JSON (RFC 8785) and sha256 digests of files, texts and structured records.

Every digest the tool writes is the string ``"sha256:" + hex``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import rfc8785

PREFIX = "sha256:"
_CHUNK = 1 << 20


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of a JSON value (sorted keys, no whitespace)."""
    return rfc8785.dumps(value)


def sha256_bytes(data: bytes) -> str:
    return PREFIX + hashlib.sha256(data).hexdigest()


def sha256_json(value: Any) -> str:
    """Digest of a JSON value: sha256 of its canonical bytes."""
    return sha256_bytes(canonical_json(value))


def sha256_file(path: Path) -> str:
    """Digest of a file, read in 1 MiB chunks so any size streams through constant memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return PREFIX + digest.hexdigest()


def texts_digest(texts: Iterable[str]) -> str:
    """The probe-set digest: sha256 of the canonical JSON of the ordered list of texts."""
    return sha256_json(list(texts))
