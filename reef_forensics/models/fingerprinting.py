"""Making a fingerprint: resolve and digest a model, load it, extract, write.

`fingerprint_model` is what the CLI's ``fingerprint`` command and the MLflow worker call.
`fingerprint_loaded` does the same for a model already in memory (benchmarks, tests, callers
that fingerprint one model on several probe sets).

Representations go to disk batch by batch (`FingerprintWriter` fills a memory-mapped file), so
memory holds one batch's activations, never the whole fingerprint. With device ``auto`` and a
small ``max_memory``, the weights that do not fit stay on disk until their block runs: peak
memory is about the largest block plus one batch's activations (docs/formats.md, bench/).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from reef_forensics._version import __version__
from reef_forensics.formats.fingerprint import (
    DEFAULT_UNIT_SAMPLES,
    Fingerprint,
    layer_name,
    layer_names,
)
from reef_forensics.formats.fingerprint_writer import (
    FingerprintWriter,
    check_destination,
    created_timestamp,
)
from reef_forensics.formats.probes import ProbeSet, load_probes
from reef_forensics.models.extraction import (
    PaddingSide,
    Pooling,
    default_pooling,
    iter_pooled,
    num_blocks,
    parse_layers,
    tokenize_probes,
)
from reef_forensics.models.loading import (
    LoadedModel,
    ModelDigest,
    load_model,
    model_digest,
    resolve_model,
)
from reef_forensics.models.mlp_units import VIEWS, UnitCapture, UnitsUnsupported
from reef_forensics.models.placement import resolve_device

if TYPE_CHECKING:
    from reef_forensics.crypto.keys import Signer

DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_LENGTH = 512


def fingerprint_model(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    probes: ProbeSet | None = None,
    pooling: Pooling | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: int = DEFAULT_MAX_LENGTH,
    dtype: str = "float32",
    device: str = "cpu",
    padding_side: PaddingSide = "right",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    signer: Signer | None = None,
    layers: str | Sequence[int] | None = None,
    max_memory: str | Mapping[Any, Any] | None = None,
    offload_dir: str | os.PathLike[str] | None = None,
    unit_samples: int = DEFAULT_UNIT_SAMPLES,
    name: str | None = None,
    registry: Mapping[str, str] | None = None,
) -> Fingerprint:
    """Fingerprint the model at ``model`` (a Hugging Face folder or a GGUF file) into ``out``.

    ``name`` replaces the folder's (or file's) name in the manifest; ``registry`` records the
    registered version it is (`naming.registry_identity`).

    ``device`` is ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (accelerate's device map over the
    GPUs, the CPU and the disk, capped by ``max_memory``; see `load_model`). ``layers`` keeps
    only some hidden states (`parse_layers`). Raises a `BadInputError` subclass for anything
    the caller can fix; nothing is left at ``out`` when it fails.
    """
    probe_set = probes if probes is not None else load_probes()
    check_destination(Path(out), overwrite=overwrite)
    if device != "auto":
        device = resolve_device(device)
    source = resolve_model(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    digest = model_digest(source)
    loaded = load_model(
        source,
        dtype=dtype,
        device=device,
        trust_remote_code=trust_remote_code,
        max_memory=max_memory,
        offload_dir=offload_dir,
    )
    try:
        return fingerprint_loaded(
            loaded,
            digest,
            out,
            probes=probe_set,
            pooling=pooling,
            batch_size=batch_size,
            max_length=max_length,
            dtype=dtype,
            padding_side=padding_side,
            overwrite=overwrite,
            progress=progress,
            signer=signer,
            layers=layers,
            unit_samples=unit_samples,
            name=name,
            registry=registry,
        )
    finally:
        loaded.close()


def fingerprint_loaded(
    loaded: LoadedModel,
    digest: ModelDigest,
    out: str | os.PathLike[str],
    *,
    probes: ProbeSet,
    pooling: Pooling | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: int = DEFAULT_MAX_LENGTH,
    dtype: str = "float32",
    device: str | None = None,
    padding_side: PaddingSide = "right",
    overwrite: bool = False,
    progress: bool = False,
    signer: Signer | None = None,
    layers: str | Sequence[int] | None = None,
    unit_samples: int = DEFAULT_UNIT_SAMPLES,
    name: str | None = None,
    registry: Mapping[str, str] | None = None,
) -> Fingerprint:
    """Extract a loaded model's representations of ``probes`` and write the fingerprint.

    ``device`` is where inputs go and what the manifest records (default: where `load_model`
    put the model). ``layers`` keeps only those hidden states (`parse_layers`); the manifest
    then records them as ``extraction.layers``. The MLP units of each block (of the selected
    ones) are stored for the first ``unit_samples`` texts (0: none), for the neuron-matching
    test.
    """
    chosen_pooling = pooling or default_pooling(loaded)
    selection = parse_layers(layers, num_blocks(loaded)) if layers is not None else None
    tokens = tokenize_probes(loaded.tokenizer, probes.texts, max_length)
    capture, skipped = _unit_capture(loaded, selection, unit_samples)
    with (
        FingerprintWriter(out, overwrite=overwrite) as writer,
        tqdm(
            total=len(probes),
            desc=f"fingerprint {loaded.source.name}",
            unit="text",
            disable=not progress,
            file=sys.stderr,
        ) as bar,
    ):
        for batch in iter_pooled(
            loaded,
            tokens,
            pooling=chosen_pooling,
            batch_size=batch_size,
            padding_side=padding_side,
            device=device or loaded.device,
            layers=selection,
            on_batch=bar.update,
            units=capture,
        ):
            if not writer.started:
                _start(writer, batch, selection, capture, len(probes), unit_samples)
            writer.write_rows(batch.indices, batch.layers)
            for block, (a, b) in (batch.units or {}).items():
                writer.write_unit_rows(batch.indices, layer_name(block), a, b)
        if capture is not None and capture.failure is not None:
            skipped = capture.failure
        if skipped is not None:
            writer.skip_units(skipped)
        extraction: dict[str, Any] = {
            "pooling": chosen_pooling,
            "padding_side": padding_side,
            "max_length": max_length,
            "truncated": tokens.truncated,
            "compute_dtype": dtype,
            "batch_size": batch_size,
            "device": device or loaded.placement,
        }
        if selection is not None:  # absent means every layer, as in fingerprints made before
            extraction["layers"] = list(selection)
        manifest = _manifest(loaded, digest, probes, extraction=extraction)
        if name is not None:
            manifest["model"]["name"] = name
        if registry is not None:  # a registered version: named as its users know it
            manifest["model"]["registry"] = dict(registry)
        return writer.commit(probes.texts, manifest, signer=signer)


def _start(
    writer: FingerprintWriter,
    batch: Any,
    selection: Sequence[int] | None,
    capture: Any,
    texts: int,
    unit_samples: int,
) -> None:
    """Start the fingerprint's files from the first batch: its layers and their widths for
    ``texts`` texts, and the MLP units of the first ``unit_samples`` when they are captured."""
    names = (
        layer_names(len(batch.layers)) if selection is None else [layer_name(i) for i in selection]
    )
    writer.start(names, [a.shape[1] for a in batch.layers], texts)
    if capture is not None:
        writer.start_units(
            capture.kind,
            VIEWS[capture.kind],
            [(layer_name(block), units) for block, units in capture.blocks],
            min(unit_samples, texts),
        )


def _unit_capture(
    loaded: LoadedModel, selection: tuple[int, ...] | None, unit_samples: int
) -> tuple[UnitCapture | None, str | None]:
    """Hooks for the MLP units of the blocks to fingerprint, or why there are none."""
    if unit_samples < 1:
        return None, "MLP units were not asked for (unit samples 0)"
    blocks = None if selection is None else [i for i in selection if i > 0]
    if blocks == []:
        return None, "the layer selection holds no transformer block"
    try:
        return UnitCapture(loaded.model, blocks), None
    except UnitsUnsupported as exc:
        return None, f"the model's MLP units cannot be captured: {exc}"


def _manifest(
    loaded: LoadedModel, digest: ModelDigest, probes: ProbeSet, extraction: dict[str, Any]
) -> dict[str, Any]:
    config = loaded.model.config
    return {
        "tool": {"name": "reef-forensics", "version": __version__},
        "created": created_timestamp(),
        "model": {
            "name": loaded.source.name,
            "kind": loaded.source.kind,
            "digest": digest.digest,
            "files": [f.as_json() for f in digest.files],
            "model_type": loaded.model_type,
            "architecture": type(loaded.model).__name__,
            "num_blocks": int(getattr(config, "num_hidden_layers", 0) or 0),
            "encoder": loaded.is_encoder,
        },
        "probes": {"name": probes.name, "digest": probes.digest, "count": len(probes)},
        "extraction": extraction,
    }
