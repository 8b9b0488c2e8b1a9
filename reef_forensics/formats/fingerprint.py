"""The fingerprint format: a directory of representations, probe texts and a manifest.

::

    FINGERPRINT/
      fingerprint.json             canonical JSON (RFC 8785) manifest, see docs/formats.md
      representations.safetensors  one float32 tensor per layer, n x d, in probe order
      probes.jsonl                 the exact probe texts, in order, one {"text": ...} a line
      units.safetensors            (format 2) each block's MLP units in two views, float16,
                                   the first s probe texts x units (see mlp_units.py)

Format 2 adds the units file (or, when a model's MLPs cannot be captured, the reason in the
manifest's ``units.skipped``); format 1 fingerprints are still read, and hold no units.

`read_fingerprint` checks everything it can without a signature: the manifest is canonical and
of a known version, both files hash to the digests the manifest records, the texts hash to the
probe digest, and every tensor has the shape the manifest declares. `FingerprintWriter` builds
a fingerprint in a hidden staging directory next to the destination and renames it into place
only when complete, so a failure never leaves a half-written fingerprint.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from reef_forensics.digests import canonical_json, sha256_bytes, sha256_file, texts_digest
from reef_forensics.errors import FingerprintError
from reef_forensics.files import lone_surrogate, parse_json, split_lines
from reef_forensics.formats.probes import MIN_PROBES
from reef_forensics.formats.safetensors_file import Header, read_header, read_tensor

if TYPE_CHECKING:
    pass

FORMAT = "reef-fingerprint"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "fingerprint.json"
REPRESENTATIONS = "representations.safetensors"
PROBES = "probes.jsonl"
UNITS = "units.safetensors"
FILES = (MANIFEST, REPRESENTATIONS, PROBES, UNITS)  # every name a fingerprint may hold
EMBEDDINGS_LAYER = "embeddings"
UNIT_VIEWS = ("a", "b")
#: Probe texts whose MLP units are stored: the first ones, in probe order.
DEFAULT_UNIT_SAMPLES = 256
_FLOAT16_MAX = 65504.0


def unit_tensor(block: str, view: str) -> str:
    """The name of a block's view in units.safetensors: ``block_3.a``."""
    return f"{block}.{view}"


def layer_names(num_hidden_states: int) -> list[str]:
    """``embeddings`` for hidden_states[0], then ``block_1`` ... ``block_L``, each block's output."""
    return [layer_name(i) for i in range(num_hidden_states)]


def layer_name(index: int) -> str:
    """The name of hidden state ``index``: ``embeddings`` for 0, ``block_i`` otherwise."""
    return EMBEDDINGS_LAYER if index == 0 else f"block_{index}"


@dataclass(frozen=True)
class Fingerprint:
    """A fingerprint directory that passed `read_fingerprint`'s checks."""

    path: Path
    manifest: dict[str, Any]
    texts: tuple[str, ...]
    _header: Header
    _units_header: Header | None = None
    #: With `read_fingerprint(snapshot=True)`: every file's bytes, read once; tensors come from
    #: these, never from the disk again.
    _files: dict[str, bytes] | None = dataclasses.field(default=None, repr=False, compare=False)

    def _bytes(self, name: str) -> bytes | None:
        return None if self._files is None else self._files[name]

    @property
    def snapshot(self) -> dict[str, bytes] | None:
        """Every file's bytes, by name, as read once by ``read_fingerprint(snapshot=True)``."""
        return self._files

    @property
    def digest(self) -> str:
        """sha256 of the canonical manifest, which itself records the digests of both files."""
        return sha256_bytes(canonical_json(self.manifest))

    @property
    def layers(self) -> list[str]:
        return [layer["name"] for layer in self.manifest["representations"]["layers"]]

    @property
    def dims(self) -> list[int]:
        return [layer["dim"] for layer in self.manifest["representations"]["layers"]]

    @property
    def num_samples(self) -> int:
        return int(self.manifest["probes"]["count"])

    @property
    def probes_digest(self) -> str:
        return str(self.manifest["probes"]["digest"])

    @property
    def model_digest(self) -> str:
        return str(self.manifest["model"]["digest"])

    @property
    def model_name(self) -> str:
        return str(self.manifest["model"]["name"])

    @property
    def pooling(self) -> str:
        return str(self.manifest["extraction"]["pooling"])

    @property
    def layer_selection(self) -> tuple[int, ...] | None:
        """The hidden-state indices taken (``--layers``), or None when every layer was."""
        chosen = self.manifest["extraction"].get("layers")
        return None if chosen is None else tuple(chosen)

    @property
    def registry(self) -> dict[str, str] | None:
        """The registered version this fingerprint is of (``models:/NAME/VERSION``), if any."""
        found = self.manifest["model"].get("registry")
        return dict(found) if found is not None else None

    def describe(self) -> dict[str, str]:
        """Who this fingerprint is: its path and the digests that identify it."""
        return {
            "path": str(self.path),
            "digest": self.digest,
            "model_name": self.model_name,
            "model_digest": self.model_digest,
            "probes_digest": self.probes_digest,
        }

    def layer(self, name: str) -> NDArray[np.float32]:
        """One layer's representations, n x d float32, rows in probe order."""
        if name not in self._header.tensors:
            raise FingerprintError(
                f"{self.path}: no layer {name!r} (layers: {', '.join(self.layers)})"
            )
        values = read_tensor(
            self.path / REPRESENTATIONS, self._header.tensors[name], self._bytes(REPRESENTATIONS)
        )
        if not np.isfinite(values).all():
            raise FingerprintError(f"{self.path}: layer {name!r} holds NaN or infinite values")
        return values

    def iter_layers(self) -> Iterator[tuple[str, NDArray[np.float32]]]:
        for name in self.layers:
            yield name, self.layer(name)

    @property
    def format_version(self) -> int:
        return int(self.manifest["format_version"])

    @property
    def units(self) -> dict[str, Any] | None:
        """The manifest's description of the stored MLP units, or None when there are none."""
        units = self.manifest.get("units")
        return units if isinstance(units, dict) and "blocks" in units else None

    @property
    def units_skipped(self) -> str | None:
        """Why this fingerprint holds no MLP units (None when it holds them)."""
        if self.format_version < 2:
            return (
                "the fingerprint is of format 1, made before MLP units were recorded: "
                "fingerprint the model again with this version"
            )
        if self.units is None:
            return str(self.manifest["units"]["skipped"])
        return None

    @property
    def unit_blocks(self) -> dict[str, int]:
        """Block name -> number of MLP units stored for it (empty when none are)."""
        units = self.units
        return {} if units is None else {b["name"]: int(b["units"]) for b in units["blocks"]}

    def unit_views(self, block: str) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """A block's two views of its MLP units: (samples x units) float32 each."""
        if self._units_header is None or block not in self.unit_blocks:
            raise FingerprintError(f"{self.path}: no MLP units recorded for {block!r}")
        views = []
        for view in UNIT_VIEWS:
            values = read_tensor(
                self.path / UNITS,
                self._units_header.tensors[unit_tensor(block, view)],
                self._bytes(UNITS),
            )
            values = values.astype(np.float32)
            if not np.isfinite(values).all():
                raise FingerprintError(
                    f"{self.path}: units of {block!r} hold NaN or infinite values"
                )
            views.append(values)
        return views[0], views[1]


def read_fingerprint(path: str | os.PathLike[str], *, snapshot: bool = False) -> Fingerprint:
    """Open a fingerprint directory and check its integrity; raise `FingerprintError` if unsound.

    With ``snapshot``, each file the manifest lists (and the manifest) is read into memory once:
    its digest is taken of those bytes, and the texts, the headers and every tensor come from them
    too, so that a file changed on disk afterwards changes nothing computed (``verify
    --evidence`` checks the signature against the same bytes: `evidence.verify_fingerprint_snapshot`).
    Symbolic links are refused then. Without it, tensors are read from disk when asked for."""
    folder = Path(path)
    source = _Source(folder, snapshot)
    if not folder.is_dir():
        raise FingerprintError(f"fingerprint not found: {folder} is not a directory")
    for name in (MANIFEST, REPRESENTATIONS, PROBES):
        if not (folder / name).is_file():
            raise FingerprintError(f"{folder} is not a complete fingerprint: {name} is missing")
    manifest = _read_manifest(folder / MANIFEST, source.read(MANIFEST))
    recorded = manifest["files"]
    data_files = [REPRESENTATIONS, PROBES] + ([UNITS] if UNITS in recorded else [])
    if set(recorded) != set(data_files):
        raise FingerprintError(f"{folder}: {MANIFEST} records other files than a fingerprint holds")
    for name in data_files:
        if not (folder / name).is_file():
            raise FingerprintError(f"{folder} is not a complete fingerprint: {name} is missing")
        if source.digest(name) != recorded.get(name):
            raise FingerprintError(
                f"{folder}: {name} does not match the digest in {MANIFEST} (modified after it was made)"
            )
    texts = tuple(_read_texts(folder / PROBES, source.read(PROBES)))
    if (
        len(texts) != manifest["probes"]["count"]
        or texts_digest(texts) != manifest["probes"]["digest"]
    ):
        raise FingerprintError(
            f"{folder}: {PROBES} does not match the probe digest and count in {MANIFEST}"
        )
    try:
        header = read_header(folder / REPRESENTATIONS, source.read(REPRESENTATIONS))
    except Exception as exc:
        raise FingerprintError(str(exc)) from None
    layers = manifest["representations"]["layers"]
    if {layer["name"] for layer in layers} != set(header.tensors):  # the manifest sets the order
        raise FingerprintError(f"{folder}: the layers in {REPRESENTATIONS} differ from {MANIFEST}")
    for layer in layers:
        entry = header.tensors[layer["name"]]
        if entry.dtype != "F32" or entry.shape != (len(texts), layer["dim"]):
            raise FingerprintError(
                f"{folder}: layer {layer['name']!r} is {entry.dtype} {list(entry.shape)}, "
                f"expected F32 [{len(texts)}, {layer['dim']}]"
            )
    units_header = (
        _read_units_header(folder, manifest, len(texts), source.read(UNITS))
        if UNITS in recorded
        else None
    )
    return Fingerprint(
        path=folder,
        manifest=manifest,
        texts=texts,
        _header=header,
        _units_header=units_header,
        _files=source.files,
    )


class _Source:
    """Where `read_fingerprint` takes a file's bytes from: the disk at each use, or (snapshot)
    memory, each file read once, the first time it is asked for."""

    def __init__(self, folder: Path, snapshot: bool) -> None:
        self.folder = folder
        self.files: dict[str, bytes] | None = {} if snapshot else None

    def read(self, name: str) -> bytes | None:
        """The file's bytes from the snapshot (read now if not yet), or None without one."""
        if self.files is None:
            return None
        if name not in self.files:
            path = self.folder / name
            if path.is_symlink():
                raise FingerprintError(f"{path} is a symbolic link: a fingerprint holds only files")
            self.files[name] = path.read_bytes()
        return self.files[name]

    def digest(self, name: str) -> str:
        data = self.read(name)
        return sha256_file(self.folder / name) if data is None else sha256_bytes(data)


def _read_units_header(
    folder: Path, manifest: dict[str, Any], count: int, data: bytes | None = None
) -> Header:
    """units.safetensors: exactly the declared blocks' two views, F16 [samples, units]."""
    units = manifest.get("units")
    if not isinstance(units, dict) or "blocks" not in units:
        raise FingerprintError(f"{folder}: {UNITS} is present but {MANIFEST} describes no units")
    try:
        header = read_header(folder / UNITS, data)
    except Exception as exc:
        raise FingerprintError(str(exc)) from None
    samples = units["samples"]
    expected = {
        unit_tensor(block["name"], view): (samples, block["units"])
        for block in units["blocks"]
        for view in UNIT_VIEWS
    }
    if set(header.tensors) != set(expected):
        raise FingerprintError(f"{folder}: the tensors in {UNITS} differ from {MANIFEST}")
    for name, shape in expected.items():
        entry = header.tensors[name]
        if entry.dtype != "F16" or entry.shape != shape:
            raise FingerprintError(
                f"{folder}: units {name!r} are {entry.dtype} {list(entry.shape)}, "
                f"expected F16 {list(shape)}"
            )
    if not 1 <= samples <= count:
        raise FingerprintError(f"{folder}: {MANIFEST} records units for {samples} of {count} texts")
    return header


def _read_manifest(path: Path, raw: bytes | None = None) -> dict[str, Any]:
    raw = path.read_bytes() if raw is None else raw
    try:
        manifest = parse_json(raw)
    except ValueError:
        raise FingerprintError(f"{path} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FingerprintError(f"{path} is not a reef-forensics fingerprint manifest")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise FingerprintError(
            f"{path}: format version {manifest.get('format_version')!r} is not supported "
            f"(this tool reads versions {', '.join(map(str, READABLE_VERSIONS))})"
        )
    if not _is_canonical(manifest, raw):
        raise FingerprintError(f"{path} is not in canonical form (edited by hand?)")
    try:
        problem = _manifest_problem(manifest)
    except (KeyError, TypeError):
        problem = "lacks required fields or has fields of the wrong type"
    if problem:
        raise FingerprintError(f"{path} {problem}")
    return manifest


def _is_canonical(value: Any, raw: bytes) -> bool:
    """Whether ``raw`` is the canonical form of the ``value`` parsed from it. Python's parser
    accepts what canonical JSON cannot hold (NaN, infinities, integers beyond 2**53, lone
    surrogates): such a file has no canonical form, so it is not in it."""
    try:
        return canonical_json(value) == raw
    except ValueError:
        return False


_LAYER_NAME = re.compile(r"embeddings|block_[1-9][0-9]*")


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with a manifest's fields, or None (KeyError/TypeError for missing ones)."""
    strings = (
        manifest["model"]["digest"],
        manifest["model"]["name"],
        manifest["model"]["kind"],
        manifest["probes"]["digest"],
        manifest["extraction"]["pooling"],
    )
    if not all(isinstance(value, str) for value in strings) or not isinstance(
        manifest["files"], dict
    ):
        return "lacks required fields or has fields of the wrong type"
    count = manifest["probes"]["count"]
    if not isinstance(count, int) or count < MIN_PROBES:
        return f"records {count!r} probe texts; a fingerprint holds at least {MIN_PROBES}"
    layers = manifest["representations"]["layers"]
    if not isinstance(layers, list) or not layers:
        return "lists no layers"
    names = [layer["name"] for layer in layers]
    if not all(isinstance(n, str) and _LAYER_NAME.fullmatch(n) for n in names) or len(
        set(names)
    ) != len(names):
        return "has layer names other than unique 'embeddings' and 'block_N'"
    if not all(isinstance(layer["dim"], int) and layer["dim"] >= 1 for layer in layers):
        return "has a layer width that is not a positive integer"
    chosen = manifest["extraction"].get("layers")
    if chosen is not None and (
        not isinstance(chosen, list)
        or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in chosen)
        or chosen != sorted(set(chosen))
        or [layer_name(i) for i in chosen] != names
    ):
        return "records a layer selection (extraction.layers) that does not match its layers"
    if "registry" in manifest["model"]:
        from reef_forensics.formats.naming import registry_problem

        problem = registry_problem(manifest["model"]["registry"])
        if problem:
            return problem
    if manifest["format_version"] >= 2:
        return _units_problem(manifest["units"], names)
    if "units" in manifest:
        return "is of format 1 but records MLP units"
    return None


def _units_problem(units: Any, layers: list[str]) -> str | None:
    """What is wrong with a format 2 manifest's ``units`` (KeyError/TypeError when missing)."""
    if not isinstance(units, dict):
        return "has a units entry that is not an object"
    if "blocks" not in units:
        return (
            None
            if isinstance(units.get("skipped"), str)
            else "says neither which MLP units it holds nor why none"
        )
    blocks = units["blocks"]
    if not (
        isinstance(units["kind"], str)
        and isinstance(units["samples"], int)
        and not isinstance(units["samples"], bool)
        and isinstance(blocks, list)
        and blocks
        and all(isinstance(b["name"], str) and b["name"] in layers for b in blocks)
        and all(
            isinstance(b["units"], int) and not isinstance(b["units"], bool) and b["units"] >= 1
            for b in blocks
        )
        and len({b["name"] for b in blocks}) == len(blocks)
    ):
        return "describes its MLP units with missing or malformed fields"
    return None


def _read_texts(path: Path, raw: bytes | None = None) -> list[str]:
    texts = []
    try:
        lines = split_lines((path.read_bytes() if raw is None else raw).decode("utf-8"))
    except UnicodeDecodeError:
        raise FingerprintError(f"{path} is not UTF-8 text") from None
    for number, line in enumerate(lines, start=1):
        try:
            row = parse_json(line)
            text = row["text"]
            if not isinstance(text, str) or lone_surrogate(text) is not None:
                raise TypeError  # JSON's "\ud800", a lone surrogate, is no text
            texts.append(text)
        except (ValueError, KeyError, TypeError):
            raise FingerprintError(f'{path}:{number}: not a {{"text": ...}} line') from None
    return texts


def is_fingerprint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a fingerprint directory (it holds a manifest); the one test of it.
    Reading it (`read_fingerprint`) is what checks that it is a sound one."""
    folder = Path(path)
    return folder.is_dir() and (folder / MANIFEST).is_file()
