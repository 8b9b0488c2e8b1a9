"""Comparing two fingerprints: the layer-by-layer CKA matrix and the numbers read from it.

Both fingerprints must hold representations of the same probe texts in the same order (the
same probe digest). Every layer's Gram matrix is built and centered once, as the layer is read
from disk, so only the n x n matrices stay in memory, never all layers' features.

The *headline* is the score at REEF's layer: REEF reads block 19 of Llama-2-7B's 32 (its
"layer 18", counted from 0); for a model with L blocks the headline block is the one at the
same relative depth, ``round(19 * L / 32)``.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from reef_forensics._version import __version__
from reef_forensics.errors import ComparisonError
from reef_forensics.formats.fingerprint import EMBEDDINGS_LAYER, Fingerprint
from reef_forensics.formats.measurement import layer_selection_mismatch
from reef_forensics.similarity.cka import (
    CkaMethod,
    Float64Array,
    centered_grams,
    cka_curve,
    cka_matrix,
    curve_sizes,
    gram,
)

#: REEF's layer as a fraction of depth: block 19 of 32 (hidden_states[19], its 0-based layer 18).
REEF_BLOCK, REEF_DEPTH = 19, 32
COMPARISON_FORMAT = "reef-comparison"
COMPARISON_FORMAT_VERSION = 1


@dataclass(frozen=True)
class LayerPair:
    layer_a: str
    layer_b: str
    score: float

    def as_json(self) -> dict[str, Any]:
        return {"layer_a": self.layer_a, "layer_b": self.layer_b, "score": _json_float(self.score)}


@dataclass(frozen=True)
class Comparison:
    """The outcome of `compare_fingerprints`; `as_json` is the documented JSON record."""

    method: CkaMethod
    layers_a: list[str]
    layers_b: list[str]
    matrix: Float64Array
    headline: LayerPair
    curve_sizes: list[int]
    curve_scores: Float64Array
    probes_digest: str
    num_samples: int
    fingerprints: dict[str, dict[str, str]] = field(default_factory=dict)
    forced: bool = False

    def score(self, layer_a: str, layer_b: str) -> float:
        return float(self.matrix[self.layers_a.index(layer_a), self.layers_b.index(layer_b)])

    @property
    def diagonal(self) -> list[LayerPair]:
        """Each layer of A against the layer of B at the same relative depth."""
        return [
            LayerPair(a, b, self.score(a, b))
            for a, b in zip(self.layers_a, _aligned(self.layers_a, self.layers_b), strict=True)
        ]

    @property
    def best_match(self) -> list[LayerPair]:
        """Each layer of A against the layer of B it is most similar to."""
        pairs = []
        for i, name in enumerate(self.layers_a):
            row = self.matrix[i]
            if np.all(np.isnan(row)):
                pairs.append(LayerPair(name, self.layers_b[0], float("nan")))
                continue
            j = int(np.nanargmax(row))
            pairs.append(LayerPair(name, self.layers_b[j], float(row[j])))
        return pairs

    def as_json(self) -> dict[str, Any]:
        return {
            "format": COMPARISON_FORMAT,
            "format_version": COMPARISON_FORMAT_VERSION,
            "tool": {"name": "reef-forensics", "version": __version__},
            "estimator": self.method.name,
            "kernel": self.method.kernel,
            "standardize": self.method.standardize,
            "rbf_scale": self.method.rbf_scale if self.method.kernel == "rbf" else None,
            "probes_digest": self.probes_digest,
            "num_samples": self.num_samples,
            "forced": self.forced,
            "fingerprints": self.fingerprints,
            "layers_a": self.layers_a,
            "layers_b": self.layers_b,
            "matrix": [[_json_float(v) for v in row] for row in self.matrix],
            "headline": {
                **self.headline.as_json(),
                "rule": f"REEF relative depth: block {REEF_BLOCK} of {REEF_DEPTH}",
            },
            "diagonal": [pair.as_json() for pair in self.diagonal],
            "best_match": [pair.as_json() for pair in self.best_match],
            "curve": {
                "layer_a": self.headline.layer_a,
                "layer_b": self.headline.layer_b,
                "sizes": self.curve_sizes,
                "scores": [_json_float(v) for v in self.curve_scores],
            },
        }


def compare_fingerprints(
    a: Fingerprint,
    b: Fingerprint,
    *,
    method: CkaMethod | None = None,
    force: bool = False,
    progress: bool = False,
    device: str | None = None,
) -> Comparison:
    """CKA between every layer of ``a`` and every layer of ``b`` on their shared probe texts.

    ``device`` (a torch device, such as ``cuda``) builds the Gram matrices and the CKA matrix
    there; None computes them with numpy.
    """
    chosen = method or CkaMethod()
    mismatch = layer_selection_mismatch(a, b)
    if mismatch:
        raise ComparisonError(f"the fingerprints took different layers: {mismatch}")
    if a.num_samples != b.num_samples:
        raise ComparisonError(
            f"the fingerprints hold different numbers of probe texts ({a.num_samples} vs "
            f"{b.num_samples}): they were made on different probe sets and cannot be compared"
        )
    if a.probes_digest != b.probes_digest and not force:
        raise ComparisonError(
            "the fingerprints were made on different probe sets "
            f"({a.probes_digest[:19]}... vs {b.probes_digest[:19]}...); "
            "pass --force to compare them row by row anyway"
        )
    _check_memory(len(a.layers) + len(b.layers), a.num_samples)
    head_a, head_b = headline_layer(a.layers), headline_layer(b.layers)
    with tqdm(
        total=len(a.layers) + len(b.layers),
        desc="compare",
        unit="layer",
        disable=not progress,
        file=sys.stderr,
    ) as bar:
        centered_a = centered_grams(_counted(a, bar), chosen, count=len(a.layers), device=device)
        centered_b = centered_grams(_counted(b, bar), chosen, count=len(b.layers), device=device)
    matrix = cka_matrix(centered_a, centered_b, device=device)
    del centered_a, centered_b
    sizes = curve_sizes(a.num_samples)
    curve = cka_curve(
        gram(a.layer(head_a), chosen), gram(b.layer(head_b), chosen), sizes, chosen.estimator
    )
    return Comparison(
        method=chosen,
        layers_a=a.layers,
        layers_b=b.layers,
        matrix=matrix,
        headline=LayerPair(
            head_a, head_b, float(matrix[a.layers.index(head_a), b.layers.index(head_b)])
        ),
        curve_sizes=sizes,
        curve_scores=curve,
        probes_digest=a.probes_digest,
        num_samples=a.num_samples,
        fingerprints={"a": a.describe(), "b": b.describe()},
        forced=a.probes_digest != b.probes_digest,
    )


def _check_memory(layers: int, n: int) -> None:
    """Refuse up front a comparison whose Gram matrices cannot fit in this machine's memory."""
    needed = layers * n * n * 8
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if needed > 0.8 * total:
        raise ComparisonError(
            f"comparing needs about {needed / 2**30:.1f} GiB for {layers} Gram matrices of "
            f"{n} x {n} texts, more than this machine's {total / 2**30:.1f} GiB: "
            "fingerprint fewer probe texts"
        )


def _counted(fingerprint: Fingerprint, bar: Any) -> Iterator[NDArray[np.float32]]:
    """The fingerprint's layers, read one at a time, ticking the progress bar."""
    for _, features in fingerprint.iter_layers():
        yield features
        bar.update(1)


def _depth(name: str, num_blocks: int) -> float:
    if name == EMBEDDINGS_LAYER:
        return 0.0
    index = int(name.rsplit("_", 1)[-1])
    return index / num_blocks if num_blocks else 0.0


def _num_blocks(layers: list[str]) -> int:
    return max((int(n.rsplit("_", 1)[-1]) for n in layers if n != EMBEDDINGS_LAYER), default=0)


def headline_layer(layers: list[str]) -> str:
    """The layer at REEF's relative depth (block 19 of 32), or the nearest one present."""
    blocks = _num_blocks(layers)
    target = (
        min(max(round(REEF_BLOCK * blocks / REEF_DEPTH), 1), blocks) / blocks if blocks else 0.0
    )
    return min(layers, key=lambda name: abs(_depth(name, blocks) - target))


def _aligned(layers_a: list[str], layers_b: list[str]) -> list[str]:
    """For each layer of A, the layer of B at the nearest relative depth."""
    blocks_a, blocks_b = _num_blocks(layers_a), _num_blocks(layers_b)
    depths_b = [_depth(name, blocks_b) for name in layers_b]
    aligned = []
    for name_a in layers_a:
        depth_a = _depth(name_a, blocks_a)
        nearest = min(range(len(layers_b)), key=lambda j: abs(depths_b[j] - depth_a))
        aligned.append(layers_b[nearest])
    return aligned


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else float(value)
