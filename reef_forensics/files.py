"""File helpers: atomic writes (temporary name, then rename), and parsing that fails cleanly."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``.

    The file has ``mode`` from its creation (0600 for secrets: never readable by others).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".partial", dir=target.parent
    )
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def parse_json(raw: str | bytes) -> Any:
    """`json.loads` whose every failure is a `ValueError`.

    Besides malformed JSON (`json.JSONDecodeError`) and bad UTF-8 (`UnicodeDecodeError`), both
    already `ValueError`s, hostile input can nest deeply enough to raise `RecursionError`.
    """
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def lone_surrogate(text: str) -> int | None:
    """Where ``text`` holds a lone surrogate (JSON's ``"\\ud800"`` parses to one), or None: such
    a string is not Unicode, cannot be encoded, stored as text or digested."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return int(exc.start)
    return None


def split_lines(text: str) -> list[str]:
    """Split on ``\\n`` only (dropping a ``\\r`` before it), unlike `str.splitlines`, which also
    splits on U+2028, U+0085 and other characters that JSON and CSV leave inside a value."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]
