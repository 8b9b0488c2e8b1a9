"""Writing a fingerprint: `FingerprintWriter` stages the files, signs them when given a signer, reads the result back and only then renames it into place; `check_destination` and `replace_directory` guard what it replaces."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from reef_forensics.digests import canonical_json, sha256_file
from reef_forensics.errors import FingerprintError
from reef_forensics.formats.safetensors_file import StreamWriter

if TYPE_CHECKING:
    from reef_forensics.crypto.keys import Signer
from reef_forensics.formats.fingerprint import (
    _FLOAT16_MAX,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PROBES,
    REPRESENTATIONS,
    UNIT_VIEWS,
    UNITS,
    Fingerprint,
    is_fingerprint,
    read_fingerprint,
    unit_tensor,
)


def created_timestamp() -> str:
    """UTC now, or SOURCE_DATE_EPOCH when set (reproducible builds)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = (
        datetime.fromtimestamp(int(epoch), tz=timezone.utc) if epoch else datetime.now(timezone.utc)
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class FingerprintWriter:
    """Build a fingerprint in a staging directory; `commit` renames it into place.

    Use as a context manager: leaving the block with an exception removes the staging
    directory, and nothing appears at the destination.
    """

    def __init__(self, out: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.out = Path(out)
        check_destination(self.out, overwrite=overwrite)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.overwrite = overwrite
        self.staging = Path(
            tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".partial", dir=self.out.parent)
        )
        self.staging.chmod(0o755)  # mkdtemp makes it private; evidence is meant to be read
        self._stream: StreamWriter | None = None
        self._layers: list[dict[str, Any]] = []
        self._units_stream: StreamWriter | None = None
        self._units: dict[str, Any] = {"skipped": "no MLP units were captured"}

    def __enter__(self) -> FingerprintWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for stream in (self._stream, self._units_stream):
            if stream is not None:
                stream.close()
        self._stream = self._units_stream = None
        if self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)

    def start(self, names: Sequence[str], dims: Sequence[int], num_samples: int) -> None:
        """Declare the layers; allocates the representations file."""
        self._layers = [{"name": n, "dim": int(d)} for n, d in zip(names, dims, strict=True)]
        self._stream = StreamWriter(
            self.staging / REPRESENTATIONS,
            [(n, (num_samples, int(d))) for n, d in zip(names, dims, strict=True)],
            metadata={"format": FORMAT},
        )

    @property
    def started(self) -> bool:
        return self._stream is not None

    def start_units(
        self, kind: str, views: Sequence[str], blocks: Sequence[tuple[str, int]], samples: int
    ) -> None:
        """Declare the MLP units to store: ``blocks`` (name, units), for the first ``samples``
        probe texts; allocates units.safetensors (float16)."""
        self._units = {
            "kind": kind,
            "views": list(views),
            "samples": samples,
            "texts": f"the first {samples} probe texts, pooled like the representations",
            "dtype": "float16",
            "blocks": [{"name": name, "units": int(units)} for name, units in blocks],
        }
        self._units_stream = StreamWriter(
            self.staging / UNITS,
            [
                (unit_tensor(name, view), (samples, int(units)))
                for name, units in blocks
                for view in UNIT_VIEWS
            ],
            metadata={"format": FORMAT},
            dtype="F16",
        )

    def skip_units(self, reason: str) -> None:
        """Record why no MLP units are stored (the neuron-matching test will say it)."""
        self._units = {"skipped": reason}

    def write_unit_rows(
        self, indices: NDArray[np.int64], block: str, a: NDArray[np.float32], b: NDArray[np.float32]
    ) -> None:
        """Rows of one block's two views, for probe positions ``indices`` (those below the
        declared number of samples are kept; values beyond float16's range are clipped)."""
        assert self._units_stream is not None, "start_units() first"
        keep = np.asarray(indices) < self._units["samples"]
        if not keep.any():
            return
        for view, values in zip(UNIT_VIEWS, (a, b), strict=True):
            clipped = np.clip(values[keep], -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16)
            self._units_stream.write_rows(
                unit_tensor(block, view), np.asarray(indices)[keep], clipped
            )

    def write_rows(self, indices: NDArray[np.int64], layers: Sequence[NDArray[np.float32]]) -> None:
        assert self._stream is not None, "start() first"
        for layer, values in zip(self._layers, layers, strict=True):
            self._stream.write_rows(layer["name"], indices, values)

    def commit(
        self, texts: Sequence[str], manifest: dict[str, Any], *, signer: Signer | None = None
    ) -> Fingerprint:
        """Write the texts and the manifest (completed with layers and file digests), sign the
        directory when a signer is given, check it reads back, then rename it into place."""
        assert self._stream is not None, "start() first"
        self._stream.close()
        self._stream = None
        files = {}
        if self._units_stream is not None:
            self._units_stream.close()
            self._units_stream = None
            files[UNITS] = sha256_file(self.staging / UNITS)
        with open(self.staging / PROBES, "w", encoding="utf-8", newline="\n") as handle:
            for text in texts:
                handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        full = {
            **manifest,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "representations": {"dtype": "float32", "layers": self._layers},
            "units": self._units,
            "files": {
                PROBES: sha256_file(self.staging / PROBES),
                REPRESENTATIONS: sha256_file(self.staging / REPRESENTATIONS),
                **files,
            },
        }
        (self.staging / MANIFEST).write_bytes(canonical_json(full))
        if signer is not None:
            from reef_forensics.crypto.bundle import sign_directory

            sign_directory(self.staging, signer, name=self.out.name)
        finished = read_fingerprint(self.staging)  # never put in place what cannot be read back
        replace_directory(self.staging, self.out)
        return dataclasses.replace(finished, path=self.out)


def check_destination(out: Path, *, overwrite: bool) -> None:
    """Refuse to write over an existing path unless asked; never write over a non-fingerprint."""
    if not out.exists():
        return
    if not overwrite:
        raise FingerprintError(f"{out} already exists (pass --overwrite to replace it)")
    entries = [] if out.is_file() else list(out.iterdir())
    replaceable = not out.is_file() and (
        not entries or (is_fingerprint(out) and all(e.is_file() for e in entries))
    )
    if not replaceable:
        raise FingerprintError(
            f"{out} exists and is not a fingerprint directory: refusing to replace it"
        )


def replace_directory(staging: Path, out: Path) -> None:
    """Move a finished staging directory to ``out``, replacing an old one only at the end."""
    if not out.exists():
        staging.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    try:
        staging.rename(out)
    except OSError:
        old.rename(out)  # put the previous fingerprint back
        raise
    shutil.rmtree(old, ignore_errors=True)
