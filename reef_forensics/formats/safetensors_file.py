"""Read, check and stream-write safetensors files without trusting their headers.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping tensor
names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data
section), optional ``"__metadata__"`` (str to str), then the data. `read_header` checks every
declared size and offset against the real file size before anything is allocated, so a
truncated file or a hostile header (huge shapes, overlapping ranges) is refused cleanly.
`StreamWriter` writes a file whose shapes are known up front, row blocks at a time, through a
memory map: representations go to disk as extraction goes.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from reef_forensics.errors import BadInputError
from reef_forensics.files import parse_json

#: safetensors dtype name -> (numpy dtype or None when numpy has no such type, item size)
DTYPES: dict[str, tuple[str | None, int]] = {
    "BOOL": ("bool", 1),
    "U8": ("<u1", 1),
    "I8": ("<i1", 1),
    "F8_E5M2": (None, 1),
    "F8_E4M3": (None, 1),
    "I16": ("<i2", 2),
    "U16": ("<u2", 2),
    "F16": ("<f2", 2),
    "BF16": (None, 2),
    "I32": ("<i4", 4),
    "U32": ("<u4", 4),
    "F32": ("<f4", 4),
    "F64": ("<f8", 8),
    "I64": ("<i8", 8),
    "U64": ("<u8", 8),
}
#: The largest JSON header read. Parsing costs up to about 20 bytes of memory per header byte
#: (hostile JSON: empty lists or objects), so a 100 MB header (the safetensors library's cap)
#: could take 2 GB. Real headers take about 130 bytes per tensor: 16 MiB is over 100,000
#: tensors in one file, where checkpoints put a few thousand per shard.
MAX_HEADER = 16 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offset
    end: int


@dataclass(frozen=True)
class Header:
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int


def read_header(path: Path, data: bytes | None = None) -> Header:
    """Parse and validate the header of a safetensors file; raise `BadInputError` if unsound.
    ``data``: the file's bytes, read already (then they are parsed, and ``path`` only names them)."""
    try:
        size = path.stat().st_size if data is None else len(data)
        with open(path, "rb") if data is None else io.BytesIO(data) as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise _bad(path, "shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > size - 8:
                raise _bad(path, f"declares a {header_len}-byte header in a {size}-byte file")
            if header_len > MAX_HEADER:
                raise _bad(path, f"declares a {header_len}-byte header (at most {MAX_HEADER})")
            raw = handle.read(header_len)
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        header = parse_json(raw)
    except ValueError:
        raise _bad(path, "header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")
    data_start = 8 + header_len
    data_len = size - data_start
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _bad(path, "__metadata__ must map strings to strings")
    tensors: dict[str, TensorEntry] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        entry = _parse_entry(path, name, info, data_len)
        tensors[name] = TensorEntry(
            name, entry[0], entry[1], data_start + entry[2], data_start + entry[3]
        )
        spans.append((entry[2], entry[3], name))
    spans.sort()
    for (_, end_a, name_a), (begin_b, _, name_b) in itertools.pairwise(spans):
        if begin_b < end_a:
            raise _bad(path, f"tensors {name_a!r} and {name_b!r} overlap")
    return Header(tensors=tensors, metadata=dict(metadata), data_start=data_start)


def _parse_entry(
    path: Path, name: str, info: Any, data_len: int
) -> tuple[str, tuple[int, ...], int, int]:
    if not isinstance(info, dict):
        raise _bad(path, f"entry {name!r} is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPES:
        raise _bad(path, f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _bad(path, f"tensor {name!r} has an invalid shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and o >= 0 for o in offsets)
    ):
        raise _bad(path, f"tensor {name!r} has invalid data offsets")
    begin, end = offsets
    expected = math.prod(shape) * DTYPES[dtype][1]
    if end < begin or end - begin != expected:
        raise _bad(path, f"tensor {name!r} declares {expected} bytes but spans {end - begin}")
    if end > data_len:
        raise _bad(path, f"tensor {name!r} ends past the end of the file (truncated?)")
    return dtype, tuple(shape), begin, end


def _bad(path: Path, why: str) -> BadInputError:
    return BadInputError(f"{path} is not a valid safetensors file: {why}")


def read_tensor(path: Path, entry: TensorEntry, data: bytes | None = None) -> NDArray[Any]:
    """Read one tensor of a validated header into memory (numpy dtypes only); from ``data``, the
    file's bytes read already, when given."""
    numpy_dtype = DTYPES[entry.dtype][0]
    if numpy_dtype is None:
        raise BadInputError(
            f"{path}: tensor {entry.name!r} has dtype {entry.dtype}, not readable here"
        )
    count = math.prod(entry.shape)
    if data is not None:
        raw: bytes | memoryview = memoryview(data)[entry.begin : entry.end]
    else:
        with open(path, "rb") as handle:
            handle.seek(entry.begin)
            raw = handle.read(entry.end - entry.begin)
    array = np.frombuffer(raw, dtype=numpy_dtype, count=count)
    return array.reshape(entry.shape).copy()


class StreamWriter:
    """Write a safetensors file of 2-D float tensors (F32, or F16) whose shapes are known in advance.

    The header and file length are written first; rows are then filled in any order through a
    memory map. `close` flushes. Every row of every tensor should be written before closing;
    unwritten rows read back as zeros.
    """

    def __init__(
        self,
        path: Path,
        shapes: Sequence[tuple[str, tuple[int, int]]],
        metadata: Mapping[str, str] | None = None,
        dtype: str = "F32",
    ) -> None:
        if dtype not in ("F32", "F16"):
            raise ValueError(f"StreamWriter writes F32 or F16, not {dtype}")
        numpy_dtype, itemsize = "<f4" if dtype == "F32" else "<f2", DTYPES[dtype][1]
        header: dict[str, Any] = {}
        if metadata:
            header["__metadata__"] = dict(metadata)
        offset = 0
        for name, shape in shapes:
            nbytes = shape[0] * shape[1] * itemsize
            header[name] = {
                "dtype": dtype,
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self._path = path
        self._data_start = 8 + len(raw)
        with open(path, "wb") as handle:
            handle.write(struct.pack("<Q", len(raw)))
            handle.write(raw)
            handle.truncate(self._data_start + offset)
        self._views: dict[str, np.memmap[Any, np.dtype[Any]]] = {}
        for name, shape in shapes:
            begin = header[name]["data_offsets"][0]
            if shape[0] * shape[1] == 0:
                continue
            self._views[name] = np.memmap(
                path, dtype=numpy_dtype, mode="r+", offset=self._data_start + begin, shape=shape
            )

    def write_rows(
        self, name: str, rows: NDArray[np.int64] | Sequence[int], values: NDArray[Any]
    ) -> None:
        """Store ``values[k]`` as row ``rows[k]`` of tensor ``name``."""
        if name in self._views:
            self._views[name][np.asarray(rows)] = values

    def close(self) -> None:
        for view in self._views.values():
            view.flush()
        self._views.clear()
