"""Probe sets: the fixed, ordered texts every model in a comparison reads.

A probe set is identified by its digest, the sha256 of the RFC 8785 canonical JSON of the
ordered list of texts, so the same texts in the same order give the same digest wherever
they came from. Sources (a *spec*):

- ``builtin:default``: the project's own set (TruthfulQA-style question/answer statements with
  true and false answers, everyday text, instructions); ``builtin:qa`` keeps only the Q/A rows.
- ``path.txt``: one text a line (blank lines skipped).
- ``path.jsonl``: one JSON object a line with a ``text`` field (or ``column``).
- ``path.csv``: a header row and a ``text`` column (or ``column``).
- ``hf:PATH``: a Hugging Face dataset saved with ``save_to_disk`` (or a dataset already in the
  local cache, by name); ``split`` (default ``train``) and ``column`` (default ``text``).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from reef_forensics.digests import texts_digest
from reef_forensics.errors import ProbeSetError, first_line
from reef_forensics.files import lone_surrogate, parse_json, split_lines

#: The fewest texts a probe set may hold: CKA over fewer samples means little.
MIN_PROBES = 10
DEFAULT_SPEC = "builtin:default"
BUILTIN_SETS = ("default", "qa")


@dataclass(frozen=True)
class ProbeSet:
    """An ordered tuple of texts with a name saying where it came from."""

    name: str
    texts: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    @cached_property
    def digest(self) -> str:
        return texts_digest(self.texts)


def load_probes(
    spec: str | os.PathLike[str] = DEFAULT_SPEC,
    *,
    column: str | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> ProbeSet:
    """Load and check a probe set from a spec (see the module docstring)."""
    text_spec = os.fspath(spec)
    if limit is not None and limit < MIN_PROBES:
        raise ProbeSetError(f"--probes-limit must be at least {MIN_PROBES}, got {limit}")
    if text_spec.startswith("builtin:"):
        texts = _builtin(text_spec.removeprefix("builtin:"))
    elif text_spec.startswith("hf:"):
        texts = _huggingface(text_spec.removeprefix("hf:"), split or "train", column or "text")
    else:
        texts = _from_file(Path(text_spec), column)
    if limit is not None:
        texts = texts[:limit]
    probe_set = ProbeSet(name=text_spec, texts=tuple(texts))
    if len(probe_set) < MIN_PROBES:
        raise ProbeSetError(
            f"probe set {text_spec} has {len(probe_set)} text(s); at least {MIN_PROBES} are needed"
        )
    return probe_set


def builtin_kinds(name: str = "default") -> list[str]:
    """The kind of each text of a built-in set (qa_true, qa_false, everyday, instruction)."""
    return [
        row["kind"] for row in _builtin_rows() if name == "default" or row["kind"].startswith("qa_")
    ]


def _builtin_rows() -> list[dict[str, str]]:
    data = resources.files("reef_forensics").joinpath("data", "default_probes.jsonl")
    return [json.loads(line) for line in split_lines(data.read_text(encoding="utf-8"))]


def _builtin(name: str) -> list[str]:
    if name not in BUILTIN_SETS:
        raise ProbeSetError(
            f"unknown built-in probe set {name!r}: expected one of "
            + ", ".join(f"builtin:{n}" for n in BUILTIN_SETS)
        )
    rows = _builtin_rows()
    if name == "qa":
        rows = [row for row in rows if row["kind"].startswith("qa_")]
    return [row["text"] for row in rows]


def _from_file(path: Path, column: str | None) -> list[str]:
    if not path.exists():
        raise ProbeSetError(f"probe file not found: {path}")
    if not path.is_file():
        raise ProbeSetError(
            f"probe spec {path} is not a file (expected .txt, .jsonl, .csv, builtin:NAME or hf:PATH)"
        )
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl", ".csv"):
        raise ProbeSetError(
            f"unsupported probe file type {suffix or '(none)'}: use .txt, .jsonl or .csv"
        )
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ProbeSetError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ProbeSetError(f"cannot read {path}: {exc.strerror or exc}") from None
    raw = raw.removeprefix("\ufeff")
    if "\x00" in raw:  # UTF-16 without a byte-order mark reads as UTF-8 with a NUL per letter
        raise ProbeSetError(
            f"{path} holds NUL bytes (UTF-16 or binary?): probe files are UTF-8 text"
        )
    if suffix == ".txt":
        return [line for line in split_lines(raw) if line.strip()]
    if suffix == ".jsonl":
        return _jsonl_texts(path, raw, column or "text")
    return _csv_texts(path, raw, column or "text")


def _jsonl_texts(path: Path, raw: str, field: str) -> list[str]:
    texts = []
    for number, line in enumerate(split_lines(raw), start=1):
        if not line.strip():
            continue
        try:
            row = parse_json(line)
        except ValueError as exc:
            raise ProbeSetError(f"{path}:{number}: not valid JSON ({exc})") from None
        if not isinstance(row, dict) or field not in row:
            raise ProbeSetError(f"{path}:{number}: expected an object with a {field!r} field")
        texts.append(_check_text(row[field], f"{path}:{number}"))
    return texts


def _csv_texts(path: Path, raw: str, field: str) -> list[str]:
    reader = csv.DictReader(io.StringIO(raw, newline=""))
    try:
        fieldnames = reader.fieldnames  # reads the header row: a malformed one raises here
    except csv.Error as exc:
        raise ProbeSetError(f"{path}: malformed CSV header ({exc})") from None
    if fieldnames is None or field not in fieldnames:
        found = ", ".join(fieldnames or []) or "none"
        raise ProbeSetError(f"{path}: no column {field!r} in the header (columns: {found})")
    try:
        return [
            _check_text(row[field], f"{path}:{number}")
            for number, row in enumerate(reader, start=2)
        ]
    except csv.Error as exc:
        raise ProbeSetError(f"{path}: malformed CSV ({exc})") from None


def _huggingface(location: str, split: str, field: str) -> list[str]:
    # Read at import time by datasets and huggingface_hub: set before the import.
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import datasets
    except ImportError:
        raise ProbeSetError(
            "hf: probe sets need the 'datasets' package: install reef-forensics with its "
            "datasets extra (docs/mlflow.md, Install)"
        ) from None
    try:
        if Path(location).is_dir():
            loaded: Any = datasets.load_from_disk(location)
        else:
            loaded = datasets.load_dataset(location, split=split)
    except Exception as exc:  # datasets raises many types; the user needs the first line
        raise ProbeSetError(
            f"cannot load Hugging Face dataset {location!r} offline: {first_line(exc)}"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ProbeSetError(
                f"dataset {location!r} has no split {split!r} (splits: {', '.join(loaded)})"
            )
        loaded = loaded[split]
    if field not in loaded.column_names:
        raise ProbeSetError(
            f"dataset {location!r} has no column {field!r} (columns: {', '.join(loaded.column_names)})"
        )
    return [_check_text(value, f"{location}[{i}]") for i, value in enumerate(loaded[field])]


def _check_text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ProbeSetError(f"{where}: the text must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ProbeSetError(f"{where}: empty text")
    at = lone_surrogate(value)  # the digest of such a text is undefined
    if at is not None:
        raise ProbeSetError(
            f"{where}: the text holds a lone surrogate (U+{ord(value[at]):04X}), not Unicode"
        )
    return value
