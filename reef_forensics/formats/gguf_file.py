"""Check a GGUF file's header without trusting it, before any GGUF reader sees it.

A GGUF file is ``GGUF``, a version, a tensor count and a metadata count, the metadata
(key, type, value; arrays of any type, nested or not), one info record per tensor (name,
dimensions, type, offset into the data section), padding to the alignment, then the data.
`gguf.GGUFReader`, which transformers uses, trusts every count it reads: one numpy view per
array element (about 1 KB of memory per item of a hostile array, 1.8 KB per empty string: 3.7 GB
for a 16 MB file of 2 million empty strings) and no check that tensors lie inside the file or
apart from each other. `read_gguf_header` walks the header streaming, checks every count, length,
dimension and offset against the real file size and a few generous caps, and allocates nothing in
proportion to what the file declares.

Metadata is capped three ways: `MAX_METADATA_BYTES` in all, `MAX_ARRAY_ITEMS` array items in all,
and array items in proportion to the tensor data (`FREE_ARRAY_ITEMS` plus one per
`TENSOR_BYTES_PER_ITEM` bytes): a real tokenizer's arrays (tokens, scores, types, merges: four
to five items per vocabulary entry) come with an embedding of at least hundreds of bytes per
entry, where a file made to exhaust the reader's memory has its items and nothing else.
"""

from __future__ import annotations

import itertools
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from reef_forensics.errors import BadInputError

#: More tensors than any released checkpoint has (a 405B Llama has about 1,100).
MAX_TENSORS = 1 << 16
MAX_METADATA = 1 << 16
#: Array elements over all metadata: twice the largest tokenizer's tokens, scores, types and
#: merges together (a 262k vocabulary gives about 800k).
MAX_ARRAY_ITEMS = 1 << 21
#: Array items any file may hold (70 to 120 MB in gguf's reader), and the tensor data each
#: further item needs: a 262k-token vocabulary (786k items) needs 46 MB of tensors, where the
#: embedding alone of the smallest such model (Gemma 3 270M, hidden size 640) takes 94 MB at
#: 4.5 bits per value.
FREE_ARRAY_ITEMS = 1 << 16
TENSOR_BYTES_PER_ITEM = 64
#: All metadata together: several times the largest tokenizer's (about 10 MB).
MAX_METADATA_BYTES = 64 << 20
MAX_ARRAY_DEPTH = 4
MAX_NAME = 1 << 16
MAX_DIMS = 4  # GGML_MAX_DIMS
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
_STRING, _ARRAY, _UINT32 = 8, 9, 4
#: metadata value type -> struct format, for the fixed-size types
_SCALAR_FORMATS = {
    0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"
}  # fmt: skip
_SCALAR_SIZES = {kind: struct.calcsize("<" + code) for kind, code in _SCALAR_FORMATS.items()}
#: smallest possible metadata entry (key length, type, one-byte value) and tensor info record
_MIN_METADATA_BYTES = 8 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8


@dataclass(frozen=True)
class GgufTensor:
    name: str
    type: int
    shape: tuple[int, ...]
    begin: int  # absolute file offset
    end: int


@dataclass(frozen=True)
class GgufHeader:
    version: int
    metadata_keys: tuple[str, ...]
    #: the metadata values that are single numbers or booleans (strings and arrays are skipped)
    scalars: dict[str, int | float | bool]
    tensors: tuple[GgufTensor, ...]
    alignment: int
    data_start: int


class _Cursor:
    """Reads a file front to back, refusing any read or skip past its end."""

    def __init__(self, handle: BinaryIO, size: int, path: Path) -> None:
        self.handle, self.size, self.path = handle, size, path
        self.position = 0
        self.order = "<"
        self.array_items = 0

    def take(self, count: int, what: str) -> bytes:
        self._reserve(count, what)
        data = self.handle.read(count)
        self.position += count
        return data

    def skip(self, count: int, what: str) -> None:
        self._reserve(count, what)
        self.position += count
        self.handle.seek(self.position)

    def _reserve(self, count: int, what: str) -> None:
        if count > self.size - self.position:
            raise bad_gguf(
                self.path, f"{what} needs {count} bytes at offset {self.position}, past the end"
            )

    def u32(self, what: str) -> int:
        value: int = struct.unpack(self.order + "I", self.take(4, what))[0]
        return value

    def u64(self, what: str) -> int:
        value: int = struct.unpack(self.order + "Q", self.take(8, what))[0]
        return value

    def scalar(self, kind: int, what: str) -> int | float | bool:
        code = _SCALAR_FORMATS[kind]
        value: int | float | bool = struct.unpack(
            self.order + code, self.take(_SCALAR_SIZES[kind], what)
        )[0]
        return value

    def text(self, what: str) -> str:
        length = self.u64(what)
        if length > MAX_NAME:
            raise bad_gguf(self.path, f"{what} is {length} bytes long (at most {MAX_NAME})")
        try:
            return self.take(length, what).decode("utf-8")
        except UnicodeDecodeError:
            raise bad_gguf(self.path, f"{what} is not UTF-8") from None


def bad_gguf(path: Path, why: str) -> BadInputError:
    return BadInputError(f"{path} is not a valid GGUF file: {why}")


def read_gguf_header(path: Path) -> GgufHeader:
    """Parse and validate a GGUF header; raise `BadInputError` if any part of it is unsound."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            return _read(_Cursor(handle, size, path))
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror or exc}") from None


def _read(cursor: _Cursor) -> GgufHeader:
    path = cursor.path
    if cursor.take(4, "the magic bytes") != b"GGUF":
        raise bad_gguf(path, "bad magic bytes")
    version = cursor.u32("the version")
    if version & 0xFFFF == 0:  # written on a big-endian machine: every number is swapped
        cursor.order = ">"
        version = struct.unpack(">I", struct.pack("<I", version))[0]
    if version not in SUPPORTED_VERSIONS:
        raise bad_gguf(path, f"version {version} (supported: 2 and 3)")
    tensor_count = cursor.u64("the tensor count")
    metadata_count = cursor.u64("the metadata count")
    _check_count(cursor, metadata_count, MAX_METADATA, _MIN_METADATA_BYTES, "metadata entries")
    keys, scalars, alignment = _read_metadata(cursor, metadata_count)
    _check_count(cursor, tensor_count, MAX_TENSORS, _MIN_TENSOR_INFO_BYTES, "tensors")
    infos = [_read_tensor_info(cursor) for _ in range(tensor_count)]
    data_start = cursor.position + (-cursor.position % alignment)
    tensors = tuple(_place(path, info, data_start, alignment, cursor.size) for info in infos)
    _check_names_and_overlaps(path, tensors)
    _check_items_against_tensors(cursor, tensors)
    return GgufHeader(version, tuple(keys), scalars, tensors, alignment, data_start)


def _check_items_against_tensors(cursor: _Cursor, tensors: tuple[GgufTensor, ...]) -> None:
    tensor_bytes = sum(t.end - t.begin for t in tensors)
    allowed = FREE_ARRAY_ITEMS + tensor_bytes // TENSOR_BYTES_PER_ITEM
    if cursor.array_items > allowed:
        raise bad_gguf(
            cursor.path,
            f"its metadata arrays hold {cursor.array_items} items, more than its {tensor_bytes} "
            f"bytes of tensor data allow ({allowed}: {FREE_ARRAY_ITEMS} and one per "
            f"{TENSOR_BYTES_PER_ITEM} bytes); gguf's reader would take about 1 KB of memory "
            "per item",
        )


def _check_count(cursor: _Cursor, count: int, cap: int, least_bytes: int, what: str) -> None:
    room = cursor.size - cursor.position
    if count > cap or count * least_bytes > room:
        raise bad_gguf(
            cursor.path,
            f"declares {count} {what} in a {cursor.size}-byte file (at most {cap}, "
            f"each at least {least_bytes} bytes)",
        )


def _read_metadata(
    cursor: _Cursor, count: int
) -> tuple[list[str], dict[str, int | float | bool], int]:
    keys: list[str] = []
    seen: set[str] = set()
    scalars: dict[str, int | float | bool] = {}
    alignment = DEFAULT_ALIGNMENT
    start = cursor.position
    for _ in range(count):
        key = cursor.text("a metadata key")
        if key in seen:
            raise bad_gguf(cursor.path, f"metadata key {key!r} appears twice")
        seen.add(key)
        keys.append(key)
        kind = cursor.u32(f"the type of {key!r}")
        if key == "general.alignment":
            alignment = _read_alignment(cursor, kind)
        elif kind in _SCALAR_FORMATS:
            scalars[key] = cursor.scalar(kind, f"the value of {key!r}")
        else:
            _skip_value(cursor, kind, key, depth=0)
        if cursor.position - start > MAX_METADATA_BYTES:
            raise bad_gguf(cursor.path, f"its metadata takes more than {MAX_METADATA_BYTES} bytes")
    return keys, scalars, alignment


def _read_alignment(cursor: _Cursor, kind: int) -> int:
    if kind != _UINT32:
        raise bad_gguf(cursor.path, "general.alignment is not a uint32")
    alignment = cursor.u32("general.alignment")
    if alignment == 0 or alignment & (alignment - 1):
        raise bad_gguf(cursor.path, f"general.alignment {alignment} is not a power of two")
    return alignment


def _skip_value(cursor: _Cursor, kind: int, key: str, *, depth: int) -> None:
    """Step over one metadata value; arrays count towards `MAX_ARRAY_ITEMS`."""
    if kind in _SCALAR_SIZES:
        cursor.skip(_SCALAR_SIZES[kind], f"the value of {key!r}")
    elif kind == _STRING:
        cursor.skip(cursor.u64(f"the length of {key!r}"), f"the string {key!r}")
    elif kind == _ARRAY:
        if depth >= MAX_ARRAY_DEPTH:
            raise bad_gguf(cursor.path, f"{key!r} nests arrays more than {MAX_ARRAY_DEPTH} deep")
        item_kind = cursor.u32(f"the item type of {key!r}")
        length = cursor.u64(f"the length of {key!r}")
        cursor.array_items += length
        if cursor.array_items > MAX_ARRAY_ITEMS:
            raise bad_gguf(
                cursor.path,
                f"array {key!r} declares {length} items: the metadata arrays would hold more "
                f"than {MAX_ARRAY_ITEMS}",
            )
        if item_kind in _SCALAR_SIZES:
            cursor.skip(length * _SCALAR_SIZES[item_kind], f"the array {key!r}")
        else:
            for _ in range(length):
                _skip_value(cursor, item_kind, key, depth=depth + 1)
    else:
        raise bad_gguf(cursor.path, f"{key!r} has unknown value type {kind}")


def _read_tensor_info(cursor: _Cursor) -> tuple[str, tuple[int, ...], int, int]:
    name = cursor.text("a tensor name")
    dims = cursor.u32(f"the dimension count of {name!r}")
    if dims > MAX_DIMS:
        raise bad_gguf(cursor.path, f"tensor {name!r} has {dims} dimensions (at most {MAX_DIMS})")
    shape = tuple(cursor.u64(f"the shape of {name!r}") for _ in range(dims))
    kind = cursor.u32(f"the type of {name!r}")
    offset = cursor.u64(f"the offset of {name!r}")
    return name, shape, kind, offset


def _place(
    path: Path,
    info: tuple[str, tuple[int, ...], int, int],
    data_start: int,
    alignment: int,
    size: int,
) -> GgufTensor:
    """A tensor's byte range in the file, checked against its type, alignment and the file size."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    name, shape, kind, offset = info
    try:
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
    except (ValueError, KeyError):
        raise bad_gguf(path, f"tensor {name!r} has unknown type {kind}") from None
    if shape and shape[0] % block:
        raise bad_gguf(path, f"tensor {name!r}: row length {shape[0]} is not a multiple of {block}")
    if offset % alignment:
        raise bad_gguf(path, f"tensor {name!r}: offset {offset} is not aligned to {alignment}")
    nbytes = math.prod(shape) // block * block_bytes
    begin = data_start + offset
    if begin + nbytes > size:
        raise bad_gguf(
            path,
            f"tensor {name!r} declares {nbytes} bytes at offset {begin}, past the end of the "
            f"{size}-byte file (truncated?)",
        )
    return GgufTensor(name, kind, shape, begin, begin + nbytes)


def _check_names_and_overlaps(path: Path, tensors: tuple[GgufTensor, ...]) -> None:
    names: set[str] = set()
    for tensor in tensors:
        if tensor.name in names:
            raise bad_gguf(path, f"tensor {tensor.name!r} appears twice")
        names.add(tensor.name)
    ranges = sorted((t.begin, t.end, t.name) for t in tensors if t.end > t.begin)
    for (_, end_a, name_a), (begin_b, _, name_b) in itertools.pairwise(ranges):
        if begin_b < end_a:
            raise bad_gguf(path, f"tensors {name_a!r} and {name_b!r} overlap")
